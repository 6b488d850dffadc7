"""Resolving a user's inputs to items: a directory, a glob, a list of paths, a manifest.

An *item* is one input image, as a small dict: ``item_id`` (its index), ``path``
(absolute), ``rel`` (its path relative to the input root, POSIX form, which names its
outputs), ``size`` and ``mtime_ns`` (its fingerprint) and ``key`` (a hash of the
fingerprint, the item's part of every checkpoint key; ``None`` while deferred, see
:func:`fill_fingerprint`). A manifest may also give header
fields (``width``, ``height``, ``channels``, ``dtype``, ``format``), so that a batch can
be planned without touching the files.

Nothing here decodes an image or contacts a cluster.
"""

from __future__ import annotations

import functools
import gc
import glob as globlib
import hashlib
import operator
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import Any

from dagflow.exceptions import InputError

__all__ = ["IMAGE_EXTENSIONS", "InputSet", "fill_fingerprint", "item_key", "resolve_inputs"]

#: File extensions picked up when scanning a directory or a glob (case-insensitive).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".gif", ".bmp"})

_HEADER_COLUMNS = ("width", "height", "channels", "dtype", "format", "orientation", "itemsize")


@dataclass
class InputSet:
    """The resolved inputs of a run.

    Attributes
    ----------
    root
        The directory that output paths are relative to.
    items
        One dict per input image, in a stable order.
    description
        What the user asked for, for logs and the run record.
    """

    root: Path
    items: list[dict[str, Any]]
    description: str = ""
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)


def item_key(path: str, size: int, mtime_ns: int) -> str:
    """The fingerprint hash of an input file: path, size and modification time."""
    return hashlib.blake2b(f"{path}\0{size}\0{mtime_ns}".encode(), digest_size=8).hexdigest()


def fill_fingerprint(item: dict[str, Any], *, stat: bool = True) -> None:
    """Read the size and modification time of an item resolved with a deferred fingerprint
    and hash them into its ``key``, in place; an item that has its key is left alone.

    Exactly what :func:`resolve_inputs` would have computed: a file that cannot be read
    keeps the size and time its item has (a manifest's, or -1). ``stat=False`` hashes those
    without touching the file.
    """
    if item["key"] is not None:
        return
    size, mtime, key = _fingerprint(item["path"], item["size"], item["mtime_ns"], read=stat)
    item.update(size=size, mtime_ns=mtime, key=key)


def _fingerprint(path: str, size: int, mtime_ns: int, *, read: bool) -> tuple[int, int, str]:
    """Size, modification time and key of a file: read from the file when ``read`` and it
    can be, else the ones given."""
    if read:
        try:
            st = os.stat(path)
            size, mtime_ns = st.st_size, st.st_mtime_ns
        except OSError:
            pass
    return size, mtime_ns, item_key(path, size, mtime_ns)


_entry_name = operator.attrgetter("name")  # a sort key in C: a million entries are sorted


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _scan_directory(directory: str, stats: dict[str, tuple[int, int]] | None = None,
                    dirs: set[str] | None = None) -> list[str]:
    """Image files under ``directory``, sorted, depth first (as ``os.walk`` lists them).

    Strings, not Path objects: a million of them are built and compared. Directories
    whose names start with ``.`` or ``_dagflow`` are skipped, symlinked directories are
    not followed. Given ``stats``, each file's size and modification time go in it,
    read from its directory entry while the directory is open; given ``dirs``, each
    directory that holds a file found goes in it, with its trailing separator.
    """
    found: list[str] = []
    extensions = IMAGE_EXTENSIONS
    try:
        with os.scandir(directory) as listing:
            entries = sorted(listing, key=_entry_name)
    except OSError:
        return found
    below = []
    for entry in entries:
        name = entry.name
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            if not name.startswith((".", "_dagflow")) and not entry.is_symlink():
                below.append(entry.path)
            continue
        dot = name.rfind(".")
        if dot < 0 or name[dot:].lower() not in extensions:
            continue
        path = entry.path
        if dirs is not None and not found:
            dirs.add(path[:path.rfind(os.sep) + 1])
        found.append(path)
        if stats is not None:
            try:
                st = entry.stat()
            except OSError:
                continue
            stats[path] = (st.st_size, st.st_mtime_ns)
    for sub in below:
        found.extend(_scan_directory(sub, stats, dirs))
    return found


def _read_manifest(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path) if path.suffix.lower() == ".parquet" else pacsv.read_csv(path)
    except Exception as e:
        raise InputError(f"cannot read manifest {str(path)!r}: {e}") from None
    if "path" not in table.column_names:
        raise InputError(f"manifest {str(path)!r} has no 'path' column "
                         f"(columns: {', '.join(table.column_names)})")
    # an absolute base: the joined paths are then already what abspath would make them
    base, isabs = os.path.abspath(path.parent), os.path.isabs
    prefix = base.rstrip(os.sep) + os.sep
    paths = table.column("path").to_pylist()
    if not (paths and isinstance(paths[0], str) and "://" in paths[0]):  # URLs: as they are
        paths = [p if isabs(p) else prefix + p for p in paths]
    extra_cols = [c for c in (*_HEADER_COLUMNS, "size", "mtime_ns") if c in table.column_names]
    if not extra_cols:
        return paths, [{} for _ in paths]
    # column by column, dropping the nulls once here rather than per item later
    columns = [table.column(c).to_pylist() for c in extra_cols]
    extras = [{k: v for k, v in zip(extra_cols, values, strict=True) if v is not None}
              for values in zip(*columns, strict=True)]
    return paths, extras


def _without_gc(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``func`` with the cyclic garbage collector paused.

    Resolving a million inputs builds millions of small dicts and strings, none in a
    reference cycle; the collector would only walk them again and again meanwhile
    (a third of the time).
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        collecting = gc.isenabled()
        gc.disable()
        try:
            return func(*args, **kwargs)
        finally:
            if collecting:
                gc.enable()

    return wrapper


def _any_remote(specs: Sequence[Any]) -> bool:
    from dagflow.io.storage import is_remote

    return any(is_remote(os.fspath(spec)) for spec in specs)


def _resolve_urls(specs: list[str], exclude: Any) -> InputSet:
    """Inputs on a store (:func:`dagflow.io.listing.list_images`): fingerprinted from
    the listing, relative to the prefix they were found under."""
    from dagflow.io.listing import list_images

    root, found = list_images(specs, exclude=os.fspath(exclude) if exclude else None)
    items = []
    for url, st in found:
        mtime = -1 if st.mtime_ns is None else st.mtime_ns
        rel = url[len(root):] if url.startswith(root) else url.rsplit("/", 1)[-1]
        items.append({"item_id": len(items), "path": url, "rel": rel, "size": st.size,
                      "mtime_ns": mtime, "key": item_key(url, st.size, mtime)})
    return InputSet(root, items, ", ".join(specs))  # type: ignore[arg-type]


def _manifest_urls(urls: list[str], extras: list[dict[str, Any]],
                   description: str) -> InputSet:
    """A manifest's objects on a store, fingerprinted from their stats
    (:func:`dagflow.io.listing.stat_objects`), each relative to the prefix common to all
    of them; one that is not there is an item that fails as a missing file does."""
    from dagflow.io.listing import common_prefix, stat_objects

    stats = stat_objects(urls)
    root = common_prefix(urls)
    items = []
    for url, extra in dict(zip(urls, extras, strict=True)).items():
        st = stats.get(url)  # one that is not there fails when it is read, recorded
        size = -1 if st is None else st.size
        mtime = -1 if st is None or st.mtime_ns is None else st.mtime_ns
        items.append({**extra, "item_id": len(items), "path": url, "rel": url[len(root):],
                      "size": size, "mtime_ns": mtime, "key": item_key(url, size, mtime)})
    return InputSet(root, items, description)  # type: ignore[arg-type]


@_without_gc
def resolve_inputs(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    root: str | os.PathLike[str] | None = None,
    stat: bool = True,
    exclude: str | os.PathLike[str] | None = None,
    defer_fingerprint: bool = False,
) -> InputSet:
    """Turn what the user gave into an :class:`InputSet`.

    Parameters
    ----------
    inputs
        A directory (scanned recursively for image files), a glob (``"scans/**/*.tif"``),
        a manifest (``.csv`` or ``.parquet`` with a ``path`` column, relative paths
        taken from the manifest's directory), a single image, or a list of any of these.
    root
        The directory output paths are made relative to; by default the directory given,
        the manifest's directory, or the deepest directory common to all inputs.
    stat
        Read each file's size and modification time (the fingerprint). Without it, or for
        a file that does not exist, the manifest's ``size``/``mtime_ns`` are used, or -1.
    exclude
        A directory whose files are never inputs: the run's output directory, so that a
        run writing inside its input tree does not pick up its own outputs next time.
    defer_fingerprint
        Leave each file's fingerprint unread (``key`` ``None``) unless it was read
        anyway: whoever processes the item reads it with :func:`fill_fingerprint`. A first
        run into an empty output needs no fingerprint before it starts, and its workers
        read them in parallel, beside the reading they do anyway.

    Raises
    ------
    InputError
        When nothing matches, a path does not exist, or a manifest is unreadable.
    """
    specs = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    if not specs:
        raise InputError("no inputs given")
    if any("://" in os.fspath(spec) for spec in specs) and _any_remote(specs):
        return _resolve_urls([os.fspath(spec) for spec in specs], exclude)
    paths: list[str | Path] = []
    extras: list[dict[str, Any]] = []
    known: dict[str, tuple[int, int]] = {}  # (size, mtime) read while scanning
    roots: list[Path] = []
    # paths found by scanning are absolute and normal already: the others are made so
    # below, and their directories counted for the common root
    scanned_dirs: set[str] = set()
    unscanned: list[range] = []  # the positions of paths from other specs
    for spec in specs:
        text = os.path.expanduser(os.fspath(spec))
        try:
            st = os.stat(text)
        except (OSError, ValueError):
            st = None
        if st is not None and S_ISREG(st.st_mode) and \
                not text.lower().endswith((".csv", ".parquet")):
            # an image named by its path (often thousands of them): one stat, kept
            absolute_path = os.path.abspath(text)
            if stat:
                known[absolute_path] = (st.st_size, st.st_mtime_ns)
            unscanned.append(range(len(paths), len(paths) + 1))
            paths.append(absolute_path)
            continue
        p = Path(text)
        if p.is_dir():
            # from its absolute path: the paths found are then already absolute and
            # normal, and skip abspath below
            found = _scan_directory(os.path.abspath(p),
                                    known if stat and not defer_fingerprint else None,
                                    scanned_dirs)
            roots.append(p)
            paths.extend(found)
            continue
        elif p.is_file() and p.suffix.lower() in (".csv", ".parquet"):
            found, manifest_extras = _read_manifest(p)
            if len(specs) == 1 and found and "://" in found[0]:  # objects on a store
                return _manifest_urls(found, manifest_extras, text)
            extras.extend([{}] * (len(paths) - len(extras)))
            extras.extend(manifest_extras)
            roots.append(p.parent)
        elif _is_glob(text):
            found = [Path(m) for m in sorted(globlib.glob(text, recursive=True))
                     if os.path.isfile(m)]
        elif p.is_file() or not stat:
            found = [p]
        else:
            raise InputError(f"input {text!r} is not a file, a directory, a manifest or a glob "
                             "that matches anything")
        unscanned.append(range(len(paths), len(paths) + len(found)))
        paths.extend(found)
    extras.extend([{}] * (len(paths) - len(extras)))
    if not paths:
        raise InputError(f"no images found in {', '.join(map(os.fspath, specs))} "
                         f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    abspath = os.path.abspath
    absolute = paths  # the scanned ones as they are
    for span in unscanned:
        # an absolute path without "//", "/./", "/../" or a trailing "/", "/." or "/.." is
        # already what abspath returns (".data/" is a name, not a "." component)
        absolute[span.start:span.stop] = [
            p if p[:1] == "/" and "//" not in p and "/./" not in p and "/../" not in p
            and not p.endswith(("/", "/.", "/..")) else abspath(p)
            for p in map(os.fspath, paths[span.start:span.stop])]
    dirs_known = True  # scanned_dirs (and the unscanned paths) give every path's directory
    if exclude is not None:
        skip = os.path.abspath(exclude)
        if any(os.path.abspath(r) == skip for r in roots):
            raise InputError(f"the output directory {skip!r} is also an input directory: "
                             "write the outputs somewhere else (a sub-directory is fine)")
        inside = operator.methodcaller("startswith", skip + os.sep)
        if any(map(inside, absolute)):
            kept = [i for i, a in enumerate(absolute) if not inside(a)]
            absolute, extras = [absolute[i] for i in kept], [extras[i] for i in kept]
            dirs_known = False
        if not absolute:
            raise InputError(f"no images found in {', '.join(map(os.fspath, specs))} "
                             "outside the output directory")
    if root is not None:
        base = os.path.abspath(root)
    elif len(roots) == 1 and len(specs) == 1:
        base = os.path.abspath(roots[0])
    else:
        # each path's directory (with its separator: commonpath drops it)
        if dirs_known:
            dirs = scanned_dirs | {absolute[i][:absolute[i].rfind(os.sep) + 1]
                                   for span in unscanned for i in span}
        else:
            dirs = {a[:a.rfind(os.sep) + 1] for a in absolute}
        base = os.path.commonpath(dirs)
    # `absolute` and `base` are normalised, so a path inside `base` is `prefix` + its
    # relative path: slicing is relpath without its cost per item
    prefix = base.rstrip(os.sep) + os.sep
    posix = os.sep == "/"
    if defer_fingerprint and stat and not known and not any(extras) and posix:
        # a first run over directories: nothing is read per item here, and the items
        # are built by one comprehension (100,000 of them: 0.50 -> 0.27 s, listing
        # included)
        cut, basename = len(prefix), os.path.basename
        return InputSet(Path(base), [
            {"item_id": item_id, "path": path,
             "rel": path[cut:] if path.startswith(prefix) else basename(path),
             "size": -1, "mtime_ns": -1, "key": None}
            for item_id, path in enumerate(dict.fromkeys(absolute))],
            ", ".join(map(os.fspath, specs)))
    items = []
    seen: set[str] = set()
    for path, extra in zip(absolute, extras, strict=True):
        if path in seen:
            continue
        seen.add(path)
        size, mtime = extra.get("size", -1), extra.get("mtime_ns", -1)
        key: str | None = None
        scanned = known.get(path) if stat else None  # read while scanning, or named
        if scanned is not None:
            size, mtime = scanned
            key = item_key(path, size, mtime)
        elif not (stat and defer_fingerprint):
            size, mtime, key = _fingerprint(path, size, mtime, read=stat)
        rel = path[len(prefix):] if path.startswith(prefix) else os.path.basename(path)
        # a manifest's header columns first: the keys after them take precedence
        items.append({**extra, "item_id": len(items), "path": path,
                      "rel": rel if posix else Path(rel).as_posix(),
                      "size": size, "mtime_ns": mtime, "key": key})
    return InputSet(Path(base), items, ", ".join(map(os.fspath, specs)))


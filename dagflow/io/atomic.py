"""Atomic, symlink-safe output files.

Every file dagflow writes (images, checkpoint parts, reports) appears complete or not
at all: it is written to a temporary file in the *same* directory
(``.{name}.{token}.tmp``), flushed and fsynced, moved over the final name with
``os.replace`` and the directory is fsynced. A crash leaves at worst a temporary file,
which :func:`find_temporaries` lists so that resume can clean it up. The final name is
never opened for writing. A directory store (zarr) is filled under such a temporary name
and renamed into place the same way (:func:`atomic_directory`). Inside
:func:`deferred_sync`, the fsyncs of a block's writes are replaced by one flush of their
filesystem at its end (a sink task's outputs are made durable together, before the
chunk's records claim them).

Output paths built from user data (input names, node names) go through
:func:`safe_join`, which keeps them under the output root: no ``..``, no absolute
path, no NUL, no control or bidi characters, no component over 255 bytes (shortened
deterministically), and no existing symlink on the way.

This module owns output paths and atomic replacement; it knows nothing of image formats.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import hashlib
import logging
import os
import re
import secrets
import shutil
import stat
import unicodedata
from collections.abc import Callable, Iterator
from os import PathLike
from pathlib import Path
from typing import BinaryIO

from dagflow.exceptions import BadInputError

__all__ = [
    "MAX_COMPONENT_BYTES",
    "TEMP_PATTERN",
    "atomic_directory",
    "atomic_path",
    "atomic_write",
    "clean_parts",
    "deferred_sync",
    "find_temporaries",
    "safe_join",
    "shorten_component",
]

logger = logging.getLogger(__name__)

#: Longest file or directory name most filesystems accept, in bytes (UTF-8).
MAX_COMPONENT_BYTES = 255

#: Names of the temporary files :func:`atomic_write` and :func:`atomic_path` create.
TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?P<token>[0-9a-f]{12})\.tmp$", re.DOTALL)

_TOKEN_BYTES = 6
_HASH_CHARS = 16
_MAX_SUFFIX_BYTES = 16
_BIDI_CONTROLS = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_DRIVE = re.compile(r"^[A-Za-z]:")

PathArg = str | PathLike[str]


def safe_join(root: PathArg, relative: PathArg) -> Path:
    """Join a relative path under ``root``, refusing anything that could escape it.

    Parameters
    ----------
    root
        The output root (trusted; it may itself be a symlink).
    relative
        A relative path, typically derived from an input name. ``\\`` counts as a
        separator. The text is NFC-normalised, control and bidi-override characters are
        removed, and a component longer than :data:`MAX_COMPONENT_BYTES` bytes is
        shortened deterministically with a hash suffix (:func:`shorten_component`).

    Returns
    -------
    pathlib.Path
        ``root`` joined with the cleaned components. Nothing is created.

    Raises
    ------
    BadInputError
        ``unsafe_path`` for a NUL byte, an absolute or drive path, a ``..`` component,
        an empty path, or an existing symlink at any component under ``root``.

    Examples
    --------
    >>> safe_join("/out", "a/./b.jpg").as_posix()
    '/out/a/b.jpg'
    >>> safe_join("/out", "../etc/passwd")
    Traceback (most recent call last):
    ...
    dagflow.exceptions.BadInputError: unsafe_path: '../etc/passwd' contains a '..' component
    """
    parts = clean_parts(relative)
    if _remote(root):  # an object's name under a store's prefix: no symlink to cross
        return "/".join([os.fspath(root).rstrip("/"), *parts])  # type: ignore[return-value]
    root_path = Path(root)
    _refuse_symlinks(root_path, parts)
    return root_path.joinpath(*parts)


def _remote(root: PathArg) -> bool:
    if not isinstance(root, str) or "://" not in root:  # a local path: most calls, kept fast
        return False
    from dagflow.io.storage import is_remote

    return is_remote(root)


def clean_parts(relative: PathArg) -> list[str]:
    """The components :func:`safe_join` joins under its root, without touching the disk.

    The same rules (NFC, no control or bidi characters, ``\\`` as a separator, long
    components shortened); what two relative paths give here says whether they name the
    same file under a root (planning compares outputs with it before anything runs).

    Raises
    ------
    BadInputError
        ``unsafe_path``, as :func:`safe_join`.

    Examples
    --------
    >>> clean_parts("a//./b.jpg")
    ['a', 'b.jpg']
    """
    text = os.fspath(relative)
    if text.isascii() and text.isprintable() and "\\" not in text:
        cleaned = text  # nothing to normalise or remove: most paths, kept fast
    else:
        if "\x00" in text:
            raise BadInputError("unsafe_path", f"{text!r} contains a NUL byte")
        cleaned = unicodedata.normalize("NFC", text)
        cleaned = "".join(
            ch for ch in cleaned
            if unicodedata.category(ch) != "Cc" and ch not in _BIDI_CONTROLS
        )
        cleaned = cleaned.replace("\\", "/")
    if cleaned.startswith("/") or _DRIVE.match(cleaned):
        raise BadInputError("unsafe_path", f"{text!r} is absolute; a relative path is needed")
    parts = [part for part in cleaned.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise BadInputError("unsafe_path", f"{text!r} contains a '..' component")
    if not parts:
        raise BadInputError("unsafe_path", f"{text!r} names no file under the root")
    return [part if len(part) <= MAX_COMPONENT_BYTES // 4 else shorten_component(part)
            for part in parts]


def shorten_component(name: str, limit: int = MAX_COMPONENT_BYTES) -> str:
    """``name`` if it fits in ``limit`` UTF-8 bytes, else a deterministic shorter name.

    The shortened name keeps the start of the name and its suffix and inserts ``~`` and
    16 hex digits of the SHA-256 of the full name, so distinct long names stay distinct.

    Examples
    --------
    >>> short = shorten_component("x" * 300 + ".jpg")
    >>> len(short.encode()), short.endswith(".jpg"), short == shorten_component("x" * 300 + ".jpg")
    (255, True, True)
    """
    encoded = name.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    suffix = f".{ext}" if dot and stem and len(f".{ext}".encode()) <= _MAX_SUFFIX_BYTES else ""
    if not suffix:
        stem = name
    digest = hashlib.sha256(encoded).hexdigest()[:_HASH_CHARS]
    keep = limit - len(suffix.encode()) - 1 - _HASH_CHARS
    head = stem.encode("utf-8", "surrogatepass")[:keep].decode("utf-8", "ignore")
    return f"{head}~{digest}{suffix}"


def _refuse_symlinks(root: Path, parts: list[str]) -> None:
    current = root
    for part in parts:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return  # nothing exists below a missing component
        except NotADirectoryError:
            raise BadInputError(
                "unsafe_path", f"{current}: a parent component is not a directory"
            ) from None
        if stat.S_ISLNK(st.st_mode):
            raise BadInputError("unsafe_path", f"{current} is a symlink; refusing to follow it")


def _check_final(final: Path, root: PathArg | None) -> None:
    if root is not None:
        root_path = Path(os.path.abspath(root))
        try:
            relative = Path(os.path.abspath(final)).relative_to(root_path)
        except ValueError:
            raise BadInputError("unsafe_path", f"{final} is not under {root_path}") from None
        _refuse_symlinks(root_path, list(relative.parts))
    elif final.is_symlink():
        raise BadInputError("unsafe_path", f"{final} is a symlink; refusing to write through it")


def _temporary(final: Path) -> Path:
    token = secrets.token_hex(_TOKEN_BYTES)
    name = final.name
    extra = len(f"..{token}.tmp")
    if len(name.encode("utf-8", "surrogatepass")) + extra > MAX_COMPONENT_BYTES:
        name = shorten_component(name, MAX_COMPONENT_BYTES - extra)
    return final.with_name(f".{name}.{token}.tmp")


#: A new file for writing (``O_EXCL`` also refuses an existing symlink at the name).
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL
#: Added to every temporary file's creation: never through a symlink, not inherited by
#: child processes, no newline translation (Windows).
_SAFE = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def _create(path: str | Path, flags: int = _NEW) -> int:
    """``os.open`` of a temporary file with :data:`_SAFE` added (also ``open``'s opener).

    Missing parent directories are made on the way, and only then: writing into an
    output directory that exists costs no ``mkdir``.
    """
    try:
        return os.open(path, flags | _SAFE, 0o666)
    except FileNotFoundError:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags | _SAFE, 0o666)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


class _Deferred:
    """The files and directories written in a :func:`deferred_sync` block."""

    def __init__(self) -> None:
        self.files: list[Path] = []
        self.directories: set[Path] = set()


_DEFERRED: contextvars.ContextVar[_Deferred | None] = contextvars.ContextVar(
    "dagflow_deferred_sync", default=None)


@contextlib.contextmanager
def deferred_sync() -> Iterator[None]:
    """Make the atomic writes of this block durable together, when it ends.

    Each :func:`atomic_write` normally fsyncs its file and its directory: two journal
    commits per output file, a fifth of a thumbnail pipeline's time on a busy disk. In
    this block the files are only written and renamed; at its end their filesystems are
    flushed once each (``syncfs``), or, where that call is missing, every file and
    directory is fsynced then. Either way the block returns only when its files are
    durable. The block's context reaches threads started with a copy of it
    (:func:`dagflow.recovery.watch.run_watched`).

    Examples
    --------
    >>> import tempfile, os
    >>> root = tempfile.mkdtemp()
    >>> with deferred_sync():
    ...     for name in ("a.txt", "b.txt"):
    ...         _ = atomic_write(os.path.join(root, name), b"x")
    >>> sorted(os.listdir(root))
    ['a.txt', 'b.txt']
    """
    batch = _Deferred()
    token = _DEFERRED.set(batch)
    try:
        yield
    finally:
        _DEFERRED.reset(token)
        _flush(batch)


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs  # Linux
    except (AttributeError, OSError):
        return None


def _flush(batch: _Deferred) -> None:
    if not batch.files:
        return
    syncfs = _syncfs()
    if syncfs is not None:
        devices: dict[int, Path] = {}
        for directory in batch.directories:
            with contextlib.suppress(OSError):
                devices.setdefault(os.stat(directory).st_dev, directory)
        flushed = True
        for directory in devices.values():
            fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                flushed = flushed and syncfs(fd) == 0
            finally:
                os.close(fd)
        if flushed and devices:
            return
    for path in batch.files:
        with contextlib.suppress(FileNotFoundError):  # replaced since: its writer syncs it
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for directory in batch.directories:
        _fsync_directory(directory)


def _sync_file(fd: int, final: Path) -> None:
    """fsync a written file, or leave it to the :func:`deferred_sync` block it is in."""
    deferred = _DEFERRED.get()
    if deferred is None:
        os.fsync(fd)
    else:
        deferred.files.append(final)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # e.g. platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        logger.debug("fsync of directory %s failed", directory, exc_info=True)
    finally:
        os.close(fd)


def _replace(tmp: Path, final: Path, root: PathArg | None) -> None:
    _check_final(final, root)  # again: a symlink may have been planted meanwhile
    os.replace(tmp, final)
    deferred = _DEFERRED.get()
    if deferred is None:
        _fsync_directory(final.parent)
    else:
        deferred.directories.add(final.parent)


def _prepare(path: PathArg, root: PathArg | None) -> Path:
    final = Path(path)
    _check_final(final, root)
    final.parent.mkdir(parents=True, exist_ok=True)
    return final


def atomic_write(
    path: PathArg,
    write_fn: Callable[[BinaryIO], object] | bytes,
    *,
    root: PathArg | None = None,
) -> Path:
    """Write a file atomically: all of it appears at ``path``, or nothing does.

    Parameters
    ----------
    path
        The final file. Missing parent directories are created.
    write_fn
        The content as ``bytes``, or a function given a binary file to write into
        (a plain, seekable file: Pillow, tifffile and pyarrow can write to it).
    root
        When given, ``path`` must lie under it and no existing component between the
        two may be a symlink (build such paths with :func:`safe_join`). Without it,
        only the final component is checked.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    BadInputError
        ``unsafe_path`` when ``path`` is a symlink (or crosses one under ``root``).
    Exception
        Whatever ``write_fn`` raises: the temporary file is removed and ``path`` is
        left as it was.

    Examples
    --------
    >>> import tempfile, os
    >>> target = os.path.join(tempfile.mkdtemp(), "sub", "hello.txt")
    >>> atomic_write(target, b"hello").read_bytes()
    b'hello'
    """
    final = Path(path)
    _check_final(final, root)
    tmp = _temporary(final)
    try:
        if isinstance(write_fn, bytes | bytearray | memoryview):
            fd = _create(tmp)
            try:  # straight to the descriptor: no file object for encoded bytes
                _write_all(fd, write_fn)
                _sync_file(fd, final)
            finally:
                os.close(fd)
        else:  # a file object with its name, for writers that look at it (tifffile)
            with open(tmp, "xb", opener=_create) as fh:
                write_fn(fh)
                fh.flush()
                _sync_file(fh.fileno(), final)
        _replace(tmp, final, root)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return final


@contextlib.contextmanager
def atomic_path(path: PathArg, *, root: PathArg | None = None,
                sync: bool = True) -> Iterator[Path]:
    """A temporary path to write to; on success it replaces ``path`` atomically.

    For writers that want a file name rather than a file object. The temporary file is
    in the same directory, so the final ``os.replace`` never crosses filesystems.

    Parameters
    ----------
    path
        The final file. Missing parent directories are created.
    root
        As in :func:`atomic_write`.
    sync
        Flush the file and its directory to the disk before and after the rename (or in
        the :func:`deferred_sync` block). ``False`` for a file whose loss is harmless:
        one lost to a power cut, or torn by it, is simply made again (a chunk's records
        part: its items run again). The rename is atomic either way.

    Yields
    ------
    pathlib.Path
        Where to write (``.{name}.{token}.tmp`` beside ``path``).

    Raises
    ------
    BadInputError
        ``unsafe_path`` as in :func:`atomic_write`.
    FileNotFoundError
        When the block wrote nothing to the temporary path.

    Examples
    --------
    >>> import tempfile, os
    >>> target = os.path.join(tempfile.mkdtemp(), "out.txt")
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> Path(target).read_text()
    'done'
    """
    final = _prepare(path, root)
    tmp = _temporary(final)
    try:
        yield tmp
        if not tmp.is_file() or tmp.is_symlink():
            raise FileNotFoundError(f"nothing was written to the temporary file {tmp}")
        if sync:
            fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                _sync_file(fd, final)
            finally:
                os.close(fd)
            _replace(tmp, final, root)
        else:
            _check_final(final, root)
            os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_directory(path: PathArg, *, root: PathArg | None = None) -> Iterator[Path]:
    """A temporary directory to fill; on success it takes the place of ``path``.

    For stores that are directories (zarr). Readers see the old directory or the complete
    new one, never a partial one: the new one is filled beside the final name, its
    filesystem flushed, then renamed into place. An existing ``path`` is moved aside
    first and deleted after (a crash between the two renames leaves it under a
    temporary name beside ``path``). On an error the temporary directory is deleted and
    ``path`` is left as it was.

    Parameters
    ----------
    path
        The final directory. Missing parent directories are created.
    root
        As in :func:`atomic_write`.

    Yields
    ------
    pathlib.Path
        Where to write (``.{name}.{token}.tmp`` beside ``path``; not yet created).

    Raises
    ------
    FileNotFoundError
        When the block created no directory at the temporary path.
    NotADirectoryError
        When ``path`` exists and is not a directory (it is never replaced by one).

    Examples
    --------
    >>> import tempfile, os
    >>> target = os.path.join(tempfile.mkdtemp(), "store")
    >>> with atomic_directory(target) as tmp:
    ...     tmp.mkdir()
    ...     _ = (tmp / "a").write_text("done")
    >>> os.listdir(target)
    ['a']
    """
    final = _prepare(path, root)
    if final.exists() and not final.is_dir():
        raise NotADirectoryError(f"{final} exists and is not a directory")
    tmp = _temporary(final)
    try:
        yield tmp
        if not tmp.is_dir() or tmp.is_symlink():
            raise FileNotFoundError(f"nothing was written to the temporary directory {tmp}")
        syncfs = _syncfs()
        if syncfs is not None:
            fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                syncfs(fd)
            finally:
                os.close(fd)
        _check_final(final, root)
        old = _temporary(final) if final.exists() else None
        if old is not None:
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_directory(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def find_temporaries(root: PathArg) -> list[Path]:
    """Temporary files left under ``root`` by interrupted atomic writes, sorted.

    Parameters
    ----------
    root
        The directory to search, recursively (symlinked directories are not followed).

    Returns
    -------
    list of pathlib.Path
        Files whose name matches :data:`TEMP_PATTERN`.
    """
    found = []
    for directory, _dirs, files in os.walk(root):
        found.extend(Path(directory, name) for name in files if TEMP_PATTERN.match(name))
    return sorted(found)

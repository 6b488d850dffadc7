"""Inputs on a store: the images under prefixes, matching globs, or named one by one.

The counterpart of scanning a local directory (:func:`dagflow.inputs.resolve_inputs`):
one listing request per thousand objects, each object's size and modification time from
the listing itself (its fingerprint: nothing is read per object), names starting with
``.`` or ``_dagflow`` skipped at any depth, as they are locally.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from dagflow.exceptions import BadInputError, InputError
from dagflow.io.formats import IMAGE_EXTENSIONS
from dagflow.io.redact import redact_url
from dagflow.io.storage import ObjectStat, is_remote, list_objects, stat

__all__ = ["common_prefix", "list_images", "stat_objects"]

_GLOB_CHARS = frozenset("*?[")


def _is_image(url: str, cut: int) -> bool:
    name = url.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    if dot < 0 or name[dot:].lower() not in IMAGE_EXTENSIONS:
        return False
    return not any(part.startswith((".", "_dagflow")) for part in url[cut:].split("/"))


def _base(spec: str) -> str:
    """The prefix a spec's objects are named relative to: the prefix itself, a glob's
    part before its first wildcard, a single object's "directory"."""
    if any(ch in _GLOB_CHARS for ch in spec):
        head = spec[:min(spec.index(ch) for ch in _GLOB_CHARS if ch in spec)]
        return head[:head.rfind("/") + 1]
    if spec.endswith("/"):
        return spec
    return spec[:spec.rfind("/") + 1]


def _object(url: str) -> ObjectStat | None:
    """The object ``url`` names, ``None`` when it names none (a prefix, say)."""
    try:
        return stat(url, missing_ok=True)
    except BadInputError:  # not_a_file: a prefix written without its "/"
        return None


def list_images(specs: Sequence[str], *, exclude: str | None = None
                ) -> tuple[str, list[tuple[str, ObjectStat]]]:
    """The images that ``specs`` (URLs) name, sorted and without duplicates, and the
    prefix they are relative to.

    Parameters
    ----------
    specs
        Each a prefix (``s3://bucket/in/``: every image below it), a glob
        (``s3://bucket/in/**/*.tif``) or an object.
    exclude
        The run's output: nothing under it is an input.

    Raises
    ------
    InputError
        Nothing found; a manifest on a store (not supported yet); the output is an input
        prefix.
    StorageError
        No such bucket; credentials missing or refused: before anything runs.
    """
    found: dict[str, ObjectStat] = {}
    bases = []
    skip = exclude.rstrip("/") + "/" if exclude and is_remote(exclude) else None
    for spec in specs:
        if spec.lower().endswith((".csv", ".parquet")):
            raise InputError(f"{redact_url(spec)}: a manifest on a store is not supported "
                             "yet: give a prefix or a glob, or a local manifest")
        base = _base(spec)
        if skip is not None and base.rstrip("/") + "/" == skip:
            raise InputError(f"the output {redact_url(skip)} is also an input prefix: "
                             "write the outputs somewhere else (a sub-prefix is fine)")
        bases.append(base)
        whole = not spec.endswith("/") and not any(ch in _GLOB_CHARS for ch in spec)
        one = _object(spec) if whole else None
        if one is not None:
            found[spec] = one
            continue
        listed = list_objects(spec if not whole else spec + "/")
        found.update((url, st) for url, st in listed if _is_image(url, len(base))
                     and (skip is None or not url.startswith(skip)))
    if not found:
        raise InputError(f"no images found in {', '.join(map(redact_url, specs))} "
                         f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    root = bases[0] if len(set(bases)) == 1 else _common_prefix(bases)
    return root, sorted(found.items())


def common_prefix(bases: Sequence[str]) -> str:
    """The deepest prefix (ending in ``/``) common to every URL of ``bases``.

    Examples
    --------
    >>> common_prefix(["s3://b/in/a/x.jpg", "s3://b/in/y.jpg"])
    's3://b/in/'
    """
    return _common_prefix([b[:b.rfind("/") + 1] for b in bases])


def stat_objects(urls: Sequence[str], *, heads: int = 64) -> dict[str, ObjectStat]:
    """The stat of each object of ``urls`` that is there: a ``HEAD`` each for a few,
    one listing of their common prefix for more (one request per thousand objects).

    Raises
    ------
    StorageError
        No such bucket; credentials missing or refused.
    """
    if len(urls) <= heads:
        found = {url: one for url in urls if (one := _object(url)) is not None}
    else:
        wanted = set(urls)
        found = {url: one for url, one in list_objects(common_prefix(urls)) if url in wanted}
    return found


def _common_prefix(bases: Sequence[str]) -> str:
    """The deepest prefix (ending in ``/``) common to every base."""
    protocol = bases[0].partition("://")[0]
    paths = [b.partition("://")[2] for b in bases]
    common = posixpath.commonpath(paths) if all(b.startswith(protocol + "://")
                                                for b in bases) else ""
    if not common:
        raise InputError("inputs on different stores or buckets: give one location, or "
                         "a manifest")
    return f"{protocol}://{common.rstrip('/')}/"

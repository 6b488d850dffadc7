"""Image formats by name, suffix and content: the vocabulary the readers and writers share.

A file's format is decided by its first bytes (:func:`sniff_format`), never by its name:
a PNG saved as ``photo.jpg`` is read as a PNG. Suffixes only choose the format of an
output (:func:`format_from_suffix`) and which files a directory scan picks up
(:data:`IMAGE_EXTENSIONS`).

This module owns names and magic bytes only; it opens no file.
"""

from __future__ import annotations

import os
from os import PathLike

__all__ = [
    "FORMAT_SUFFIXES",
    "IMAGE_EXTENSIONS",
    "READ_FORMATS",
    "WRITE_FORMATS",
    "format_from_suffix",
    "normalize_format",
    "sniff_format",
]

#: The suffix dagflow gives an output of each writable format.
FORMAT_SUFFIXES = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "tiff": ".tif"}

#: Lower-case extensions a directory scan picks up.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".gif", ".bmp"})

#: Formats :func:`dagflow.io.write_image` writes.
WRITE_FORMATS = frozenset(FORMAT_SUFFIXES)

#: Formats :func:`dagflow.io.read_image` reads (recognised by content).
READ_FORMATS = frozenset({"jpeg", "png", "webp", "tiff", "gif", "bmp"})

_ALIASES = {"jpg": "jpeg", "jpe": "jpeg", "tif": "tiff"}

_SUFFIX_FORMATS = {
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".jpe": "jpeg",
    ".png": "png",
    ".webp": "webp",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".gif": "gif",
    ".bmp": "bmp",
}

#: How many leading bytes :func:`sniff_format` needs.
SNIFF_BYTES = 16


def normalize_format(name: str) -> str:
    """The canonical lower-case name of a format (``"JPG"`` -> ``"jpeg"``).

    Examples
    --------
    >>> normalize_format("JPG"), normalize_format(".tif"), normalize_format("png")
    ('jpeg', 'tiff', 'png')
    """
    key = name.strip().lower().lstrip(".")
    return _ALIASES.get(key, key)


def format_from_suffix(path: str | PathLike[str]) -> str | None:
    """The format a file name's suffix announces, or ``None`` for an unknown suffix.

    Examples
    --------
    >>> format_from_suffix("a/b.JPEG"), format_from_suffix("c.tif"), format_from_suffix("d.txt")
    ('jpeg', 'tiff', None)
    """
    return _SUFFIX_FORMATS.get(os.path.splitext(os.fspath(path))[1].lower())


def sniff_format(head: bytes) -> str | None:
    """The format of a file from its first :data:`SNIFF_BYTES` bytes, or ``None``.

    Parameters
    ----------
    head
        The start of the file (at least 12 bytes for WebP).

    Returns
    -------
    str or None
        One of :data:`READ_FORMATS`, or ``None`` when the content is not recognised.

    Examples
    --------
    >>> sniff_format(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(8)), sniff_format(b"\\xff\\xd8\\xff\\xe0")
    ('png', 'jpeg')
    >>> sniff_format(b"hello world") is None
    True
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:2] == b"BM" and len(head) >= 14:
        return "bmp"
    return None

"""EXIF orientation: finding the tag in EXIF bytes and applying it to pixels.

The tag (0x0112) says how the stored pixels must be flipped or rotated to show the
picture upright. :func:`apply_orientation` does that with numpy views (flips and
transposes), so the result is pixel-exact and is applied exactly once, by the reader;
Pillow's ``exif_transpose`` is never used. :func:`exif_orientation` reads the tag from
the raw EXIF block without Pillow's EXIF parser, so that garbage or truncated EXIF can
only ever give orientation 1, never an exception or a warning.

This module owns orientation only; it opens no file.
"""

from __future__ import annotations

import struct
from typing import Any

__all__ = [
    "ORIENTATION_TAG",
    "apply_orientation",
    "exif_orientation",
    "inverse_orientation",
    "oriented_size",
]

#: The EXIF tag that holds the orientation.
ORIENTATION_TAG = 0x0112

_EXIF_HEADER = b"Exif\x00\x00"
_MAX_IFD_ENTRIES = 4096


def exif_orientation(exif: bytes | None) -> int:
    """The orientation (1..8) stored in an EXIF block; 1 when absent or invalid.

    Parameters
    ----------
    exif
        The EXIF payload, with or without the ``Exif\\0\\0`` header (as found in a JPEG
        APP1 segment, a PNG ``eXIf`` chunk or a WebP ``EXIF`` chunk).

    Returns
    -------
    int
        The tag's value when it is 1..8; 1 for a missing tag, a value such as 0 or 9, or
        EXIF data too short or malformed to read.

    Examples
    --------
    >>> header = b"MM\\x00*\\x00\\x00\\x00\\x08"  # big-endian TIFF, IFD at byte 8
    >>> entry = b"\\x01\\x12\\x00\\x03\\x00\\x00\\x00\\x01\\x00\\x06\\x00\\x00"  # 0x0112 SHORT 6
    >>> block = header + b"\\x00\\x01" + entry
    >>> exif_orientation(block), exif_orientation(None), exif_orientation(b"garbage")
    (6, 1, 1)
    """
    if not exif:
        return 1
    data = exif[len(_EXIF_HEADER) :] if exif.startswith(_EXIF_HEADER) else exif
    try:
        value = _find_orientation(data)
    except (struct.error, IndexError, ValueError):
        return 1
    return value if value is not None and 1 <= value <= 8 else 1


def _find_orientation(data: bytes) -> int | None:
    if data[:4] == b"II*\x00":
        order = "<"
    elif data[:4] == b"MM\x00*":
        order = ">"
    else:
        return None
    (offset,) = struct.unpack_from(order + "I", data, 4)
    if offset < 8 or offset + 2 > len(data):
        return None
    (count,) = struct.unpack_from(order + "H", data, offset)
    for index in range(min(count, _MAX_IFD_ENTRIES)):
        entry = offset + 2 + 12 * index
        if entry + 12 > len(data):
            return None
        tag, kind, n = struct.unpack_from(order + "HHI", data, entry)
        if tag != ORIENTATION_TAG:
            continue
        if n < 1:
            return None
        if kind == 3:  # SHORT
            return int(struct.unpack_from(order + "H", data, entry + 8)[0])
        if kind == 4:  # LONG
            return int(struct.unpack_from(order + "I", data, entry + 8)[0])
        return None
    return None


def apply_orientation(array: Any, orientation: int) -> Any:
    """Turn stored pixels ``(y, x, ...)`` upright according to an EXIF orientation.

    ===========  =========================================
    orientation  transform of the stored pixels
    ===========  =========================================
    1            none
    2            mirror left-right
    3            rotate 180
    4            mirror top-bottom
    5            transpose (swap x and y)
    6            rotate 90 degrees clockwise
    7            transverse (transpose about the anti-diagonal)
    8            rotate 90 degrees counter-clockwise
    ===========  =========================================

    Parameters
    ----------
    array
        Pixels with y first and x second (any trailing axes are kept).
    orientation
        The EXIF value; anything outside 1..8 is treated as 1.

    Returns
    -------
    array
        A view of ``array`` (not a copy), upright.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.arange(6).reshape(2, 3)
    >>> apply_orientation(a, 6).tolist()
    [[3, 0], [4, 1], [5, 2]]
    """
    axes = (1, 0, *range(2, array.ndim))
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:
        return array.transpose(axes)
    if orientation == 6:
        return array.transpose(axes)[:, ::-1]
    if orientation == 7:
        return array[::-1, ::-1].transpose(axes)
    if orientation == 8:
        return array[:, ::-1].transpose(axes)
    return array


def inverse_orientation(orientation: int) -> int:
    """The orientation that undoes ``orientation`` (6 and 8 swap; the others undo themselves).

    ``apply_orientation(apply_orientation(a, inverse_orientation(n)), n)`` equals ``a``:
    this is how test fixtures store an upright picture under any tag.

    Examples
    --------
    >>> [inverse_orientation(n) for n in range(1, 9)]
    [1, 2, 3, 4, 5, 8, 7, 6]
    """
    return {6: 8, 8: 6}.get(orientation, orientation if 1 <= orientation <= 8 else 1)


def oriented_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """``(width, height)`` after the orientation is applied (5..8 swap the sides).

    Examples
    --------
    >>> oriented_size(640, 480, 6), oriented_size(640, 480, 3)
    ((480, 640), (640, 480))
    """
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)

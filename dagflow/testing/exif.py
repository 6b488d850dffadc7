"""JPEG fixtures with chosen EXIF blocks: every orientation, invalid tags, broken EXIF.

The EXIF block is spliced into an already encoded JPEG (:func:`insert_exif`), so files
that differ only in their tag carry byte-identical compressed pixels: a test can compare
the decoded, auto-oriented pixels of orientation ``n`` with a numpy transform of the
orientation-1 file, exactly, despite JPEG being lossy.

This module owns EXIF fixtures only; it writes files but never reads images back.
"""

from __future__ import annotations

import io
import struct
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from dagflow.io.atomic import atomic_write
from dagflow.io.orient import ORIENTATION_TAG, apply_orientation, inverse_orientation

__all__ = [
    "encode_jpeg",
    "exif_block",
    "garbage_exif_block",
    "insert_exif",
    "jpeg_with_orientation",
    "stored_for_orientation",
    "truncated_exif_block",
    "write_jpeg_with_orientation",
]

_APP1 = b"\xff\xe1"


def encode_jpeg(pixels: np.ndarray, *, quality: int = 92) -> bytes:
    """Encode ``(y, x)`` / ``(y, x, 1 | 3)`` ``uint8`` pixels as a baseline JPEG, no EXIF."""
    array = pixels[:, :, 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels
    buffer = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(array)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def exif_block(orientation: int) -> bytes:
    """An ``Exif\\0\\0`` block whose IFD0 holds only the orientation tag (any value 0..65535).

    Built with Pillow's ``Image.Exif``; invalid values such as 0 or 9 are written as given.
    """
    exif = PILImage.Exif()
    exif[ORIENTATION_TAG] = int(orientation)
    return exif.tobytes()


def truncated_exif_block() -> bytes:
    """An EXIF block cut inside its IFD (the orientation entry is incomplete)."""
    block = exif_block(6)
    return block[: len(block) - 8]


def garbage_exif_block(seed: int = 0) -> bytes:
    """An ``Exif\\0\\0`` block with a valid TIFF header but random bytes after it,
    including an IFD offset that points past the end."""
    rng = np.random.default_rng(seed)
    return b"Exif\x00\x00II*\x00" + struct.pack("<I", 0xFFFF00) + rng.bytes(40)


def insert_exif(jpeg: bytes, block: bytes) -> bytes:
    """Splice an APP1 segment holding ``block`` right after the JPEG's SOI marker.

    Raises
    ------
    ValueError
        When ``jpeg`` does not start with SOI or the block is over 65533 bytes.
    """
    if not jpeg.startswith(b"\xff\xd8"):
        raise ValueError("not a JPEG stream (no SOI marker)")
    if len(block) > 65533:
        raise ValueError("an APP1 segment holds at most 65533 bytes")
    segment = _APP1 + struct.pack(">H", len(block) + 2) + block
    return jpeg[:2] + segment + jpeg[2:]


def stored_for_orientation(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels to store so that applying ``orientation`` gives back ``upright``."""
    return np.ascontiguousarray(apply_orientation(upright, inverse_orientation(orientation)))


def jpeg_with_orientation(
    pixels: np.ndarray, orientation: int, *, quality: int = 92, upright: bool = False
) -> bytes:
    """JPEG bytes of ``pixels`` with the given EXIF orientation tag.

    Parameters
    ----------
    pixels
        ``uint8`` pixels.
    orientation
        The tag value, written as given (0 and 9 make invalid files on purpose).
    quality
        JPEG quality.
    upright
        When true, ``pixels`` is the upright picture and the stored pixels are its
        inverse transform (so a correct reader shows ``pixels``); when false,
        ``pixels`` is stored as is.
    """
    stored = stored_for_orientation(pixels, orientation) if upright else pixels
    return insert_exif(encode_jpeg(stored, quality=quality), exif_block(orientation))


def write_jpeg_with_orientation(
    path: str | PathLike[str],
    pixels: np.ndarray,
    orientation: int,
    *,
    quality: int = 92,
    upright: bool = False,
) -> Path:
    """Write :func:`jpeg_with_orientation` to ``path`` (atomically); returns the path."""
    data = jpeg_with_orientation(pixels, orientation, quality=quality, upright=upright)
    return atomic_write(path, data)

"""16-bit PNG: the encoder Pillow lacks, and a pixel-exact decode of 16-bit colour.

Pillow writes 16-bit PNG only for grey and reads 16-bit colour PNG as 8 bits per
channel (it keeps the high byte). dagflow keeps 16 bits end to end:

* :func:`encode_png16` is a small PNG encoder (``IHDR`` + ``IDAT`` + ``IEND``, ``Up``
  filter, zlib) for 16-bit grey, grey+alpha, RGB and RGBA;
* :func:`decode_png16` lets Pillow's own PNG decoder (zlib, row filters, interlacing)
  do the work, but unpacks the unfiltered rows differently: 16-bit RGB/RGBA twice, once
  keeping the high byte (``RGB;16B``) and once the low byte (``RGB;16L`` read on
  big-endian data), and 16-bit grey+alpha as four bytes per pixel (``RGBA``), so no
  bit is lost.

This module owns 16-bit PNG only; 8-bit PNG goes through Pillow unchanged.
"""

from __future__ import annotations

import struct
import zlib
from os import PathLike
from typing import IO, Any

import numpy as np
from PIL import PngImagePlugin

__all__ = ["decode_png16", "encode_png16"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}
_IDAT_CHUNK = 1 << 23


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png16(array: Any, *, compress_level: int = 6) -> bytes:
    """Encode a 16-bit image as PNG bytes.

    Parameters
    ----------
    array
        ``uint16`` pixels ``(y, x)`` or ``(y, x, c)`` with 1 (grey), 2 (grey+alpha),
        3 (RGB) or 4 (RGBA) channels.
    compress_level
        zlib level, 0 (none) to 9 (smallest).

    Returns
    -------
    bytes
        A complete PNG file; deterministic for the same pixels and level.

    Examples
    --------
    >>> data = encode_png16(np.full((2, 3, 3), 65535, dtype=np.uint16))
    >>> data[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
    pixels = np.asarray(array)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in _COLOUR_TYPES:
        raise ValueError(f"16-bit PNG needs (y, x, 1..4) pixels, got shape {pixels.shape}")
    if pixels.dtype != np.uint16:
        raise ValueError(f"16-bit PNG needs uint16 pixels, got {pixels.dtype}")
    height, width, channels = pixels.shape
    if height == 0 or width == 0:
        raise ValueError("cannot encode an empty image")
    rows = np.ascontiguousarray(pixels, dtype=">u2").view(np.uint8).reshape(height, -1)
    filtered = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # "Up": each byte minus the byte above it, modulo 256
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    compressed = zlib.compress(filtered.tobytes(), compress_level)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, _COLOUR_TYPES[channels], 0, 0, 0)
    parts = [_PNG_SIGNATURE, _chunk(b"IHDR", ihdr)]
    for start in range(0, len(compressed), _IDAT_CHUNK):
        parts.append(_chunk(b"IDAT", compressed[start : start + _IDAT_CHUNK]))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


def decode_png16(
    im: PngImagePlugin.PngImageFile, fp: IO[bytes], path: str | PathLike[str]
) -> np.ndarray:
    """Decode a 16-bit colour or grey+alpha PNG without losing the low byte.

    Parameters
    ----------
    im
        The lazily opened PNG (not loaded yet) whose raw mode is ``RGB;16B``,
        ``RGBA;16B`` or ``LA;16B``.
    fp
        Its open file, re-read for the second pass.
    path
        Its name, for Pillow.

    Returns
    -------
    numpy.ndarray
        ``uint16`` pixels ``(y, x, c)``, c = 2, 3 or 4.
    """
    rawmode = im.tile[0].args
    if rawmode == "LA;16B":
        im.tile = [tile._replace(args="RGBA") for tile in im.tile]
        im.load()
        packed = np.asarray(im)
        return (packed[..., 0::2].astype(np.uint16) << 8) | packed[..., 1::2]
    im.load()
    high = np.asarray(im)
    fp.seek(0)
    second = PngImagePlugin.PngImageFile(fp, str(path))
    second.tile = [tile._replace(args=rawmode.replace(";16B", ";16L")) for tile in second.tile]
    second.load()
    low = np.asarray(second)
    return (high.astype(np.uint16) << 8) | low

"""Writing an :class:`~dagflow.image.Image` to JPEG, PNG, WebP or TIFF, atomically.

:func:`write_image` is the ``save`` sink of every workflow. It converts the pixels to
what the format can hold, explicitly and documented:

* JPEG and WebP hold 8 bits: ``uint16`` is scaled by 255/65535 with rounding; floats
  in [0, 1] are scaled by 255 (clipped, NaN -> 0); ``bool`` becomes 0/255;
* JPEG has no alpha: grey+alpha becomes grey and RGBA becomes RGB (alpha dropped, not
  composited); WebP stores grey as RGB;
* PNG keeps 8 or 16 bits; floats become 8-bit, or 16-bit when ``meta["bit_depth"] ==
  16``;
* TIFF keeps the array as it is (8/16-bit, float), with optional compression (any codec
  of ``imagecodecs``), tiles and BigTIFF.

The encoders are libjpeg-turbo and libpng through ``imagecodecs`` (JPEG: the same
pixels and bytes' size as Pillow's ``save`` at the same quality, in about two thirds of
the time; PNG: deflate with the run-length strategy and libpng's adaptive row filters,
smaller files than Pillow's default and several times faster), Pillow for WebP, and
tifffile for TIFF.

Every file is written through :func:`dagflow.io.atomic.atomic_write`, so a crash never
leaves a half-written image under its final name. An object (``s3://``, any fsspec URL)
is encoded in memory and uploaded by :func:`dagflow.io.upload.put_object`: one PUT, or a
multipart upload completed only at the end; it appears whole or not at all.

This module owns encoding; paths and atomicity live in :mod:`dagflow.io.atomic` and
:mod:`dagflow.io.upload`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from os import PathLike
from typing import Any, BinaryIO

import numpy as np
from PIL import Image as PILImage

from dagflow.exceptions import BadInputError, TransientError
from dagflow.image import Image, as_image
from dagflow.io.atomic import atomic_write
from dagflow.io.errors import TRANSIENT_ERRNOS
from dagflow.io.formats import WRITE_FORMATS, format_from_suffix, normalize_format
from dagflow.io.redact import redact_url
from dagflow.io.storage import as_local, is_remote

__all__ = ["to_uint8", "to_uint16", "write_image"]

logger = logging.getLogger(__name__)

#: zlib's run-length strategy (``Z_RLE``): with libpng's adaptive row filters, smaller
#: PNGs than the default strategy on photographs and scans, and several times faster.
_PNG_STRATEGY_RLE = 3


def write_image(
    image: Image | Any,
    path: str | PathLike[str],
    *,
    format: str | None = None,
    quality: int = 90,
    compression: str | int | None = None,
    lossless: bool = False,
    tile: tuple[int, int] | None = None,
    bigtiff: bool | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Encode an image and write it atomically.

    Parameters
    ----------
    image
        An :class:`Image` (or an array / ``xarray.DataArray``, coerced) with 1 to 4
        channels (TIFF: any number).
    path
        The output file (missing parent directories are created), or an object's URL
        (``s3://bucket/out/a.png``, any fsspec protocol).
    format
        ``jpeg`` (``jpg``), ``png``, ``webp`` or ``tiff`` (``tif``); by default from
        the suffix of ``path``.
    quality
        JPEG and lossy WebP quality, 1..100.
    compression
        PNG: the zlib level 0..9 (default 6). TIFF: the codec, e.g. ``"zlib"``,
        ``"lzw"``, ``"zstd"``, ``"lzma"``, ``"jpeg"``; default none. Ignored by JPEG and
        WebP.
    lossless
        Lossless WebP (colour under transparent pixels is kept exactly).
    tile
        TIFF tile shape ``(height, width)``, multiples of 16; default strips.
    bigtiff
        Force (``True``) or forbid (``False``) BigTIFF; default: when the data needs it.
    storage_options
        For a URL: storage options over ``dagflow.storage.options``.

    Returns
    -------
    str
        The path written.

    Raises
    ------
    ValueError
        An unknown format, a bad ``quality`` or ``compression``.
    BadInputError
        ``unsupported_mode`` for pixels the format cannot hold (e.g. ``int32`` to PNG,
        5 channels to JPEG); ``unsafe_path`` when ``path`` is a symlink.
    TransientError
        A retryable storage error while writing (``EIO``, ``ETIMEDOUT``, ``ESTALE``...; a
        throttled or failing store); nothing is left at ``path``.
    StorageError
        For a URL: no such bucket, credentials missing or refused, access denied.

    Examples
    --------
    >>> import tempfile, os
    >>> out = write_image(np.zeros((8, 8, 3), np.uint16), os.path.join(tempfile.mkdtemp(), "a.tif"))
    >>> out.endswith("a.tif")
    True
    """
    img = as_image(image)
    fmt = normalize_format(format) if format is not None else format_from_suffix(path)
    if fmt not in WRITE_FORMATS:
        raise ValueError(
            f"cannot tell which format to write for {path!s} (format={format!r}); "
            f"use one of {sorted(WRITE_FORMATS)} or a matching suffix"
        )
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be within 1..100, got {quality}")
    data = _to_numpy(img.data)
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3 or data.shape[0] == 0 or data.shape[1] == 0:
        raise BadInputError("unsupported_mode", f"cannot write pixels of shape {data.shape}")
    encoders: dict[str, Callable[..., Callable[[BinaryIO], object] | bytes]] = {
        "jpeg": _jpeg,
        "png": _png,
        "webp": _webp,
        "tiff": _tiff,
    }
    content = encoders[fmt](
        data,
        meta=img.meta,
        quality=int(quality),
        compression=compression,
        lossless=lossless,
        tile=tile,
        bigtiff=bigtiff,
    )
    if is_remote(path):
        from dagflow.io.upload import put_object

        put_object(os.fspath(path), content, storage_options=storage_options)
        logger.debug("wrote %s (%s, %s %s)", redact_url(os.fspath(path)), fmt, data.shape,
                     data.dtype)
        return os.fspath(path)
    try:
        atomic_write(as_local(path), content)
    except OSError as exc:
        if exc.errno in TRANSIENT_ERRNOS and not isinstance(exc, TransientError):
            raise TransientError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    logger.debug("wrote %s (%s, %s %s)", path, fmt, data.shape, data.dtype)
    return str(path)


def _to_numpy(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data
    if hasattr(data, "__cuda_array_interface__") and hasattr(data, "get"):
        return data.get()
    return np.asarray(data)


def _full_range(data: np.ndarray, top: int, dtype: type) -> np.ndarray:
    """Integers of any other type: the dtype's whole range, ``min..max``, onto ``0..top``."""
    info = np.iinfo(data.dtype)
    span = float(info.max) - float(info.min)
    scaled = (data.astype(np.float64) - float(info.min)) * (top / span)
    return np.rint(scaled).astype(dtype)


def to_uint8(data: np.ndarray) -> np.ndarray:
    """Pixels as ``uint8``, scaled explicitly.

    ``uint16`` -> ``round(v * 255 / 65535)``; floats are taken as [0, 1] (clipped,
    NaN -> 0) and multiplied by 255 with rounding; ``bool`` -> 0/255; other integers
    (signed, 32-bit: TIFFs hold them) have their dtype's whole range mapped onto 0..255
    (``int16``: -32768 -> 0, 32767 -> 255).

    Raises
    ------
    BadInputError
        ``unsupported_mode`` for pixels that are not numbers (complex, objects).

    Examples
    --------
    >>> to_uint8(np.array([0, 128, 32768, 65535], np.uint16)).tolist()
    [0, 0, 128, 255]
    >>> to_uint8(np.array([0.0, 0.5, 1.2])).tolist()
    [0, 128, 255]
    >>> to_uint8(np.array([-32768, 0, 32767], np.int16)).tolist()
    [0, 128, 255]
    """
    if data.dtype == np.uint8:
        return data
    if data.dtype == np.bool_:
        return data.astype(np.uint8) * np.uint8(255)
    if data.dtype == np.uint16:
        return ((data.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(data.dtype, np.floating):
        return np.rint(np.clip(np.nan_to_num(data, nan=0.0), 0.0, 1.0) * 255).astype(np.uint8)
    if np.issubdtype(data.dtype, np.integer):
        return _full_range(data, 255, np.uint8)
    raise BadInputError("unsupported_mode", f"cannot write {data.dtype} pixels as 8-bit")


def to_uint16(data: np.ndarray) -> np.ndarray:
    """Pixels as ``uint16``: ``uint8`` x 257 (exact), floats in [0, 1] x 65535, bool 0/65535,
    other integers their dtype's whole range onto 0..65535.

    Examples
    --------
    >>> to_uint16(np.array([0, 1, 255], np.uint8)).tolist()
    [0, 257, 65535]
    """
    if data.dtype == np.uint16:
        return data
    if data.dtype == np.uint8:
        return data.astype(np.uint16) * np.uint16(257)
    if data.dtype == np.bool_:
        return data.astype(np.uint16) * np.uint16(65535)
    if np.issubdtype(data.dtype, np.floating):
        return np.rint(np.clip(np.nan_to_num(data, nan=0.0), 0.0, 1.0) * 65535).astype(np.uint16)
    if np.issubdtype(data.dtype, np.integer):
        return _full_range(data, 65535, np.uint16)
    raise BadInputError("unsupported_mode", f"cannot write {data.dtype} pixels as 16-bit")


def _planar(data: np.ndarray) -> np.ndarray:
    """Contiguous ``(y, x)`` for one channel, ``(y, x, c)`` otherwise (what encoders take)."""
    return np.ascontiguousarray(data[:, :, 0] if data.shape[2] == 1 else data)


def _pillow(data: np.ndarray) -> PILImage.Image:
    return PILImage.fromarray(_planar(data))


def _check_channels(data: np.ndarray, fmt: str) -> int:
    channels = data.shape[2]
    if channels not in (1, 2, 3, 4):
        raise BadInputError("unsupported_mode", f"{fmt} cannot hold {channels} channels")
    return channels


def _jpeg(data: np.ndarray, *, quality: int, **_: Any) -> bytes:
    channels = _check_channels(data, "JPEG")
    pixels = to_uint8(data)
    if channels in (2, 4):  # JPEG has no alpha: drop it (not composited)
        pixels = pixels[:, :, : channels - 1]
    import imagecodecs

    return imagecodecs.jpeg8_encode(_planar(pixels), level=quality)


def _webp(
    data: np.ndarray, *, quality: int, lossless: bool, **_: Any
) -> Callable[[BinaryIO], object]:
    channels = _check_channels(data, "WebP")
    pixels = to_uint8(data)
    if channels == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    elif channels == 2:
        pixels = np.concatenate([np.repeat(pixels[:, :, :1], 3, axis=2), pixels[:, :, 1:]], 2)
    im = _pillow(pixels)
    return lambda fh: im.save(fh, format="WEBP", quality=quality, lossless=lossless, exact=True)


def _png(data: np.ndarray, *, meta: dict[str, Any], compression: Any, **_: Any) -> bytes:
    _check_channels(data, "PNG")
    if compression is None:
        level = 6
    elif isinstance(compression, int) and 0 <= compression <= 9:
        level = compression
    else:
        raise ValueError(f"PNG compression is a zlib level 0..9, got {compression!r}")
    sixteen = data.dtype == np.uint16 or (
        np.issubdtype(data.dtype, np.floating) and meta.get("bit_depth") == 16
    )
    pixels = to_uint16(data) if sixteen else to_uint8(data)
    import imagecodecs

    return imagecodecs.png_encode(_planar(pixels), level=level, strategy=_PNG_STRATEGY_RLE)


def _tiff(
    data: np.ndarray,
    *,
    compression: Any,
    tile: tuple[int, int] | None,
    bigtiff: bool | None,
    **_: Any,
) -> Callable[[BinaryIO], object]:
    import tifffile

    if compression is not None and not isinstance(compression, str):
        raise ValueError(f"TIFF compression is a codec name such as 'zlib', got {compression!r}")
    codec = compression.lower() if compression else None
    known = tifffile.COMPRESSION.__members__
    if codec not in (None, "none", "zlib") and codec.upper() not in known:
        raise ValueError(f"unknown TIFF compression {compression!r}; e.g. 'zlib', 'lzw', "
                         "'zstd', 'lzma', 'jpeg'")
    if data.dtype == np.bool_:
        data = data.astype(np.uint8) * np.uint8(255)
    channels = data.shape[2]
    kwargs: dict[str, Any] = {
        "photometric": "rgb" if channels in (3, 4) else "minisblack",
        "compression": None if codec == "none" else codec,
        "metadata": None,
    }
    if channels in (2, 4):
        kwargs["extrasamples"] = ("unassalpha",)
    if channels > 1:
        kwargs["planarconfig"] = "contig"
    if tile is not None:
        kwargs["tile"] = tuple(int(t) for t in tile)
    if bigtiff is not None:
        kwargs["bigtiff"] = bigtiff
    pixels = np.ascontiguousarray(data[:, :, 0] if channels == 1 else data)
    return lambda fh: tifffile.imwrite(fh, pixels, **kwargs)

"""Reading one image file into an :class:`~dagflow.image.Image`.

:func:`read_image` is the ``load`` source of every workflow. In order, it

1. recognises the format by content (a PNG named ``.jpg`` is read as a PNG);
2. reads the header and refuses an image above ``max_pixels`` *before* decoding, for
   every codec (tifffile has no limit of its own; Pillow's process-wide limit is not
   used, so its warning never escapes);
3. decodes: JPEG (grey and YCbCr) through libjpeg-turbo (``simplejpeg``), at 1/2, 1/4
   or 1/8 scale in the DCT domain when the caller says how small the image will be
   made (``reduce_to``), the scale Pillow's ``draft`` would choose and the same pixels;
   CMYK and unusual JPEGs, PNG, WebP, GIF and BMP through Pillow, 16-bit colour PNG
   through libpng (``imagecodecs``: Pillow keeps 8 bits of it), TIFF through tifffile
   (first page; every codec of ``imagecodecs``), its 2- to 15-bit samples scaled to 8 or
   16 bits and CIELab converted to RGB;
4. converts to ``(y, x, c)`` (grey 1, grey+alpha 2, RGB 3, RGBA 4 channels; palette ->
   RGB/RGBA; CMYK -> RGB; 1-bit -> 0/255; 16 bits kept);
5. applies the EXIF orientation exactly once, with numpy flips and transposes.

An object on a store (``s3://``, any fsspec URL) is read in at most two requests: its
first ``dagflow.storage.probe-bytes`` (64 KiB) -- whose header is checked against
``max_pixels`` (and a TIFF's page against its byte limit) before anything more is
fetched -- and the rest of it in one ranged request (on S3 the first answer gives the
object's size; elsewhere a request for its size comes first). An object listed
(:func:`dagflow.io.storage.listed_size`: a run's inputs, from the listing that found
them) at no more than ``dagflow.storage.whole-read-bytes`` (1 MiB) is fetched whole by
its first request instead (its header is still checked before anything is decoded: a
request saved costs more than the bytes a refusal would). It is then decoded from
memory exactly as a local file is.

Truncated, corrupt or unrecognised files end in a :class:`BadInputError` with a reason
(never a grey-filled image: Pillow's ``LOAD_TRUNCATED_IMAGES`` is never set);
retryable storage errors end in :class:`TransientError`.

This module owns decoding; headers live in :mod:`dagflow.io.probe`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from os import PathLike
from typing import IO, Any

import numpy as np
from PIL import Image as PILImage
from PIL import ImageFile as PILImageFile

from dagflow.exceptions import BadInputError, OversizeError
from dagflow.image import SPACES_BY_CHANNELS, Image
from dagflow.io.errors import decoder_errors
from dagflow.io.formats import format_from_suffix
from dagflow.io.jpeg_header import jpeg_header
from dagflow.io.lab import CIELAB, ICCLAB, lab_to_rgb
from dagflow.io.orient import apply_orientation, exif_orientation
from dagflow.io.probe import (
    PNG16_RAWMODES,
    count_frames,
    open_pillow,
    open_source,
    pillow_layout,
    read_header,
    tiff_layout,
    webp_header,
)
from dagflow.io.storage import RangedFile, is_url

__all__ = ["DEFAULT_MAX_PIXELS", "read_image"]

logger = logging.getLogger(__name__)

#: Default pixel limit of :func:`read_image` (width x height of the stored image).
DEFAULT_MAX_PIXELS = 200_000_000

#: Bytes per pixel allowed for TIFF pages before decoding (the equivalent of RGBA 16-bit).
_TIFF_BYTES_PER_PIXEL = 8

_DRAFT_SCALES = (8, 4, 2, 1)

#: JPEG colour spaces (as libjpeg-turbo names them) decoded by the fast path, and the
#: colour space asked of it; CMYK and YCCK JPEGs go through Pillow.
_FAST_JPEG_SPACES = {"Gray": "GRAY", "YCbCr": "RGB", "RGB": "RGB"}

_PALETTE, _MINISWHITE, _MINISBLACK, _RGB, _SEPARATED = 3, 0, 1, 2, 5
_WHITEPOINT_TAG = 318


def read_image(
    path: str | PathLike[str],
    *,
    auto_orient: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    reduce_to: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Image:
    """Read an image file into ``(y, x, c)`` pixels and metadata.

    Parameters
    ----------
    path
        The file, or an object's URL (``s3://bucket/a.jpg``, any fsspec protocol); its
        format is recognised by content (JPEG, PNG, WebP, TIFF, GIF, BMP).
    auto_orient
        Apply the EXIF orientation so the pixels are upright (exactly once).
    max_pixels
        Refuse, before decoding, an image whose stored width x height is larger
        (decompression-bomb guard). ``None`` disables the check.
    reduce_to
        The long side the image will be reduced to downstream. A JPEG is then decoded
        at 1/2, 1/4 or 1/8 scale in the DCT domain, as small as possible while its long
        side stays >= ``reduce_to``; other formats ignore it.
    storage_options
        For a URL: storage options over ``dagflow.storage.options``.

    Returns
    -------
    Image
        ``data`` of dtype ``uint8`` (``uint16`` for 16-bit PNG and TIFF, the stored type
        for other TIFFs) and ``meta`` with ``path``, ``format``, ``source_width``,
        ``source_height`` (as stored), ``source_orientation``, ``orientation`` (1 once
        applied), ``space``, ``bit_depth``, ``frames``, ``draft_scale`` (1 when the
        decode was full size) and ``extension_mismatch``.

    Raises
    ------
    OversizeError
        More pixels than ``max_pixels``.
    BadInputError
        ``missing``, ``not_a_file``, ``unreadable``, ``empty_file``, ``unidentified``,
        ``truncated``, ``corrupt``, ``unsupported_mode`` or ``unsupported_codec``.
    TransientError
        A retryable storage error (``EIO``, ``ETIMEDOUT``, ``ECONNRESET``, ``ESTALE``...;
        a throttled or failing store).
    StorageError
        For a URL: no such bucket, credentials missing or refused.
    ResourceError
        The decoder ran out of memory.

    Examples
    --------
    >>> import tempfile, os
    >>> from dagflow.io import write_image
    >>> folder = tempfile.mkdtemp()
    >>> path = write_image(Image(np.zeros((4, 6, 3), np.uint8)), os.path.join(folder, "a.png"))
    >>> img = read_image(path)
    >>> img.data.shape, img.meta["format"], img.meta["space"]
    ((4, 6, 3), 'png', 'rgb')
    """
    if reduce_to is not None and (not isinstance(reduce_to, int) or reduce_to < 1):
        raise ValueError(f"reduce_to must be a positive int or None, got {reduce_to!r}")
    if PILImageFile.LOAD_TRUNCATED_IMAGES:
        logger.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set by another library: "
            "truncated images may decode as grey"
        )
    whole_up_to = _whole_read_bytes() if is_url(path) else 0
    with open_source(path, storage_options, whole_up_to=whole_up_to) as (fp, fmt, _size_bytes), \
            decoder_errors(path):
        if isinstance(fp, RangedFile):  # an object: its header is checked before the body
            _check_header(read_header(fp, fmt, path), fmt, max_pixels, path)
            fp = io.BytesIO(fp.read_all())
        if fmt == "tiff":
            data, info = _read_tiff(fp, path, max_pixels, _size_bytes)
        else:
            fast = (_read_jpeg(fp, _size_bytes, path, max_pixels, reduce_to) if fmt == "jpeg"
                    else None)
            data, info = fast or _read_pillow(fp, fmt, path, max_pixels, reduce_to)
    source_orientation = info["orientation"]
    if auto_orient and source_orientation != 1:
        data = np.ascontiguousarray(apply_orientation(data, source_orientation))
    suffix_format = format_from_suffix(path)
    mismatch = suffix_format is not None and suffix_format != fmt
    if mismatch:
        logger.debug("%s is %s content under a %s name", path, fmt, suffix_format)
    meta = {
        "path": str(path),
        "format": fmt,
        "source_width": info["width"],
        "source_height": info["height"],
        "source_orientation": source_orientation,
        "orientation": 1 if auto_orient else source_orientation,
        "space": SPACES_BY_CHANNELS.get(data.shape[2], "multi"),
        "bit_depth": data.dtype.itemsize * 8,
        "frames": info["frames"],
        "draft_scale": info.get("draft_scale", 1),
        "extension_mismatch": mismatch,
    }
    return Image(data, meta)


def _whole_read_bytes() -> int:
    from dagflow import config

    return int(config.get("storage.whole-read-bytes", 0))


def _check_pixels(width: int, height: int, max_pixels: int | None, path: Any) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise OversizeError(
            f"{path}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
            f"{max_pixels:,} pixels (raise max_pixels to read it)"
        )


def _check_header(header: dict[str, Any], fmt: str, max_pixels: int | None, path: Any) -> None:
    """Refuse, from its header alone, an image the decoder would refuse after reading it."""
    _check_pixels(header["width"], header["height"], max_pixels, path)
    if fmt == "tiff":
        nbytes = (header["width"] * header["height"] * header["samples"]
                  * np.dtype(header["source_dtype"]).itemsize)
        _check_tiff_bytes(nbytes, max_pixels, path)


def _check_tiff_bytes(nbytes: int, max_pixels: int | None, path: Any) -> None:
    if max_pixels is not None and nbytes > max_pixels * _TIFF_BYTES_PER_PIXEL:
        raise OversizeError(
            f"{path}: the first TIFF page holds {nbytes:,} bytes, more than "
            f"{max_pixels * _TIFF_BYTES_PER_PIXEL:,} ({_TIFF_BYTES_PER_PIXEL} per "
            "allowed pixel)"
        )


def _read_jpeg(
    fp: IO[bytes], size_bytes: int, path: Any, max_pixels: int | None, reduce_to: int | None
) -> tuple[np.ndarray, dict[str, Any]] | None:
    """A grey or colour JPEG decoded by libjpeg-turbo, or ``None`` to leave it to Pillow.

    The scale is the one Pillow's ``draft`` chooses, and libjpeg-turbo's scaled decode
    is the same code Pillow calls (accurate integer DCT, smooth chroma upsampling): the
    pixels are Pillow's, in about 85 % of its time. What this path does not read -- CMYK,
    12-bit, multi-picture files, and any file libjpeg-turbo warns about (truncated,
    corrupt) -- goes to Pillow, whose errors name the problem.
    """
    import simplejpeg

    raw = fp.read(size_bytes)
    header = jpeg_header(raw)
    if header is None:
        return None
    width, height = header["width"], header["height"]
    _check_pixels(width, height, max_pixels, path)
    try:
        stored = simplejpeg.decode_jpeg_header(raw)
    except ValueError:
        return None
    target = _FAST_JPEG_SPACES.get(stored[2])
    if target is None or stored[:2] != (height, width):
        return None
    scale = _draft_scale(width, height, reduce_to)
    size = (-(-width // scale), -(-height // scale))
    try:  # strict: a warning (premature end, corrupt data) raises instead of filling grey
        data = simplejpeg.decode_jpeg(raw, colorspace=target, min_width=size[0],
                                      min_height=size[1], strict=True)
    except ValueError:
        logger.debug("%s: libjpeg-turbo refused it, Pillow decodes it", path, exc_info=True)
        return None
    if data.shape[:2] != (size[1], size[0]):
        return None
    info = {"width": width, "height": height, "orientation": header["orientation"],
            "frames": 1, "draft_scale": scale}
    return data, info


def _draft_request(width: int, height: int, reduce_to: int | None) -> tuple[int, int] | None:
    """The size asked of Pillow's ``draft``: the image scaled so that its long side is
    ``reduce_to`` (rounded up); ``None`` when no reduction can keep that long side."""
    long_side = max(width, height)
    if not reduce_to or reduce_to * 2 > long_side:
        return None
    return (max(1, -(-width * reduce_to // long_side)),
            max(1, -(-height * reduce_to // long_side)))


def _draft_scale(width: int, height: int, reduce_to: int | None) -> int:
    """The DCT scale (1, 2, 4 or 8) Pillow's ``draft`` picks for :func:`_draft_request`:
    the largest whose output keeps each side at least the size asked for.

    Examples
    --------
    >>> _draft_scale(2048, 1536, 512), _draft_scale(2048, 1536, 600), _draft_scale(640, 480, None)
    (4, 2, 1)
    """
    request = _draft_request(width, height, reduce_to)
    if request is None:
        return 1
    fits = min(width // request[0], height // request[1])
    return next(scale for scale in _DRAFT_SCALES if fits >= scale or scale == 1)


def _read_pillow(
    fp: IO[bytes], fmt: str, path: Any, max_pixels: int | None, reduce_to: int | None
) -> tuple[np.ndarray, dict[str, Any]]:
    if fmt == "webp":  # Pillow's WebP open allocates the canvas: check the header first
        header = webp_header(fp)
        _check_pixels(header["width"], header["height"], max_pixels, path)
    im = open_pillow(fp, fmt, path)
    width, height = im.size
    _check_pixels(width, height, max_pixels, path)
    pillow_layout(im, fmt)  # refuses unsupported modes before decoding
    info: dict[str, Any] = {
        "width": width,
        "height": height,
        "orientation": exif_orientation(im.info.get("exif")),
    }
    if fmt == "jpeg" and reduce_to is not None:
        info["draft_scale"] = _draft(im, reduce_to)
    if fmt == "png" and im.tile and im.tile[0].args in PNG16_RAWMODES:
        data = _decode_png16(fp, (height, width, PNG16_RAWMODES[im.tile[0].args]))
        data = _add_key_alpha(data, im.info.get("transparency"), 65535)
    else:
        im.load()
        data = _pillow_array(im)
    info["frames"] = count_frames(im)
    return data, info


def _decode_png16(fp: IO[bytes], shape: tuple[int, int, int]) -> np.ndarray:
    """16-bit grey+alpha, RGB or RGBA PNG by libpng, every bit kept (Pillow keeps 8)."""
    import imagecodecs

    fp.seek(0)
    data = np.asarray(imagecodecs.png_decode(fp.read()))
    if data.ndim == 2:
        data = data[:, :, None]
    if data.shape != shape or data.dtype != np.uint16:
        raise BadInputError("corrupt", f"16-bit PNG decoded to {data.shape} {data.dtype}, "
                            f"its header says {shape} uint16")
    return data


def _draft(im: PILImageFile.ImageFile, reduce_to: int) -> int:
    """Ask libjpeg (through Pillow) for the smallest DCT scale whose long side is still
    >= ``reduce_to``; the scale it chose."""
    width, height = im.size
    request = _draft_request(width, height, reduce_to)
    if request is None:
        return 1
    im.draft(None, request)
    for scale in _DRAFT_SCALES:
        if im.size == (-(-width // scale), -(-height // scale)):
            return scale
    return 1


def _pillow_array(im: PILImage.Image) -> np.ndarray:
    mode = im.mode
    transparency = im.info.get("transparency")
    if mode == "1":
        return np.array(im, dtype=np.uint8)[:, :, None] * np.uint8(255)
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if mode == "PA" or transparency is not None else "RGB")
    elif mode == "La":
        im = im.convert("LA")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    elif mode in ("RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    data = np.array(im)
    if mode.startswith("I;16"):
        data = data.astype(np.uint16, copy=False)
    if data.ndim == 2:
        data = data[:, :, None]
    if mode in ("L", "RGB", "I;16", "I;16B", "I;16L", "I;16N"):
        maximum = 65535 if data.dtype == np.uint16 else 255
        data = _add_key_alpha(data, transparency, maximum)
    return data


def _add_key_alpha(data: np.ndarray, key: Any, maximum: int) -> np.ndarray:
    """Add an alpha channel for a colour-key transparency (PNG ``tRNS`` on grey/RGB)."""
    if key is None or isinstance(key, bytes) or data.shape[2] not in (1, 3):
        return data
    values = np.atleast_1d(np.asarray(key, dtype=np.int64))
    if values.size != data.shape[2]:
        return data
    transparent = np.all(data == values.astype(data.dtype), axis=2, keepdims=True)
    alpha = np.where(transparent, 0, maximum).astype(data.dtype)
    return np.concatenate([data, alpha], axis=2)


def _read_tiff(
    fp: IO[bytes], path: Any, max_pixels: int | None, size_bytes: int
) -> tuple[np.ndarray, dict[str, Any]]:
    import tifffile

    with tifffile.TiffFile(fp) as tif:
        header = tiff_layout(tif)
        _check_pixels(header["width"], header["height"], max_pixels, path)
        page = tif.pages.first
        nbytes = int(np.prod(page.shape)) * np.dtype(header["source_dtype"]).itemsize
        _check_tiff_bytes(nbytes, max_pixels, path)
        _check_tiff_extent(page, size_bytes, path)
        try:
            raw = page.asarray(maxworkers=1)
        except (KeyError, ValueError) as exc:  # "<COMPRESSION.LZW: 5> requires imagecodecs"
            if "imagecodecs" not in str(exc):
                raise
            return _tiff_via_pillow(fp, path, header, str(exc)), header
        data = _tiff_to_yxc(np.asarray(raw), header, page)
    return data, header


def _tiff_via_pillow(fp: IO[bytes], path: Any, header: dict[str, Any], reason: str) -> np.ndarray:
    """Decode a TIFF whose codec tifffile and imagecodecs lack with Pillow (libtiff).

    The general fallback: Pillow decodes libtiff's codecs for 8-bit layouts and 16-bit
    grey; anything else stays ``unsupported_codec``.
    """
    from PIL import TiffImagePlugin

    try:
        fp.seek(0)
        im = TiffImagePlugin.TiffImageFile(fp, str(path))
        if im.size != (header["width"], header["height"]):
            raise ValueError(f"Pillow sees size {im.size}")
        im.load()
        data = _pillow_array(im)
    except Exception as exc:
        logger.debug("Pillow fallback failed for %s", path, exc_info=True)
        raise BadInputError(
            "unsupported_codec", f"{path}: {reason}; Pillow cannot decode it either"
        ) from exc
    if data.shape[2] != header["channels"] or data.dtype.name != header["dtype"]:
        raise BadInputError(
            "unsupported_codec",
            f"{path}: {reason}; Pillow decodes it as {data.shape[2]} x {data.dtype} instead of "
            f"{header['channels']} x {header['dtype']}",
        )
    logger.debug("%s decoded by Pillow: %s", path, reason)
    return data


def _check_tiff_extent(page: Any, size_bytes: int, path: Any) -> None:
    """Refuse a page whose strips or tiles lie past the end of the file (truncated)."""
    offsets = page.dataoffsets
    counts = page.databytecounts
    if not offsets:
        raise BadInputError("corrupt", f"{path}: TIFF page without image data")
    for offset, count in zip(offsets, counts, strict=False):
        if offset + count > size_bytes:
            raise BadInputError(
                "truncated",
                f"{path}: TIFF data at bytes {offset}..{offset + count} lies past the end "
                f"of the {size_bytes}-byte file",
            )
    if int(page.compression) == 1 and any(count == 0 for count in counts):
        raise BadInputError("corrupt", f"{path}: uncompressed TIFF strip of zero bytes")


def _tiff_to_yxc(raw: np.ndarray, header: dict[str, Any], page: Any) -> np.ndarray:
    axes = list(header["axes"])
    if raw.ndim != len(axes):
        raise BadInputError("corrupt", f"TIFF page decoded to shape {raw.shape}, axes {axes}")
    for index in reversed(range(len(axes))):
        if axes[index] not in "YXS":
            raw = raw[(slice(None),) * index + (0,)]
            del axes[index]
    order = [axes.index("Y"), axes.index("X")] + ([axes.index("S")] if "S" in axes else [])
    data = raw.transpose(order)
    if data.ndim == 2:
        data = data[:, :, None]
    photometric = header["photometric"]
    if data.dtype == np.bool_:
        if photometric == _MINISWHITE:
            data = ~data
        return np.ascontiguousarray(data, dtype=np.uint8) * np.uint8(255)
    if photometric == _MINISWHITE:
        data = data.copy()
        if np.issubdtype(data.dtype, np.integer):
            bits = min(int(page.bitspersample), data.dtype.itemsize * 8)
            maximum = np.iinfo(data.dtype).max if bits >= 31 else (1 << bits) - 1
            data[..., 0] = maximum - data[..., 0]
        else:
            data[..., 0] = 1 - data[..., 0]
    elif photometric == _PALETTE:
        colormap = np.asarray(page.colormap)
        rgb = np.moveaxis(colormap[:, data[..., 0]], 0, -1)
        if header["dtype"] == "uint8":
            rgb = rgb if colormap.max() <= 255 else rgb // 257
        data = rgb.astype(header["dtype"])
    elif photometric == _SEPARATED:
        data = _cmyk_to_rgb(data)
    elif photometric in (CIELAB, ICCLAB):
        tag = page.tags.get(_WHITEPOINT_TAG)
        data = lab_to_rgb(data, photometric, tag.value if tag is not None else None)
    if photometric in (_MINISWHITE, _MINISBLACK, _RGB) and data.dtype == np.uint8:
        data = _scale_to_eight_bits(data, int(page.bitspersample))
    return np.ascontiguousarray(data)


def _scale_to_eight_bits(data: np.ndarray, bits: int) -> np.ndarray:
    """2- to 7-bit samples scaled to 0..255 (x85 for 2 bits, x17 for 4), as Pillow reads
    them; 9- to 15-bit samples stay as stored in 16 bits, as Pillow and a 16-bit container
    keep them."""
    if not 1 < bits < 8:
        return data
    top = (1 << bits) - 1
    return ((data.astype(np.uint16) * 255 + top // 2) // top).astype(np.uint8)


def _cmyk_to_rgb(data: np.ndarray) -> np.ndarray:
    """Naive CMYK -> RGB (no colour management), extra samples kept."""
    integer = np.issubdtype(data.dtype, np.integer)
    maximum = float(np.iinfo(data.dtype).max) if integer else 1.0
    cmy = data[..., :3].astype(np.float32)
    k = data[..., 3:4].astype(np.float32)
    rgb = (maximum - cmy) * (maximum - k) / maximum
    if np.issubdtype(data.dtype, np.integer):
        rgb = np.rint(rgb)
    return np.concatenate([rgb.astype(data.dtype), data[..., 4:]], axis=2)


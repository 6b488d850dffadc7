"""Header probing: an image's size, layout and orientation without decoding a pixel.

:func:`probe_header` is what the scanner and the memory model call for every item
before anything is scheduled, so it must stay cheap and safe on hostile files: it
recognises the format by content, then reads only the header: for a JPEG, a walk of
its markers (:mod:`dagflow.io.jpeg_header`) and, when that cannot tell, Pillow's lazy
``open`` (no ``load``), as for the other Pillow formats; tifffile's page tags (no
``asarray``); for WebP, a small RIFF chunk walker (Pillow's WebP ``open`` would allocate
the whole canvas).

An object on a store (``s3://``, any fsspec URL: :mod:`dagflow.io.storage`) is probed the
same way through ranged reads: one request for its first ``dagflow.storage.probe-bytes``
(64 KiB), whose answer on S3 also gives the object's size (elsewhere a request for its
size comes first), and more only where the header lies further in (a TIFF whose tags
follow its pixels); the object is never fetched whole (but for a GIF, whose frames are
counted by walking its blocks).

This module owns the header readers shared with :mod:`dagflow.io.read`
(:func:`open_source`, :func:`open_pillow`, :func:`pillow_layout`, :func:`tiff_layout`,
:func:`webp_header`); it never decodes pixels.
"""

from __future__ import annotations

import logging
import os
import stat
import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from os import PathLike
from typing import IO, Any

import numpy as np
from PIL import BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin, WebPImagePlugin
from PIL import Image as PILImage
from PIL import ImageFile as PILImageFile

from dagflow.exceptions import BadInputError
from dagflow.io.errors import decoder_errors, os_error
from dagflow.io.formats import SNIFF_BYTES, format_from_suffix, sniff_format
from dagflow.io.jpeg_header import jpeg_header
from dagflow.io.orient import exif_orientation

__all__ = [
    "count_frames",
    "open_pillow",
    "open_source",
    "pillow_layout",
    "probe_header",
    "read_header",
    "tiff_layout",
    "webp_header",
]

logger = logging.getLogger(__name__)



class _JpegFile(JpegImagePlugin.JpegImageFile):
    """Pillow's JPEG reader without its parse of EXIF for DPI at ``open``.

    dagflow needs no DPI, and Pillow's EXIF parser warns (``UserWarning: Corrupt EXIF
    data``) on the broken EXIF blocks real cameras and editors produce; the orientation
    is read by :func:`dagflow.io.orient.exif_orientation` instead.
    """

    def _read_dpi_from_exif(self) -> None:
        return None


_PILLOW_CLASSES: dict[str, type[PILImageFile.ImageFile]] = {
    "jpeg": _JpegFile,
    "png": PngImagePlugin.PngImageFile,
    "gif": GifImagePlugin.GifImageFile,
    "webp": WebPImagePlugin.WebPImageFile,
    "bmp": BmpImagePlugin.BmpImageFile,
}

#: Pillow mode -> (channels, dtype) of the array :func:`dagflow.io.read_image` returns.
_PILLOW_MODES: dict[str, tuple[int, str]] = {
    "1": (1, "uint8"),
    "L": (1, "uint8"),
    "LA": (2, "uint8"),
    "La": (2, "uint8"),
    "P": (3, "uint8"),
    "PA": (4, "uint8"),
    "RGB": (3, "uint8"),
    "RGBX": (3, "uint8"),
    "RGBA": (4, "uint8"),
    "RGBa": (4, "uint8"),
    "CMYK": (3, "uint8"),
    "YCbCr": (3, "uint8"),
    "LAB": (3, "uint8"),
    "HSV": (3, "uint8"),
    "I;16": (1, "uint16"),
    "I;16L": (1, "uint16"),
    "I;16B": (1, "uint16"),
    "I;16N": (1, "uint16"),
    "I": (1, "int32"),
    "F": (1, "float32"),
}

#: PNG raw modes of 16-bit colour, which Pillow would reduce to 8 bits.
PNG16_RAWMODES = {"RGB;16B": 3, "RGBA;16B": 4, "LA;16B": 2}

#: Bytes read for the fast JPEG header walk (EXIF with a large thumbnail can exceed it:
#: Pillow then parses the file).
_JPEG_HEADER_BYTES = 64 * 1024

# TIFF photometric interpretations.
_MINISWHITE, _MINISBLACK, _RGB, _PALETTE, _SEPARATED, _YCBCR = 0, 1, 2, 3, 5, 6
_CIELAB, _ICCLAB = 8, 9
_TIFF_JPEG_COMPRESSIONS = {6, 7, 33007, 34892}


def probe_header(path: str | PathLike[str], *,
                 storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read an image's header: size, layout, orientation and frame count.

    Never decodes pixel data, so it is cheap on huge images and safe on decompression
    bombs; a file cut right after its header still probes.

    Parameters
    ----------
    path
        The image file, or the URL of an object (``s3://bucket/a.jpg``: read by ranged
        requests of its first kilobytes). Its format is recognised by content, not by
        suffix.
    storage_options
        For a URL: storage options over ``dagflow.storage.options``.

    Returns
    -------
    dict
        ``path`` (str), ``format`` (``jpeg``, ``png``, ``webp``, ``tiff``, ``gif``,
        ``bmp``), ``width`` and ``height`` (as stored, before EXIF orientation),
        ``channels`` and ``dtype`` / ``itemsize`` / ``bit_depth`` (of the array
        :func:`dagflow.io.read_image` returns: a palette PNG has 3 or 4 channels, a
        CMYK JPEG 3), ``orientation`` (EXIF 1..8; 1 when absent or invalid),
        ``frames`` (animation frames or TIFF pages), ``size_bytes`` and
        ``extension_mismatch`` (the suffix names another format).

    Raises
    ------
    BadInputError
        ``missing``, ``not_a_file``, ``unreadable``, ``empty_file``, ``unidentified``,
        ``truncated``, ``corrupt`` or ``unsupported_mode``.
    TransientError
        For a retryable I/O error (``EIO``, ``ETIMEDOUT``, ``ESTALE``; a throttled or
        failing store).
    StorageError
        For a URL: no such bucket, credentials missing or refused.
    """
    with open_source(path, storage_options) as (fp, fmt, size_bytes), decoder_errors(path):
        header = read_header(fp, fmt, path)
    return _finish(header, path, fmt, size_bytes)


def read_header(fp: IO[bytes], fmt: str, path: Any) -> dict[str, Any]:
    """The header fields of an open image (:func:`open_source`), without decoding it.

    Call inside :func:`dagflow.io.errors.decoder_errors`.

    Returns
    -------
    dict
        ``width``, ``height``, ``channels``, ``dtype``, ``orientation``, ``frames`` (and,
        for a TIFF, what :func:`tiff_layout` adds).
    """
    if fmt == "tiff":
        import tifffile

        with tifffile.TiffFile(fp) as tif:
            return tiff_layout(tif)
    if fmt == "webp":
        return webp_header(fp)
    if fmt == "jpeg" and (fast := jpeg_header(fp.read(_JPEG_HEADER_BYTES))) is not None:
        return fast
    im = open_pillow(fp, fmt, path)
    channels, dtype = pillow_layout(im, fmt)
    return {
        "width": im.size[0],
        "height": im.size[1],
        "channels": channels,
        "dtype": dtype,
        "orientation": exif_orientation(im.info.get("exif")),
        "frames": count_frames(im),
    }


def _finish(header: dict[str, Any], path: Any, fmt: str, size_bytes: int) -> dict[str, Any]:
    itemsize = np.dtype(header["dtype"]).itemsize
    suffix_format = format_from_suffix(path)
    return {
        "path": str(path),
        "format": fmt,
        "width": int(header["width"]),
        "height": int(header["height"]),
        "channels": int(header["channels"]),
        "dtype": str(header["dtype"]),
        "itemsize": itemsize,
        "bit_depth": itemsize * 8,
        "orientation": int(header["orientation"]),
        "frames": int(header["frames"]),
        "size_bytes": int(size_bytes),
        "extension_mismatch": suffix_format is not None and suffix_format != fmt,
    }


@contextmanager
def open_source(path: str | PathLike[str], storage_options: Mapping[str, Any] | None = None,
                *, whole_up_to: int = 0) -> Iterator[tuple[IO[bytes], str, int]]:
    """Open an image file or object for reading and recognise its format by content.

    Parameters
    ----------
    path
        The file, or an object's URL (any fsspec protocol; ``file://`` is a local file).
    storage_options
        For a URL: storage options over ``dagflow.storage.options``.
    whole_up_to
        For a URL: an object listed (:func:`dagflow.io.storage.listed_size`) at no more
        than this many bytes is fetched whole by the first request (for a caller that
        reads it all: one request instead of a header's, then the rest's).

    Yields
    ------
    (file, format, size_bytes)
        A binary file positioned at 0, the sniffed format and the file size. For a URL
        the file is a :class:`dagflow.io.storage.RangedFile`: reads are ranged
        requests, and only its first block (or, up to ``whole_up_to`` bytes, all of it)
        has been fetched.

    Raises
    ------
    BadInputError
        ``missing``, ``not_a_file``, ``unreadable``, ``empty_file`` or ``unidentified``.
    TransientError
        For a retryable I/O error.
    StorageError
        For a URL: no such bucket, credentials missing or refused.
    """
    from dagflow.io import storage

    if storage.is_remote(path):
        with _open_object(os.fspath(path), storage_options, whole_up_to) as opened:
            yield opened
        return
    path = storage.as_local(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise os_error(exc, path) from exc
    if not stat.S_ISREG(st.st_mode):  # before opening: a FIFO would block
        raise BadInputError("not_a_file", f"{path} is not a regular file")
    if st.st_size == 0:
        raise BadInputError("empty_file", f"{path} is empty (0 bytes)")
    try:
        fp = open(path, "rb")  # noqa: SIM115 - closed below, after the caller's block
    except OSError as exc:
        raise os_error(exc, path) from exc
    with fp:
        try:
            head = fp.read(SNIFF_BYTES)
            fp.seek(0)
        except OSError as exc:
            raise os_error(exc, path) from exc
        yield fp, _sniff(head, path), st.st_size


def _sniff(head: bytes, path: Any) -> str:
    fmt = sniff_format(head)
    if fmt is None:
        raise BadInputError(
            "unidentified",
            f"{path}: content is not a JPEG, PNG, WebP, TIFF, GIF or BMP image "
            f"(starts with {head[:8]!r})",
        )
    return fmt


@contextmanager
def _open_object(url: str, storage_options: Mapping[str, Any] | None, whole_up_to: int = 0
                 ) -> Iterator[tuple[IO[bytes], str, int]]:
    from dagflow import config
    from dagflow.io import storage
    from dagflow.io.redact import redact_url

    block = int(config.get("storage.probe-bytes", storage.DEFAULT_PROBE_BYTES))
    listed = storage.listed(url)
    if listed is not None and listed <= whole_up_to:
        block = max(block, listed)  # small, as listed: the first request fetches it all
    head, st = storage.read_first(url, block, storage_options)
    if st.size == 0:
        raise BadInputError("empty_file", f"{redact_url(url)} is empty (0 bytes)")
    fs, inner = storage.filesystem(url, storage_options)
    with storage.RangedFile(fs, inner, st.size, url, block_size=block, head=head) as fp:
        head = fp.read(SNIFF_BYTES)
        fp.seek(0)
        yield fp, _sniff(head, redact_url(url)), st.size


def open_pillow(fp: IO[bytes], fmt: str, path: Any) -> PILImageFile.ImageFile:
    """Parse the header of a Pillow-read format, without Pillow's global pixel limit.

    The plugin class is called directly rather than through ``PIL.Image.open``: the
    format is already known from the content, and dagflow applies its own per-call
    pixel limit instead of Pillow's process-wide ``MAX_IMAGE_PIXELS`` (whose warning
    would otherwise escape). Call inside :func:`dagflow.io.errors.decoder_errors`.

    Parameters
    ----------
    fp
        The open file, at position 0.
    fmt
        ``jpeg``, ``png``, ``gif``, ``webp`` or ``bmp``.
    path
        The file name, for Pillow's messages.

    Returns
    -------
    PIL.ImageFile.ImageFile
        The lazily opened image (pixels not decoded).
    """
    fp.seek(0)
    return _PILLOW_CLASSES[fmt](fp, os.fspath(path))


def pillow_layout(im: PILImage.Image, fmt: str) -> tuple[int, str]:
    """``(channels, dtype)`` that the reader produces from a lazily opened Pillow image.

    Raises
    ------
    BadInputError
        ``unsupported_mode`` for a Pillow mode dagflow does not convert.
    """
    if fmt == "png":
        rawmode = _png_rawmode(im)
        if rawmode in PNG16_RAWMODES:
            return PNG16_RAWMODES[rawmode], "uint16"
    layout = _PILLOW_MODES.get(im.mode)
    if layout is None:
        raise BadInputError("unsupported_mode", f"{fmt} image with Pillow mode {im.mode!r}")
    channels, dtype = layout
    if "transparency" in im.info and im.mode in ("P", "L", "RGB", "I;16"):
        channels = {"P": 4, "L": 2, "RGB": 4, "I;16": 2}[im.mode]
    return channels, dtype


def _png_rawmode(im: PILImage.Image) -> str | None:
    tile = getattr(im, "tile", None)
    if not tile:
        return None
    args = tile[0].args
    return args if isinstance(args, str) else None


def count_frames(im: PILImage.Image) -> int:
    """Frames of an animation, counted by walking block headers (no pixel decoding)."""
    try:
        return int(getattr(im, "n_frames", 1) or 1)
    except Exception:  # a broken later frame: the first one may still be readable
        logger.debug("could not count frames of %s", getattr(im, "filename", "?"), exc_info=True)
        return 1


def tiff_layout(tif: Any) -> dict[str, Any]:
    """Size, layout and orientation of the first page of an open ``tifffile.TiffFile``.

    Returns
    -------
    dict
        ``width``, ``height``, ``channels``, ``dtype`` (of the array the reader returns),
        ``orientation``, ``frames`` (pages), and ``samples`` / ``axes`` / ``photometric``
        / ``source_dtype`` for the reader.

    Raises
    ------
    BadInputError
        ``unsupported_mode`` for layouts dagflow does not read (volumes, YCbCr without
        JPEG, Lab...), ``corrupt`` for a file without pages.
    """
    if len(tif.pages) == 0:
        raise BadInputError("corrupt", "TIFF without any image page")
    page = tif.pages.first
    axes = page.axes
    shape = page.shape
    sizes = dict(zip(axes, shape, strict=False))
    extra = {ax: n for ax, n in sizes.items() if ax not in "YXS" and n != 1}
    if "Y" not in sizes or "X" not in sizes or extra:
        raise BadInputError("unsupported_mode", f"TIFF page with axes {axes} and shape {shape}")
    dtype = page.dtype
    if dtype is None:
        raise BadInputError(
            "unsupported_mode", f"TIFF with {page.bitspersample} bits per sample is not read"
        )
    dtype = np.dtype(dtype)
    samples = int(sizes.get("S", 1))
    photometric = int(page.photometric)
    channels = samples
    out_dtype = np.dtype(np.uint8) if dtype == np.bool_ else dtype
    if photometric == _PALETTE:
        channels = 3
        out_dtype = np.dtype(np.uint8) if _palette_is_8bit(page) else np.dtype(np.uint16)
    elif photometric == _SEPARATED:
        if samples < 4:
            raise BadInputError("unsupported_mode", f"separated TIFF with {samples} samples")
        channels = samples - 1  # CMYK -> RGB, extra samples kept
    elif photometric == _YCBCR and int(page.compression) not in _TIFF_JPEG_COMPRESSIONS:
        raise BadInputError("unsupported_mode", "YCbCr TIFF without JPEG compression")
    elif photometric in (_CIELAB, _ICCLAB) and (samples < 3 or dtype not in (np.uint8,
                                                                             np.uint16)):
        raise BadInputError("unsupported_mode", f"L*a*b* TIFF with {samples} samples of "
                            f"{dtype}")
    elif photometric not in (_MINISWHITE, _MINISBLACK, _RGB, _YCBCR, _CIELAB, _ICCLAB):
        raise BadInputError("unsupported_mode", f"TIFF photometric interpretation {photometric}")
    tag = page.tags.get(274)
    orientation = int(tag.value) if tag is not None and isinstance(tag.value, int) else 1
    return {
        "width": int(sizes["X"]),
        "height": int(sizes["Y"]),
        "channels": channels,
        "dtype": out_dtype.name,
        "orientation": orientation if 1 <= orientation <= 8 else 1,
        "frames": len(tif.pages),
        "samples": samples,
        "axes": axes,
        "photometric": photometric,
        "source_dtype": dtype.name,
    }


def _palette_is_8bit(page: Any) -> bool:
    colormap = page.colormap
    if colormap is None:
        raise BadInputError("corrupt", "palette TIFF without a colour map")
    colormap = np.asarray(colormap)
    return bool(colormap.max() <= 255 or np.all(colormap % 257 == 0))


def webp_header(fp: IO[bytes]) -> dict[str, Any]:
    """Size, alpha, frames and orientation of a WebP file from its RIFF chunk headers.

    Pillow's WebP ``open`` reads the whole file and allocates the canvas; this walks the
    chunk headers instead and reads only the ``VP8``/``VP8L``/``VP8X`` and ``EXIF``
    payloads.

    Raises
    ------
    BadInputError
        ``truncated`` or ``corrupt`` when the chunk structure is broken.
    """
    fp.seek(0)
    riff = fp.read(12)
    if len(riff) < 12:
        raise BadInputError("truncated", "WebP file shorter than its RIFF header")
    (riff_size,) = struct.unpack("<I", riff[4:8])
    end = 8 + riff_size
    width = height = 0
    alpha = False
    frames = 0
    exif: bytes | None = None
    position = 12
    first = True
    for _ in range(1_000_000):
        fp.seek(position)
        chunk = fp.read(8)
        if len(chunk) < 8:
            break
        fourcc, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if first:
            width, height, alpha = _webp_first_chunk(fourcc, fp.read(min(size, 30)))
            first = False
        elif fourcc == b"ALPH":
            alpha = True
        elif fourcc == b"ANMF":
            frames += 1
        elif fourcc == b"EXIF" and exif is None:
            exif = fp.read(min(size, 1 << 20))
        position += 8 + size + (size & 1)
        if position >= end:
            break
    if first:
        raise BadInputError("truncated", "WebP file without an image chunk")
    if width <= 0 or height <= 0:
        raise BadInputError("corrupt", "WebP header declares an empty image")
    return {
        "width": width,
        "height": height,
        "channels": 4 if alpha else 3,
        "dtype": "uint8",
        "orientation": exif_orientation(exif),
        "frames": max(frames, 1),
    }


def _webp_first_chunk(fourcc: bytes, payload: bytes) -> tuple[int, int, bool]:
    if fourcc == b"VP8X" and len(payload) >= 10:
        flags = payload[0]
        width = 1 + int.from_bytes(payload[4:7], "little")
        height = 1 + int.from_bytes(payload[7:10], "little")
        return width, height, bool(flags & 0x10)
    if fourcc == b"VP8L" and len(payload) >= 5 and payload[0] == 0x2F:
        bits = int.from_bytes(payload[1:5], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF), bool((bits >> 28) & 1)
    if fourcc == b"VP8 " and len(payload) >= 10 and payload[3:6] == b"\x9d\x01\x2a":
        width = int.from_bytes(payload[6:8], "little") & 0x3FFF
        height = int.from_bytes(payload[8:10], "little") & 0x3FFF
        return width, height, False
    if len(payload) < 10:
        raise BadInputError("truncated", f"WebP {fourcc!r} chunk is cut short")
    raise BadInputError("corrupt", f"WebP file starts with an unknown chunk {fourcc!r}")


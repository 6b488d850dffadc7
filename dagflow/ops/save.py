"""The ``save`` sink op: write one image to the run's output directory.

Declares the output formats and their parameters and checks the combinations; encoding
and the atomic write belong to :func:`dagflow.io.write_image`, imported only when an image
is written. A large image processed tiled is written as a tiled BigTIFF, band by band
(:func:`dagflow.tiled.write_tiff`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagflow.image import Image
from dagflow.ops._common import decoded_bytes, plane_pixels
from dagflow.ops.naming import DEFAULT_NAME, FIELDS, check_name, check_subdir
from dagflow.ops.registry import Param, register_op
from dagflow.ops.tiling import sink

__all__ = ["FORMATS", "SUFFIXES", "save", "suffix"]

#: File suffix per output format.
SUFFIXES = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "tiff": ".tif"}
FORMATS = tuple(SUFFIXES)

#: Compression schemes accepted for TIFF (PNG takes a zlib level 0-9 instead).
TIFF_COMPRESSIONS = ("none", "lzw", "zlib", "deflate", "zstd", "lzma", "packbits", "jpeg")


def suffix(params: Mapping[str, Any]) -> str:
    """The file suffix for ``params["format"]`` (``.jpg``, ``.png``, ``.webp``, ``.tif``)."""
    return SUFFIXES[params.get("format", "jpeg")]


def _check(params: Mapping[str, Any]) -> list[str]:
    problems = []
    fmt = params["format"]
    compression = params.get("compression")
    if compression is not None:
        if fmt == "tiff":
            if compression not in TIFF_COMPRESSIONS:
                problems.append(f"parameter 'compression': for tiff, expected one of "
                                f"{', '.join(map(repr, TIFF_COMPRESSIONS))}, got {compression!r}")
        elif fmt == "png":
            if isinstance(compression, bool) or not isinstance(compression, int) \
                    or not 0 <= compression <= 9:
                problems.append("parameter 'compression': for png, expected a zlib level "
                                f"0-9, got {compression!r}")
        else:
            problems.append(f"parameter 'compression' applies to tiff and png only, "
                            f"not to format {fmt!r}")
    if params.get("lossless") and fmt != "webp":
        problems.append(f"parameter 'lossless' applies to webp only (format {fmt!r} is "
                        "always lossless or always lossy)")
    tile = params.get("tile")
    if tile is not None:
        if fmt != "tiff":
            problems.append(f"parameter 'tile' applies to tiff only, not to format {fmt!r}")
        elif (len(tile) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                        and v > 0 and v % 16 == 0 for v in tile)):
            problems.append(f"parameter 'tile': expected [width, height], positive "
                            f"multiples of 16, got {tile!r}")
    problems.extend(check_subdir(params.get("subdir")))
    problems.extend(check_name(params.get("name")))
    return problems


def _write_tiled(image: Any, dest: str, *, client: Any = None, band_bytes: int = 64 * 2**20,
                 format: str = "tiff", compression: str | int | None = None,
                 tile: list[int] | None = None, **params: Any) -> str:
    from dagflow.tiled import write_tiff

    th, tw = (int(tile[1]), int(tile[0])) if tile else (256, 256)
    return write_tiff(image, dest + SUFFIXES[format], tile=(th, tw), compression=compression,
                      client=client, band_bytes=band_bytes)


def _tiled_tiff_only(params: Mapping[str, Any], dtype: Any) -> str | None:
    if params.get("format") == "tiff":
        return None
    return "the last node must save with format: tiff"


def _memory(header: Mapping[str, Any], params: Mapping[str, Any]) -> float:
    decoded = decoded_bytes(header)
    # 16-bit to JPEG/WebP makes an 8-bit copy; the encoder buffers about one more copy.
    extra = 0
    if header.get("itemsize", 1) > 1 and params.get("format") in ("jpeg", "webp"):
        extra = plane_pixels(header) * header.get("channels", 3)
    return decoded * 2 + extra


@register_op(
    "save",
    kind="sink",
    params=[
        Param("format", str, "jpeg", "output format", choices=FORMATS),
        Param("quality", int, 90, "JPEG/WebP quality", minimum=1, maximum=100),
        Param("compression", (str, int), None, "tiff: scheme name; png: zlib level 0-9",
              nullable=True),
        Param("lossless", bool, False, "lossless WebP"),
        Param("subdir", str, None, "relative sub-directory of the output directory for "
              "this node's files", nullable=True),
        Param("name", str, DEFAULT_NAME, "each output's name without its suffix, a "
              "template over the input's path: " + ", ".join(f"{{{f}}}" for f in FIELDS)
              + " (e.g. '{rel}_{ext}' keeps x.jpg and x.png apart)"),
        Param("tile", (list, tuple), None, "TIFF tile size [width, height], multiples of 16",
              minimum=16, nullable=True),
    ],
    memory=_memory,
    check=_check,
    suffix=suffix,
    tiling=sink(_write_tiled, why_not=_tiled_tiff_only),
)
def save(
    image: Image,
    dest: str,
    *,
    format: str = "jpeg",
    quality: int = 90,
    compression: str | int | None = None,
    lossless: bool = False,
    subdir: str | None = None,
    name: str = DEFAULT_NAME,
    tile: list[int] | None = None,
) -> str:
    """Write the image as JPEG, PNG, WebP or TIFF, atomically.

    Parameters
    ----------
    image
        The image to write. 16-bit images are scaled to 8-bit for JPEG and WebP.
    dest
        The output path without suffix, already made safe by the runtime; the runtime
        has also applied ``subdir`` and ``name`` to it (see :mod:`dagflow.ops.naming`), so
        this function only validates them.
    format, quality, compression, lossless, tile
        Encoder settings, passed to :func:`dagflow.io.write_image`.
    subdir
        The sub-directory of the output directory for this node's files.
    name
        The template of each output's name (:data:`dagflow.ops.naming.FIELDS`).

    Returns
    -------
    str
        The path written: ``dest`` plus the format's suffix.
    """
    from dagflow.io import write_image

    path = dest + SUFFIXES[format]  # missing directories are made by the atomic write
    write_image(image, path, format=format, quality=quality, compression=compression,
                lossless=lossless, tile=tile)
    return path

"""The ``load`` source op: decode one input file into an :class:`~dagflow.image.Image`.

This module is a thin declaration over :func:`dagflow.io.read_image`, which owns the
decoding (pixel limit, EXIF auto-orientation applied once, JPEG draft decoding), and
over :func:`dagflow.io.lazy.open_image`, which opens a large TIFF lazily for the tiled
path. It holds no codec logic of its own; :mod:`dagflow.io` is imported only when an
image is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from dagflow.image import Image
from dagflow.ops._common import decoded_bytes
from dagflow.ops.registry import Param, register_op
from dagflow.ops.tiling import source

__all__ = ["draft_scale", "load"]

#: Peak working set of a decode relative to the decoded bytes: the codec's buffer plus
#: the array handed to the workflow.
_DECODE_FACTOR = 2.0


def draft_scale(width: int, height: int, reduce_to: int | None) -> int:
    """The JPEG draft reduction (1, 2, 4 or 8) that keeps the long side >= ``reduce_to``.

    Examples
    --------
    >>> draft_scale(4000, 3000, 512)
    4
    >>> draft_scale(4000, 3000, None)
    1
    """
    if not reduce_to:
        return 1
    long_side = max(width, height)
    scale = 1
    while scale < 8 and math.ceil(long_side / (scale * 2)) >= reduce_to:
        scale *= 2
    return scale


def _output(header: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Turned upright (when auto-orienting), then reduced as the JPEG draft decodes."""
    w, h = header["width"], header["height"]
    orientation = int(header.get("orientation") or 1)
    if params.get("auto_orient", True) and orientation in (5, 6, 7, 8):
        w, h = h, w
    if str(header.get("format") or "").lower() in ("jpeg", "jpg") and params.get("reduce_to"):
        scale = draft_scale(w, h, params.get("reduce_to"))
        w, h = -(-w // scale), -(-h // scale)
    return {"width": w, "height": h, "orientation": 1}


def _open_lazy(path: str, chunks: Any, *, auto_orient: bool = True, **params: Any) -> Any:
    from dagflow.io.lazy import open_image

    return open_image(path, chunks, auto_orient=auto_orient)


def _memory(header: Mapping[str, Any], params: Mapping[str, Any]) -> float:
    scale = 1
    if str(header.get("format", "")).lower() in ("jpeg", "jpg"):
        scale = draft_scale(header.get("width", 0), header.get("height", 0),
                            params.get("reduce_to"))
    return decoded_bytes(header) * _DECODE_FACTOR / (scale * scale)


@register_op(
    "load",
    kind="source",
    params=[
        Param("auto_orient", bool, True, "apply the EXIF orientation once, then set it to 1"),
        Param("max_pixels", int, None, "refuse images with more pixels than this; "
              "null = the configured default", minimum=1, nullable=True),
        Param("reduce_to", int, None, "decode at reduced scale keeping at least this long "
              "side; set automatically when a resize follows", minimum=1, nullable=True),
    ],
    memory=_memory,
    output=_output,
    tiling=source(_open_lazy),
)
def load(
    path: str,
    *,
    auto_orient: bool = True,
    max_pixels: int | None = 200_000_000,
    reduce_to: int | None = None,
) -> Image:
    """Read an image file into (y, x, c) pixels with its metadata.

    Parameters
    ----------
    path
        The input file.
    auto_orient
        Rotate/flip according to the EXIF orientation (once; ``meta["orientation"]``
        becomes 1 and the original is kept in ``meta["source_orientation"]``).
    max_pixels
        The decompression-bomb limit; ``None`` leaves it to :mod:`dagflow.io`.
    reduce_to
        Decode JPEGs at 1/2, 1/4 or 1/8 scale when the long side stays at least this.

    Returns
    -------
    Image
        The decoded image in its native dtype (8- or 16-bit, or float).

    Raises
    ------
    BadInputError
        A corrupt, truncated, unsupported or oversize file (from :mod:`dagflow.io`).
    """
    from dagflow.io import read_image

    return read_image(path, auto_orient=auto_orient, max_pixels=max_pixels,
                      reduce_to=reduce_to)

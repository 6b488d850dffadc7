"""Geometry ops: ``resize``, ``crop``, ``rotate`` and ``flip``.

Each op is a thin wrapper over a pure function on a ``(y, x, c)`` array
(:func:`resize_array`, with a cupy implementation in :mod:`dagflow.ops.gpu`,
:func:`crop_array`, :func:`rotate_array`, :func:`flip_array`) plus the size arithmetic the
planner needs before decoding (:func:`resize_shape`, :func:`crop_box`), which each op's
declaration turns into the header it produces. Geometry moves every channel, alpha
included. Dtypes are kept.

Tiled, each op builds its result on the dask array itself: ``crop`` and ``flip`` slice,
``rotate`` turns by multiples of 90 degrees, ``resize`` resamples block by block
(:func:`dagflow.ops._tiled_resize.resize_lazy`).

This module imports no I/O, and Dask only to build a tiled result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image as PILImage
from scipy import ndimage, special

from dagflow.exceptions import BadInputError
from dagflow.image import Image
from dagflow.ops._common import (
    ALPHA_SPACES,
    decoded_bytes,
    dtype_max,
    from_float,
    has_alpha,
    level_to_dtype,
    plane_pixels,
)
from dagflow.ops.backends import CUPY, array_function, common_backends
from dagflow.ops.registry import Param, register_op
from dagflow.ops.tiling import lazy

__all__ = [
    "crop",
    "crop_array",
    "crop_box",
    "flip",
    "flip_array",
    "resize",
    "resize_array",
    "resize_shape",
    "rotate",
    "rotate_array",
]

_PIL_UINT8_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
_ORDERS = {"nearest": 0, "bilinear": 1, "bicubic": 3}

# --------------------------------------------------------------------------- resize


def resize_shape(
    width: int,
    height: int,
    *,
    long_side: int | None = None,
    size: Sequence[int] | None = None,
    scale: float | None = None,
    allow_upscale: bool = False,
) -> tuple[int, int]:
    """The output ``(width, height)`` of ``resize`` for an input of ``width`` x ``height``.

    Exactly one of ``long_side``, ``size`` and ``scale`` is given. ``long_side`` keeps the
    aspect ratio and never enlarges unless ``allow_upscale``: an image already at most
    ``long_side`` keeps its size. ``size`` is exact. ``scale`` multiplies both sides
    (rounded, at least 1 pixel).

    Examples
    --------
    >>> resize_shape(4000, 3000, long_side=1000)
    (1000, 750)
    >>> resize_shape(400, 300, long_side=1000)
    (400, 300)
    >>> resize_shape(400, 300, scale=0.5)
    (200, 150)
    """
    if size is not None:
        return int(size[0]), int(size[1])
    if long_side is not None:
        current = max(width, height)
        if current <= long_side and not allow_upscale:
            return width, height
        factor = long_side / current
        if width >= height:
            return int(long_side), max(1, round(height * factor))
        return max(1, round(width * factor)), int(long_side)
    if scale is not None:
        return max(1, round(width * scale)), max(1, round(height * scale))
    raise ValueError("resize_shape needs one of long_side, size or scale")


def _pil_resize(channel_img: PILImage.Image, width: int, height: int,
                reducing_gap: float | None) -> PILImage.Image:
    return channel_img.resize((width, height), PILImage.Resampling.LANCZOS,
                              reducing_gap=reducing_gap)


@array_function(lazy=CUPY)
def resize_array(
    arr: np.ndarray,
    width: int,
    height: int,
    *,
    alpha: bool = False,
    reducing_gap: float | None = 2.0,
) -> np.ndarray:
    """Resample ``arr`` (y, x, c) to ``height`` x ``width`` with an antialiased Lanczos filter.

    8-bit images with 1-4 channels go through Pillow's native modes (fast); other dtypes
    are resampled per channel in 32-bit float (Pillow mode ``F``) and rounded back. With
    ``alpha`` the colour is premultiplied by the last (alpha) channel while resampling, as
    Pillow does for ``RGBA``, so transparent pixels do not bleed into their neighbours.

    Parameters
    ----------
    arr
        Pixels ``(y, x, c)``.
    width, height
        The output size.
    alpha
        Whether the last channel is alpha.
    reducing_gap
        Pillow's ``reducing_gap``: when shrinking by more than this factor, first reduce
        by an integer factor with a box filter (much faster, visually the same). ``None``
        for pure Lanczos.

    Returns
    -------
    numpy.ndarray
        ``(height, width, c)`` in ``arr``'s dtype.
    """
    h, w, c = arr.shape
    if (w, h) == (width, height):
        return arr.copy()
    if arr.dtype == np.uint8 and (c in (1, 3) or (c in (2, 4) and alpha)):
        src = PILImage.fromarray(np.ascontiguousarray(arr[:, :, 0] if c == 1 else arr))
        out = np.asarray(_pil_resize(src, width, height, reducing_gap))
        return out.reshape(height, width, c).copy()
    dtype = arr.dtype
    n_colour = c - 1 if alpha else c
    out = np.empty((height, width, c), dtype=dtype)
    coverage = None
    if alpha:
        a = arr[:, :, -1].astype(np.float32) / np.float32(dtype_max(dtype))
        a_small = np.asarray(_pil_resize(PILImage.fromarray(a), width, height, reducing_gap))
        coverage = a
        out[:, :, -1] = from_float(np.clip(a_small, 0.0, 1.0) * dtype_max(dtype), dtype)
        safe = np.where(a_small > 1e-6, a_small, 1.0).astype(np.float32)
    for ch in range(n_colour):
        plane = arr[:, :, ch].astype(np.float32)
        if coverage is not None:
            plane *= coverage
        small = np.asarray(_pil_resize(PILImage.fromarray(plane), width, height,
                                       reducing_gap))
        if coverage is not None:
            small = small / safe
        out[:, :, ch] = from_float(small, dtype)
    return out


def _resize_target(image_w: int, image_h: int, params: Mapping[str, Any]) -> tuple[int, int]:
    return resize_shape(image_w, image_h, long_side=params.get("long_side"),
                        size=params.get("size"), scale=params.get("scale"),
                        allow_upscale=params.get("allow_upscale", False))


def _alpha_in(meta: Mapping[str, Any], array: Any) -> bool:
    """Whether a lazy image with ``meta`` has alpha (as :func:`has_alpha` for an image)."""
    return meta.get("space") in ALPHA_SPACES and int(array.shape[2]) in (2, 4)


def _resize_output(header: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    try:
        w, h = _resize_target(header["width"], header["height"], params)
    except ValueError:  # no target given: validation says so
        return {}
    return {"width": w, "height": h}


def _resize_lazy(array: Any, meta: Mapping[str, Any], **params: Any) -> Any:
    from dagflow.ops._tiled_resize import resize_lazy

    w, h = _resize_target(int(array.shape[1]), int(array.shape[0]), params)
    return resize_lazy(array, w, h, alpha=_alpha_in(meta, array))


def _resize_input_long_side(params: Mapping[str, Any]) -> int | None:
    return params.get("long_side")


def _resize_check(params: Mapping[str, Any]) -> list[str]:
    given = [k for k in ("long_side", "size", "scale") if params.get(k) is not None]
    problems = []
    if len(given) != 1:
        which = ", ".join(repr(k) for k in given) if given else "none"
        problems.append("resize needs exactly one of 'long_side', 'size' or 'scale'; "
                        f"got {which}")
    size = params.get("size")
    if size is not None and (len(size) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)):
        problems.append(f"parameter 'size': expected [width, height], two positive "
                        f"integers, got {size!r}")
    scale = params.get("scale")
    if scale is not None and scale > 1 and not params.get("allow_upscale"):
        problems.append(f"parameter 'scale': {scale!r} enlarges the image; set "
                        "allow_upscale: true to allow it")
    return problems


def _resize_memory(header: Mapping[str, Any], params: Mapping[str, Any]) -> float:
    w, h = _resize_target(header.get("width", 0), header.get("height", 0), params)
    channels = header.get("channels", 3)
    itemsize = header.get("itemsize", 1)
    out_bytes = w * h * channels * itemsize
    working = 0
    if itemsize > 1:
        # One float32 input plane plus one float32 output plane at a time.
        working = plane_pixels(header) * 4 * 2 + w * h * 4 * 2
    else:
        working = out_bytes  # Pillow's own copy of the input and output
        working += decoded_bytes(header)
    return decoded_bytes(header) + out_bytes + working


@register_op(
    "resize",
    params=[
        Param("long_side", int, None, "scale so the longer side has this many pixels, "
              "keeping the aspect ratio", minimum=1, nullable=True),
        Param("size", (list, tuple), None, "exact output size [width, height]",
              minimum=1, nullable=True),
        Param("scale", float, None, "multiply both sides by this factor", minimum=1e-6,
              nullable=True),
        Param("allow_upscale", bool, False, "allow enlarging (long_side never enlarges "
              "otherwise; scale > 1 is an error otherwise)"),
        Param("reducing_gap", float, 2.0, "box-reduce first when shrinking by more than "
              "this factor (faster); null = pure Lanczos", minimum=1.0, nullable=True),
    ],
    memory=_resize_memory,
    check=_resize_check,
    output=_resize_output,
    tiling=lazy(_resize_lazy),
    backends=common_backends(resize_array),
    input_long_side=_resize_input_long_side,
)
def resize(
    image: Image,
    *,
    long_side: int | None = None,
    size: Sequence[int] | None = None,
    scale: float | None = None,
    allow_upscale: bool = False,
    reducing_gap: float | None = 2.0,
) -> Image:
    """Resize with an antialiased Lanczos filter (long side, exact size or scale factor).

    ``long_side`` never enlarges unless ``allow_upscale`` is set: a smaller image passes
    through unchanged. ``size`` ``[width, height]`` is always honoured exactly, even if
    that changes the aspect ratio. ``scale`` above 1 needs ``allow_upscale``. Alpha is
    resampled premultiplied. The dtype is kept.

    Parameters
    ----------
    image
        The input image.
    long_side, size, scale
        The target; exactly one is given.
    allow_upscale
        Allow the output to be larger than the input.
    reducing_gap
        See :func:`resize_array`.

    Returns
    -------
    Image
        The resized image.
    """
    w, h = resize_shape(image.width, image.height, long_side=long_side, size=size,
                        scale=scale, allow_upscale=allow_upscale)
    if (w, h) == (image.width, image.height):
        return image
    data = resize_array(image.data, w, h, alpha=has_alpha(image), reducing_gap=reducing_gap)
    return image.replace(data)


# --------------------------------------------------------------------------- crop


def crop_box(
    width: int,
    height: int,
    *,
    box: Sequence[int] | None = None,
    center: Sequence[int] | None = None,
) -> tuple[int, int, int, int]:
    """The crop ``(left, top, width, height)`` clipped to a ``width`` x ``height`` image.

    A ``box`` that extends beyond the image is clipped to the part inside it; a
    ``center`` crop larger than the image is clipped to the image.

    Raises
    ------
    BadInputError
        ``crop_outside`` when the box does not overlap the image at all.

    Examples
    --------
    >>> crop_box(100, 80, box=[90, 70, 50, 50])
    (90, 70, 10, 10)
    >>> crop_box(100, 80, center=[40, 200])
    (30, 0, 40, 80)
    """
    if center is not None:
        cw, ch = min(int(center[0]), width), min(int(center[1]), height)
        return (width - cw) // 2, (height - ch) // 2, cw, ch
    if box is None:
        raise ValueError("crop_box needs box or center")
    left, top, bw, bh = (int(v) for v in box)
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + bw, width), min(top + bh, height)
    if x1 <= x0 or y1 <= y0:
        raise BadInputError(
            "crop_outside",
            f"crop box {list(box)} does not overlap the {width}x{height} image",
        )
    return x0, y0, x1 - x0, y1 - y0


def crop_array(arr: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """Copy of the ``(left, top, width, height)`` region of ``arr`` (y, x, c)."""
    left, top, w, h = box
    return arr[top:top + h, left:left + w].copy()


def _crop_check(params: Mapping[str, Any]) -> list[str]:
    problems = []
    box, center = params.get("box"), params.get("center")
    if (box is None) == (center is None):
        problems.append("crop needs exactly one of 'box' [left, top, width, height] or "
                        "'center' [width, height]")
    for name, value, n in (("box", box, 4), ("center", center, 2)):
        if value is None:
            continue
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        sizes_ok = ints and len(value) == n and all(v >= 1 for v in value[-2:])
        if not sizes_ok:
            what = "[left, top, width, height]" if n == 4 else "[width, height]"
            problems.append(f"parameter {name!r}: expected {what} as integers with "
                            f"positive width and height, got {value!r}")
    return problems


def _crop_output(header: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    try:
        _, _, w, h = crop_box(header["width"], header["height"], box=params.get("box"),
                              center=params.get("center"))
    except (BadInputError, ValueError):  # a box outside the image fails at run time
        return {}
    return {"width": w, "height": h}


def _crop_lazy(array: Any, meta: Mapping[str, Any], *, box: Sequence[int] | None = None,
               center: Sequence[int] | None = None) -> Any:
    x0, y0, w, h = crop_box(int(array.shape[1]), int(array.shape[0]), box=box, center=center)
    return array[y0:y0 + h, x0:x0 + w]


def _crop_memory(header: Mapping[str, Any], params: Mapping[str, Any]) -> float:
    decoded = decoded_bytes(header)
    try:
        _, _, w, h = crop_box(header.get("width", 0), header.get("height", 0),
                              box=params.get("box"), center=params.get("center"))
    except (BadInputError, ValueError):
        return decoded
    return decoded + w * h * header.get("channels", 3) * header.get("itemsize", 1)


@register_op(
    "crop",
    params=[
        Param("box", (list, tuple), None, "region [left, top, width, height] in pixels; "
              "clipped to the image", nullable=True),
        Param("center", (list, tuple), None, "centred region [width, height]; clipped to "
              "the image", minimum=1, nullable=True),
    ],
    memory=_crop_memory,
    check=_crop_check,
    output=_crop_output,
    tiling=lazy(_crop_lazy),
)
def crop(
    image: Image,
    *,
    box: Sequence[int] | None = None,
    center: Sequence[int] | None = None,
) -> Image:
    """Cut out a region, given as a box or as a centred size, clipped to the image.

    Parameters
    ----------
    image
        The input image.
    box
        ``[left, top, width, height]``; the part outside the image is dropped.
    center
        ``[width, height]`` of a centred region; larger than the image means the image.

    Returns
    -------
    Image
        The cropped image (a copy, so the input can be freed).

    Raises
    ------
    BadInputError
        ``crop_outside`` when the box lies entirely outside the image.
    """
    region = crop_box(image.width, image.height, box=box, center=center)
    return image.replace(crop_array(np.asarray(image.data), region))


# --------------------------------------------------------------------------- rotate


def _fill_values(fill: float | Sequence[float], channels: int, alpha: bool,
                 dtype: Any) -> list[float]:
    if isinstance(fill, int | float):
        return [level_to_dtype(fill, dtype)] * channels
    values = [level_to_dtype(v, dtype) for v in fill]
    if len(values) == channels:
        return values
    if alpha and len(values) == channels - 1:
        return [*values, dtype_max(dtype)]
    raise BadInputError("shape_mismatch", f"fill {list(fill)} has {len(values)} values for "
                        f"an image with {channels} channels")


def rotate_array(
    arr: np.ndarray,
    angle: float,
    *,
    expand: bool = True,
    fill: float | Sequence[float] = 0,
    order: int = 1,
    alpha: bool = False,
) -> np.ndarray:
    """Rotate ``arr`` (y, x, c) counter-clockwise by ``angle`` degrees.

    Multiples of 90 degrees are exact (:func:`numpy.rot90`, any ``expand``). Other angles
    interpolate each channel with :func:`scipy.ndimage.rotate` in 32-bit float.

    Parameters
    ----------
    arr
        Pixels ``(y, x, c)``.
    angle
        Degrees, counter-clockwise.
    expand
        Grow the output to hold the whole rotated image; otherwise keep the input size.
    fill
        Value of the uncovered corners, in 8-bit levels (0-255, scaled to the dtype): one
        for every channel, or one per channel (or per colour channel, alpha then opaque).
    order
        Interpolation order: 0 nearest, 1 bilinear, 3 bicubic.
    alpha
        Whether the last channel is alpha (only used to interpret a per-colour ``fill``).

    Returns
    -------
    numpy.ndarray
        The rotated pixels in ``arr``'s dtype.
    """
    angle = float(angle) % 360.0
    quarter = angle / 90.0
    if math.isclose(quarter, round(quarter), abs_tol=1e-9):
        k = round(quarter) % 4
        if expand or k % 2 == 0 or arr.shape[0] == arr.shape[1]:
            return np.ascontiguousarray(np.rot90(arr, k=k, axes=(0, 1)))
    fills = _fill_values(fill, arr.shape[2], alpha, arr.dtype)
    planes = []
    for ch in range(arr.shape[2]):
        rotated = ndimage.rotate(arr[:, :, ch], angle, axes=(1, 0), reshape=expand,
                                 output=np.float32, order=order, mode="constant",
                                 cval=fills[ch], prefilter=order > 1)
        planes.append(from_float(rotated, arr.dtype))
    return np.stack(planes, axis=2)


def _quarter_turns(angle: float) -> int | None:
    """``angle`` in quarter turns (0-3) when it is a multiple of 90 degrees, else ``None``."""
    quarter = (float(angle) % 360.0) / 90.0
    if math.isclose(quarter, round(quarter), abs_tol=1e-9):
        return round(quarter) % 4
    return None


def _rotate_output(header: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    w, h = header["width"], header["height"]
    expand = params.get("expand", True)
    k = _quarter_turns(params.get("angle", 0))
    if k is not None and (expand or k % 2 == 0 or w == h):  # rot90, as rotate_array
        return {"width": h, "height": w} if k % 2 else {}
    if not expand:
        return {}
    # the plane scipy.ndimage.rotate makes: the rotated corners' extent, rounded
    angle = float(params.get("angle", 0)) % 360.0
    c, s = special.cosdg(angle), special.sindg(angle)
    corners = np.array([[c, s], [-s, c]]) @ [[0, 0, h, h], [0, w, 0, w]]
    out_h, out_w = (np.ptp(corners, axis=1) + 0.5).astype(int)
    return {"width": int(out_w), "height": int(out_h)}


def _rotate_tiled(params: Mapping[str, Any], dtype: Any) -> str | None:
    if _quarter_turns(params.get("angle", 0)) is None:
        return "tiled rotate takes multiples of 90 degrees only"
    return None


def _rotate_lazy(array: Any, meta: Mapping[str, Any], *, angle: float, expand: bool = True,
                 **params: Any) -> Any:
    import dask.array as da

    k = _quarter_turns(angle) or 0
    if not (expand or k % 2 == 0 or array.shape[0] == array.shape[1]):
        raise ValueError("tiled rotate by an odd multiple of 90 degrees keeps the image's "
                         "size only for a square image: set expand: true")
    return da.rot90(array, k=k, axes=(0, 1))


def _rotate_memory(header: Mapping[str, Any], params: Mapping[str, Any]) -> float:
    decoded = decoded_bytes(header)
    if float(params.get("angle", 0)) % 90 == 0:
        return decoded * 2
    # expanded output can be up to 2x the area; float32 planes in and out.
    grow = 2.0 if params.get("expand", True) else 1.0
    return decoded * (1 + grow) + plane_pixels(header) * 4 * (1 + grow) * 1.5


def _rotate_check(params: Mapping[str, Any]) -> list[str]:
    fill = params.get("fill")
    if isinstance(fill, list | tuple) and not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in fill):
        return [f"parameter 'fill': expected a level or a list of levels, got {fill!r}"]
    return []


@register_op(
    "rotate",
    params=[
        Param("angle", float, doc="degrees, counter-clockwise; multiples of 90 are exact"),
        Param("expand", bool, True, "grow the output to hold the whole rotated image"),
        Param("fill", (float, list), 0, "corner fill in 8-bit levels, one or per channel",
              minimum=0, maximum=255),
        Param("resample", str, "bilinear", "interpolation for arbitrary angles",
              choices=tuple(_ORDERS)),
    ],
    memory=_rotate_memory,
    check=_rotate_check,
    output=_rotate_output,
    tiling=lazy(_rotate_lazy, why_not=_rotate_tiled),
)
def rotate(
    image: Image,
    *,
    angle: float,
    expand: bool = True,
    fill: float | Sequence[float] = 0,
    resample: str = "bilinear",
) -> Image:
    """Rotate counter-clockwise by an angle in degrees (multiples of 90 exactly).

    Every channel moves, alpha included; with the default ``fill`` of 0 the uncovered
    corners are black, and transparent when the image has alpha.

    Parameters
    ----------
    image
        The input image.
    angle
        Degrees, counter-clockwise.
    expand
        Grow the output to hold the whole rotated image.
    fill
        See :func:`rotate_array`.
    resample
        ``nearest``, ``bilinear`` or ``bicubic``.

    Returns
    -------
    Image
        The rotated image.
    """
    data = rotate_array(np.asarray(image.data), angle, expand=expand, fill=fill,
                        order=_ORDERS[resample], alpha=has_alpha(image))
    return image.replace(data)


# --------------------------------------------------------------------------- flip

_FLIP_AXES = {"horizontal": (1,), "vertical": (0,), "both": (0, 1)}
_FLIP_SLICES = {"horizontal": (slice(None), slice(None, None, -1)),
                "vertical": (slice(None, None, -1), slice(None)),
                "both": (slice(None, None, -1), slice(None, None, -1))}


def flip_array(arr: np.ndarray, axis: str) -> np.ndarray:
    """Mirror ``arr`` (y, x, c): ``horizontal`` (left-right), ``vertical`` or ``both``."""
    return np.ascontiguousarray(np.flip(arr, axis=_FLIP_AXES[axis]))


def _flip_lazy(array: Any, meta: Mapping[str, Any], *, axis: str) -> Any:
    return array[_FLIP_SLICES[axis]]


@register_op(
    "flip",
    params=[Param("axis", str, "horizontal", "mirror left-right, top-bottom or both",
                  choices=tuple(_FLIP_AXES))],
    memory_factor=2.0,
    tiling=lazy(_flip_lazy),
)
def flip(image: Image, *, axis: str = "horizontal") -> Image:
    """Mirror the image left-right (horizontal), top-bottom (vertical) or both.

    Parameters
    ----------
    image
        The input image.
    axis
        ``horizontal``, ``vertical`` or ``both``.

    Returns
    -------
    Image
        The mirrored image.
    """
    return image.replace(flip_array(np.asarray(image.data), axis))

"""The two-input ``composite`` op: combine image ``b`` onto image ``a``.

The pixel work is :func:`composite_array`, a pure function on ``(y, x, c)`` arrays. The
op reconciles the inputs first (:func:`reconcile`): ``b`` is converted to ``a``'s dtype
(explicit scaling) and, with ``resize_b``, to ``a``'s size; a gray input is replicated
to match a colour one. The output has ``a``'s size, dtype and alpha.

This module imports no Dask and no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from dagflow.exceptions import BadInputError
from dagflow.image import Image
from dagflow.ops._common import decoded_bytes, dtype_max, from_float, has_alpha, plane_pixels
from dagflow.ops.geometry import resize_array
from dagflow.ops.intensity import convert_dtype_array, luma_array
from dagflow.ops.registry import Param, register_op

__all__ = ["MODES", "composite", "composite_array", "reconcile"]

MODES = ("blend", "over", "multiply", "add", "difference")


def _split(arr: np.ndarray, alpha: bool) -> tuple[np.ndarray, np.ndarray | None]:
    return (arr[:, :, :-1], arr[:, :, -1]) if alpha else (arr, None)


def reconcile(a: Image, b: Image, *, resize_b: bool = False) -> np.ndarray:
    """``b``'s pixels made compatible with ``a``: same size, dtype and colour channels.

    Returns the pixels of ``b`` with ``a``'s height, width and dtype and with as many
    colour channels as ``a`` (gray replicated to RGB, or RGB reduced to luma), keeping
    ``b``'s alpha channel (if any) last.

    Raises
    ------
    BadInputError
        ``shape_mismatch`` when the sizes differ and ``resize_b`` is off, or when the
        channel counts cannot be reconciled (e.g. a 5-channel image with an RGB one).
    """
    arr = np.asarray(b.data)
    b_alpha = has_alpha(b)
    if (b.width, b.height) != (a.width, a.height):
        if not resize_b:
            raise BadInputError(
                "shape_mismatch",
                f"composite inputs differ in size: a is {a.width}x{a.height}, b is "
                f"{b.width}x{b.height}; set resize_b: true to resize b to a's size",
            )
        arr = resize_array(arr, a.width, a.height, alpha=b_alpha)
    if arr.dtype != a.dtype:
        arr = convert_dtype_array(arr, a.dtype)
    a_colour = a.channels - 1 if has_alpha(a) else a.channels
    colour, alpha = _split(arr, b_alpha)
    if colour.shape[2] != a_colour:
        if colour.shape[2] == 1 and a_colour == 3:
            colour = np.repeat(colour, 3, axis=2)
        elif colour.shape[2] == 3 and a_colour == 1:
            colour = luma_array(colour)
        else:
            raise BadInputError(
                "shape_mismatch",
                f"composite cannot combine {a_colour} colour channels (a) with "
                f"{colour.shape[2]} (b)",
            )
    if alpha is None:
        return np.ascontiguousarray(colour)
    return np.concatenate([colour, alpha[:, :, None]], axis=2)


def composite_array(
    a: np.ndarray,
    b: np.ndarray,
    mode: str = "blend",
    alpha: float = 0.5,
    *,
    a_alpha: bool = False,
    b_alpha: bool = False,
) -> np.ndarray:
    """Combine ``b`` onto ``a`` (same size and dtype, same number of colour channels).

    With ``A``, ``B`` the colour values in the image's units and ``M`` the dtype's
    maximum (1 for floats):

    - ``blend``: ``A (1 - alpha) + B alpha`` (``b``'s alpha channel is ignored)
    - ``over``: ``b`` over ``a`` with ``b``'s alpha channel ``beta`` (1 without one):
      ``B beta + A (1 - beta)``; when ``a`` has alpha too, Porter-Duff: output alpha
      ``beta + alpha_a (1 - beta)`` and colour divided by it
    - ``multiply``: ``A B / M``
    - ``add``: ``min(A + B, M)``
    - ``difference``: ``|A - B|``

    Results are rounded to nearest for integer dtypes. The output keeps ``a``'s alpha
    channel (updated only by ``over``) and has no alpha when ``a`` has none.
    """
    dtype = a.dtype
    top = np.float32(dtype_max(dtype))
    ac, aa = _split(a, a_alpha)
    bc, ba = _split(b, b_alpha)
    fa = ac.astype(np.float32)
    fb = bc.astype(np.float32)
    new_alpha = None
    if mode == "blend":
        result = fa * np.float32(1 - alpha) + fb * np.float32(alpha)
    elif mode == "over":
        beta = (ba.astype(np.float32) / top)[:, :, None] if ba is not None \
            else np.ones((*fa.shape[:2], 1), np.float32)
        if aa is None:
            result = fb * beta + fa * (1 - beta)
        else:
            alpha_a = (aa.astype(np.float32) / top)[:, :, None]
            out_a = beta + alpha_a * (1 - beta)
            safe = np.where(out_a > 0, out_a, np.float32(1))
            result = (fb * beta + fa * alpha_a * (1 - beta)) / safe
            new_alpha = from_float(out_a[:, :, 0] * top, dtype)
    elif mode == "multiply":
        result = fa * fb / top
    elif mode == "add":
        result = np.minimum(fa + fb, top)
    elif mode == "difference":
        result = np.abs(fa - fb)
    else:
        raise ValueError(f"unknown composite mode {mode!r}; expected one of {MODES}")
    colour = from_float(result, dtype)
    if aa is None:
        return colour
    return np.concatenate([colour, (aa if new_alpha is None else new_alpha)[:, :, None]],
                          axis=2)


def _memory(header: Mapping[str, Any], params: Mapping[str, Any]) -> float:
    # a and b decoded, float32 copies of both colour planes and of the result.
    return decoded_bytes(header) * 3 + plane_pixels(header) * header.get("channels", 3) * 4 * 3


@register_op(
    "composite",
    inputs=2,
    params=[
        Param("mode", str, "blend", "how b combines with a", choices=MODES),
        Param("alpha", float, 0.5, "weight of b in blend mode", minimum=0, maximum=1),
        Param("resize_b", bool, False, "resize b to a's size instead of failing"),
    ],
    memory=_memory,
)
def composite(
    a: Image, b: Image, *, mode: str = "blend", alpha: float = 0.5, resize_b: bool = False
) -> Image:
    """Combine two images: blend, b over a (by b's alpha), multiply, add or difference.

    Parameters
    ----------
    a
        The base image; the output has its size, dtype and alpha.
    b
        The image combined onto ``a``, reconciled first (see :func:`reconcile`).
    mode
        ``blend``, ``over``, ``multiply``, ``add`` or ``difference``, see
        :func:`composite_array`.
    alpha
        The weight of ``b`` in ``blend`` mode (other modes ignore it).
    resize_b
        Resize ``b`` to ``a``'s size when they differ; otherwise that is an error.

    Returns
    -------
    Image
        The combined image, with ``a``'s metadata.

    Raises
    ------
    BadInputError
        ``shape_mismatch`` when the inputs cannot be reconciled.
    """
    b_arr = reconcile(a, b, resize_b=resize_b)
    data = composite_array(np.asarray(a.data), b_arr, mode, alpha, a_alpha=has_alpha(a),
                           b_alpha=has_alpha(b))
    return a.replace(data)

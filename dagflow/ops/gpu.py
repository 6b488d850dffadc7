"""cupy implementations of the ops' array functions, and the way to and from the device.

The array functions of ``resize``, ``gaussian``, ``median``, ``unsharp``, ``normalize``
and ``convert`` (:func:`~dagflow.ops.geometry.resize_array`,
:func:`~dagflow.ops.filters.gaussian_array`...) are :class:`~dagflow.ops.backends.
ArrayFunction` values: :func:`register` gives each its cupy implementation here, when
the first cupy array reaches it (their lazy ``"cupy"`` loader). Each has the signature
and the semantics of its numpy counterpart (same parameters, dtype kept, alpha untouched
by filters and intensity ops, 8-bit levels already scaled to the dtype by the op).

The GPU path (:func:`dagflow.ops.dispatch.call`) runs an op's own function on the device
(:func:`run_on_device`): the image is copied to the device, the op's function runs on it
(its array functions dispatch to the implementations here) and the result is copied
back, so the next node (or the sink) sees a numpy image as from the CPU.

This module imports cupy at its top: it is imported only on a worker that runs a GPU
node (or checks its GPU), never on a machine without cupy.

Equal to the CPU within tolerance, not bit for bit, unless said: ``gaussian`` on 8-bit
images is exact, the CPU's fixed-point arithmetic (OpenCV's 8-bit ``GaussianBlur``) run
by :func:`dagflow.ops.filters.fixed_point_gaussian` on the device; on other dtypes, and
``unsharp``, filters run in float32 (rounding may differ by one level); ``resize``
applies Pillow's Lanczos weights (:mod:`dagflow.ops._resample`) as sparse matrices,
with Pillow's rounding between the passes for 8-bit images; ``median`` and the
8/16-bit ``normalize`` and ``convert`` are exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cupy as cp
import numpy as np
from cupyx.scipy import ndimage as cndi
from cupyx.scipy import sparse as csparse

from dagflow.exceptions import BadInputError
from dagflow.image import Image
from dagflow.ops._common import dtype_max, level_to_dtype, require_dtype
from dagflow.ops._resample import plan_axes
from dagflow.ops.filters import fixed_point_bits, fixed_point_gaussian
from dagflow.ops.intensity import _hist_bins, _percentiles_from_counts

__all__ = [
    "check_device",
    "convert_dtype_array",
    "convert_space_array",
    "device_memory",
    "device_peak",
    "gaussian_array",
    "median_array",
    "normalize_array",
    "register",
    "resize_array",
    "run_on_device",
    "to_device",
    "to_host",
    "unsharp_array",
]

_MODE = "reflect"


def _from_float(values: Any, dtype: Any) -> Any:
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        out = cp.rint(values)
        cp.clip(out, info.min, info.max, out=out)
        return out.astype(dtype)
    return values.astype(dtype, copy=False)


def _apply_to_colour(arr: Any, alpha: bool, func: Callable[[Any], Any]) -> Any:
    out = cp.empty_like(arr)
    n_colour = arr.shape[2] - 1 if alpha else arr.shape[2]
    for c in range(n_colour):
        out[:, :, c] = func(arr[:, :, c])
    if alpha:
        out[:, :, -1] = arr[:, :, -1]
    return out


# --------------------------------------------------------------------------- filters


def gaussian_array(arr: Any, sigma: float, truncate: float = 4.0, *,
                   alpha: bool = False) -> Any:
    """:func:`dagflow.ops.filters.gaussian_array` on a cupy array: 8-bit channels by the
    CPU's fixed-point arithmetic (the same pixels), others in float32."""
    require_dtype(arr, "gaussian")
    if arr.dtype == np.uint8:
        bits = fixed_point_bits("uint8", sigma, truncate)
        return _apply_to_colour(arr, alpha, lambda plane: fixed_point_gaussian(
            plane, sigma, truncate, bits=bits, xp=cp, ndimage=cndi))

    def blur(plane: Any) -> Any:
        out = cndi.gaussian_filter(plane, sigma, output=cp.float32, mode=_MODE,
                                   truncate=truncate)
        return _from_float(out, arr.dtype)

    return _apply_to_colour(arr, alpha, blur)


def median_array(arr: Any, size: int, *, alpha: bool = False) -> Any:
    """:func:`dagflow.ops.filters.median_array` on a cupy array."""
    require_dtype(arr, "median")
    if size <= 1:
        return arr.copy()
    return _apply_to_colour(arr, alpha,
                            lambda plane: cndi.median_filter(plane, size=size, mode=_MODE))


def unsharp_array(arr: Any, sigma: float, amount: float = 1.0, threshold: float = 0.0,
                  truncate: float = 4.0, *, alpha: bool = False) -> Any:
    """:func:`dagflow.ops.filters.unsharp_array` on a cupy array."""
    require_dtype(arr, "unsharp")
    integer = np.dtype(arr.dtype).kind in "ui"

    def sharpen(plane: Any) -> Any:
        img = plane.astype(cp.float32)
        detail = img - cndi.gaussian_filter(img, sigma, mode=_MODE, truncate=truncate)
        if threshold > 0:
            detail[cp.abs(detail) <= threshold] = 0.0
        img += cp.float32(amount) * detail
        return _from_float(img, arr.dtype) if integer else img.astype(arr.dtype)

    return _apply_to_colour(arr, alpha, sharpen)


# --------------------------------------------------------------------------- resize


def _device_matrix(matrix: Any) -> Any:
    return csparse.csr_matrix(matrix.astype(np.float32))


def _resample_plane(plane: Any, plans: tuple[Any, Any], round8: bool) -> Any:
    """Apply the ``(x, y)`` plans to a float32 plane (y, x), rounding like Pillow's 8-bit
    path when ``round8``."""
    px, py = plans
    x = plane
    reduced = px.reduce is not None or py.reduce is not None
    if py.reduce is not None:
        x = _device_matrix(py.reduce) @ x
    if px.reduce is not None:
        x = (_device_matrix(px.reduce) @ cp.ascontiguousarray(x.T)).T
    if reduced and round8:
        x = cp.floor(x + 0.5)
    if px.resample is not None:
        x = (_device_matrix(px.resample) @ cp.ascontiguousarray(x.T)).T
        if round8:
            x = cp.clip(cp.floor(x + 0.5), 0, 255)
    if py.resample is not None:
        x = _device_matrix(py.resample) @ cp.ascontiguousarray(x)
        if round8:
            x = cp.clip(cp.floor(x + 0.5), 0, 255)
    return cp.ascontiguousarray(x, dtype=cp.float32)


def _resize_premultiplied8(arr: Any, plans: tuple[Any, Any]) -> Any:
    """8-bit colour + alpha as Pillow resizes ``LA``/``RGBA``: premultiply (``La``/``RGBa``,
    rounded), resample with 8-bit rounding, divide back (``(255 * c) // alpha``)."""
    a = arr[:, :, -1].astype(cp.int32)
    a_small = _resample_plane(a.astype(cp.float32), plans, True)
    out = cp.empty((*a_small.shape, arr.shape[2]), dtype=cp.uint8)
    out[:, :, -1] = a_small.astype(cp.uint8)
    a_int = a_small.astype(cp.int32)
    keep = (a_int == 0) | (a_int == 255)
    divisor = cp.where(keep, 1, a_int)
    for ch in range(arr.shape[2] - 1):
        t = arr[:, :, ch].astype(cp.int32) * a + 128
        pre = ((t >> 8) + t) >> 8
        small = _resample_plane(pre.astype(cp.float32), plans, True).astype(cp.int32)
        out[:, :, ch] = cp.where(keep, small, cp.clip((255 * small) // divisor, 0, 255)
                                 ).astype(cp.uint8)
    return out


def resize_array(arr: Any, width: int, height: int, *, alpha: bool = False,
                 reducing_gap: float | None = 2.0) -> Any:
    """:func:`dagflow.ops.geometry.resize_array` on a cupy array: Lanczos with Pillow's box
    reduction; 8-bit images with 1-4 channels round as Pillow's native modes do
    (premultiplied alpha included), other dtypes resample in float32 with alpha
    premultiplied by coverage."""
    h, w, c = arr.shape
    if (w, h) == (width, height):
        return arr.copy()
    dtype = np.dtype(arr.dtype)
    plans = plan_axes(w, h, width, height, reducing_gap)
    if dtype == np.uint8 and c in (2, 4) and alpha:
        return _resize_premultiplied8(arr, plans)
    native8 = dtype == np.uint8 and c in (1, 3)
    top = np.float32(dtype_max(dtype))
    n_colour = c - 1 if alpha else c
    out = cp.empty((height, width, c), dtype=dtype)
    coverage = safe = None
    if alpha:
        a = arr[:, :, -1].astype(cp.float32) / top
        a_small = _resample_plane(a, plans, False)
        out[:, :, -1] = _from_float(cp.clip(a_small, 0.0, 1.0) * top, dtype)
        coverage = a
        safe = cp.where(a_small > 1e-6, a_small, 1.0).astype(cp.float32)
    for ch in range(n_colour):
        plane = arr[:, :, ch].astype(cp.float32)
        if coverage is not None:
            plane *= coverage
        small = _resample_plane(plane, plans, native8)
        if safe is not None:
            small = small / safe
        out[:, :, ch] = _from_float(small, dtype)
    return out


# --------------------------------------------------------------------------- normalize


def _percentiles(values: Any, qs: Sequence[float]) -> list[float]:
    bins = _hist_bins(np.dtype(values.dtype))
    if bins is not None:
        counts = cp.asnumpy(cp.bincount(values.ravel(), minlength=bins))
        return _percentiles_from_counts(counts, qs)
    return [float(v) for v in cp.asnumpy(cp.percentile(values, cp.asarray(qs)))]


def _stretch(values: Any, lo: float, hi: float, dtype: np.dtype) -> Any:
    top = dtype_max(dtype)
    if hi <= lo:
        return values.copy()
    bins = _hist_bins(dtype)
    if bins is not None:
        levels = np.arange(bins, dtype=np.float64)
        scaled = np.clip((levels - lo) * (top / (hi - lo)), 0, top)
        info = np.iinfo(dtype)
        lut = np.clip(np.rint(scaled), info.min, info.max).astype(dtype)
        return cp.asarray(lut)[values]
    out = (values.astype(cp.float32) - cp.float32(lo)) * cp.float32(top / (hi - lo))
    return _from_float(cp.clip(out, 0, top), dtype)


def normalize_array(arr: Any, low: float = 1.0, high: float = 99.0, *,
                    per_channel: bool = False, alpha: bool = False) -> Any:
    """:func:`dagflow.ops.intensity.normalize_array` on a cupy array."""
    require_dtype(arr, "normalize")
    dtype = np.dtype(arr.dtype)
    n_colour = arr.shape[2] - 1 if alpha else arr.shape[2]
    out = arr.copy()
    if per_channel:
        for ch in range(n_colour):
            lo, hi = _percentiles(arr[:, :, ch], (low, high))
            out[:, :, ch] = _stretch(arr[:, :, ch], lo, hi, dtype)
    else:
        colour = arr[:, :, :n_colour]
        lo, hi = _percentiles(colour, (low, high))
        out[:, :, :n_colour] = _stretch(colour, lo, hi, dtype)
    return out


# --------------------------------------------------------------------------- convert

_LUMA_INT = (299, 587, 114)
_LUMA = (0.299, 0.587, 0.114)


def convert_dtype_array(arr: Any, dtype: Any) -> Any:
    """:func:`dagflow.ops.intensity.convert_dtype_array` on a cupy array."""
    src, dst = np.dtype(arr.dtype), np.dtype(dtype)
    if src == dst:
        return arr.copy()
    if src == np.uint16 and dst == np.uint8:
        return ((arr.astype(cp.uint32) + 128) // 257).astype(cp.uint8)
    if src == np.uint8 and dst == np.uint16:
        return arr.astype(cp.uint16) * cp.uint16(257)
    if src.kind == "f" and dst.kind == "f":
        return arr.astype(dst)
    if src.kind == "f":
        return _from_float(cp.clip(arr.astype(cp.float32), 0, 1) * cp.float32(dtype_max(dst)),
                           dst)
    if dst.kind == "f":
        return (arr.astype(dst) / dst.type(dtype_max(src))).astype(dst)
    return _from_float(arr.astype(cp.float64) * (dtype_max(dst) / dtype_max(src)), dst)


def luma_array(rgb: Any) -> Any:
    """:func:`dagflow.ops.intensity.luma_array` on a cupy array."""
    dtype = np.dtype(rgb.dtype)
    if dtype.kind in "ui":
        acc_type = cp.int64 if dtype.itemsize > 2 else cp.int32
        acc = cp.zeros(rgb.shape[:2], dtype=acc_type)
        for ch, weight in enumerate(_LUMA_INT):
            acc += rgb[:, :, ch].astype(acc_type) * weight
        acc += 500
        acc //= 1000
        return acc.astype(dtype)[:, :, None]
    out = cp.zeros(rgb.shape[:2], dtype=cp.float32)
    for ch, weight in enumerate(_LUMA):
        out += rgb[:, :, ch].astype(cp.float32) * cp.float32(weight)
    return out.astype(dtype)[:, :, None]


def _flatten_alpha(colour: Any, alpha: Any, background: Sequence[float] | float | None) -> Any:
    if background is None:
        return colour
    dtype = np.dtype(colour.dtype)
    top = np.float32(dtype_max(dtype))
    levels = [background] * colour.shape[2] if isinstance(background, int | float) \
        else list(background)
    if len(levels) == 1:
        levels = levels * colour.shape[2]
    if len(levels) != colour.shape[2]:
        raise BadInputError("shape_mismatch", f"background {background!r} does not match "
                            f"{colour.shape[2]} colour channels")
    a = alpha[:, :, 0].astype(cp.float32) / top
    out = cp.empty_like(colour)
    for ch in range(colour.shape[2]):
        bg = np.float32(level_to_dtype(levels[ch], dtype))
        out[:, :, ch] = _from_float(colour[:, :, ch] * a + bg * (1 - a), dtype)
    return out


def convert_space_array(arr: Any, src: str, dst: str, *,
                        background: Sequence[float] | float | None = None) -> Any:
    """:func:`dagflow.ops.intensity.convert_space_array` on a cupy array."""
    if src == dst:
        return arr.copy()
    src_alpha, dst_alpha = src in ("graya", "rgba"), dst in ("graya", "rgba")
    colour = arr[:, :, :-1] if src_alpha else arr
    alpha = arr[:, :, -1:] if src_alpha else None
    if alpha is not None and not dst_alpha:
        colour = _flatten_alpha(colour, alpha, background)
    if src.startswith("rgb") and not dst.startswith("rgb"):
        colour = luma_array(colour)
    elif dst.startswith("rgb") and not src.startswith("rgb"):
        colour = cp.repeat(colour, 3, axis=2)
    if not dst_alpha:
        return cp.ascontiguousarray(colour)
    if alpha is None:
        alpha = cp.full((*arr.shape[:2], 1), dtype_max(arr.dtype), dtype=arr.dtype)
    return cp.concatenate([colour, alpha], axis=2)


# --------------------------------------------------------------------------- the device


def device_memory() -> int:
    """Bytes of memory of this process's current CUDA device."""
    return int(cp.cuda.runtime.memGetInfo()[1])


def device_peak(func: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, int]:
    """``func(*args, **kwargs)``, and the most device memory it held at once: the bytes
    allocated from cupy's memory pool and not yet returned, at their peak (what
    :func:`dagflow.resources.device_bytes` estimates)."""
    from cupy.cuda import memory_hook

    class Peak(memory_hook.MemoryHook):
        name = "dagflow-device-peak"

        def __init__(self) -> None:
            self.live = self.peak = 0

        def malloc_postprocess(self, **kw: Any) -> None:
            self.live += kw["mem_size"]
            self.peak = max(self.peak, self.live)

        def free_postprocess(self, **kw: Any) -> None:
            self.live -= kw["mem_size"]

    hook = Peak()
    with hook:
        result = func(*args, **kwargs)
    return result, hook.peak


def check_device() -> None:
    """Run what the implementations rely on, on a tiny image, before they are trusted.

    An installed cupy that sees a device can still lack the CUDA libraries its kernels
    load: without a toolkit (``cupy-cuda12x`` without its ``ctk`` extra), kernels fail
    to compile (NVRTC) and ``resize`` fails at its sparse products (cuSPARSE). Here a
    ``gaussian`` (compiled element-wise and ndimage kernels) and a ``resize`` (sparse
    products, rounding) of a 24x32 RGB image are compared with the CPU's, with a
    level more slack than the tests allow: this looks for a broken stack, not rounding.

    Raises
    ------
    Exception
        What failed: cupy's own error for a missing library or device, or a
        ``RuntimeError`` when a result is not the CPU's within its rounding.
    """
    from dagflow.ops.filters import gaussian_array as cpu_gaussian
    from dagflow.ops.geometry import resize_array as cpu_resize

    if cp.cuda.runtime.getDeviceCount() < 1:
        raise RuntimeError("cupy sees no CUDA device")
    yy, xx = np.mgrid[0:24, 0:32]
    tiny = np.stack([xx * 8, yy * 10, (xx * yy) % 256], axis=-1).astype(np.uint8)
    checks = [("gaussian", cpu_gaussian(tiny, 1.5), gaussian_array(cp.asarray(tiny), 1.5), 2),
              ("resize", cpu_resize(tiny, 12, 9), resize_array(cp.asarray(tiny), 12, 9), 3)]
    for name, expected, got, levels in checks:
        got = cp.asnumpy(got)
        if got.shape != expected.shape:
            raise RuntimeError(f"the GPU's {name} gave shape {got.shape}, the CPU's "
                               f"{expected.shape}")
        diff = int(np.abs(got.astype(np.int16) - expected.astype(np.int16)).max())
        if diff > levels:
            raise RuntimeError(f"the GPU's {name} differs from the CPU's by {diff} levels "
                               f"(at most {levels} expected)")


# --------------------------------------------------------------------------- dispatch


def register() -> None:
    """Register this module's implementations for ``cupy.ndarray`` with the ops' array
    functions (what their lazy ``"cupy"`` loader runs; registering again is harmless)."""
    from dagflow.ops import filters, geometry, intensity

    for public, on_device in ((filters.gaussian_array, gaussian_array),
                              (filters.median_array, median_array),
                              (filters.unsharp_array, unsharp_array),
                              (geometry.resize_array, resize_array),
                              (intensity.normalize_array, normalize_array),
                              (intensity.convert_dtype_array, convert_dtype_array),
                              (intensity.convert_space_array, convert_space_array)):
        public.register(cp.ndarray, on_device)


def to_device(value: Any) -> Any:
    """An :class:`~dagflow.image.Image` (or a numpy array) copied to the device; anything
    else as it is."""
    if isinstance(value, Image):
        return Image(cp.asarray(value.data), dict(value.meta))
    if isinstance(value, np.ndarray):
        return cp.asarray(value)
    return value


def to_host(value: Any) -> Any:
    """An :class:`~dagflow.image.Image` (or a cupy array) copied back to the host."""
    if isinstance(value, Image) and not isinstance(value.data, np.ndarray):
        return Image(cp.asnumpy(value.data), value.meta)
    if isinstance(value, cp.ndarray):
        return cp.asnumpy(value)
    return value


def run_on_device(func: Callable[..., Any], args: Sequence[Any], params: dict[str, Any]
                  ) -> Any:
    """``func(*args, **params)`` with its images on the device, the result back on the
    host: an op's own function, whose array functions pick the cupy implementations.

    An input returned as it is (a ``resize`` to the size it has) comes back as the
    host image it was, without a copy.
    """
    on_device = [to_device(a) for a in args]
    value = func(*on_device, **params)
    for host, device in zip(args, on_device, strict=True):
        if value is device:
            return host
    return to_host(value)

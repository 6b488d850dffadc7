"""Intensity and colour ops: ``normalize``, ``convert``, ``grayscale``, ``equalize``,
``threshold``.

The pixel work is in pure functions on ``(y, x, c)`` arrays: :func:`luma_array`,
:func:`normalize_array`, :func:`convert_dtype_array`, :func:`convert_space_array`,
:func:`equalize_array`, :func:`otsu_threshold` and :func:`threshold_array`;
``normalize_array`` and the two ``convert`` functions also have cupy implementations
(:mod:`dagflow.ops.gpu`), chosen by the array's type. Integer images are processed with
lookup tables built from exact histograms where possible, so 8- and 16-bit inputs cost
one pass. Only ``convert`` changes the dtype; ``threshold`` and ``grayscale`` change the
channel count, as their purpose, and each declares the header it produces.

Tiled, ``convert``, ``grayscale`` and ``threshold`` (at a ``value``) are pointwise;
``normalize`` and ``equalize`` are a reduction: the exact histogram of every block,
summed, then lookup tables applied block by block (8- and 16-bit images), equal to the
whole-image result.

Luma is ITU-R BT.601: ``Y = 0.299 R + 0.587 G + 0.114 B``, computed exactly in integers
for integer images (rounded half up).

This module imports no Dask and no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dagflow.exceptions import BadInputError
from dagflow.image import SPACES_BY_CHANNELS, Image
from dagflow.ops._common import (
    decoded_bytes,
    dtype_max,
    from_float,
    has_alpha,
    level_to_dtype,
    plane_pixels,
    require_dtype,
)
from dagflow.ops.backends import CUPY, array_function, common_backends
from dagflow.ops.registry import Param, register_op
from dagflow.ops.tiling import pointwise, reduction

__all__ = [
    "LUMA_WEIGHTS",
    "convert",
    "convert_dtype_array",
    "convert_space_array",
    "equalize",
    "equalize_array",
    "exact_histogram",
    "grayscale",
    "luma_array",
    "normalize",
    "normalize_array",
    "otsu_threshold",
    "threshold",
    "threshold_array",
]

#: ITU-R BT.601 luma weights for R, G, B.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
_LUMA_INT = (299, 587, 114)

_DTYPES = ("uint8", "uint16", "float32")
_SPACES = ("gray", "graya", "rgb", "rgba")
_CHANNELS = {space: n for n, space in SPACES_BY_CHANNELS.items()}


def _space_of(image: Image) -> str:
    space = image.meta.get("space")
    if space in _CHANNELS and _CHANNELS[space] == image.channels:
        return space
    if image.channels in SPACES_BY_CHANNELS:
        return SPACES_BY_CHANNELS[image.channels]
    raise BadInputError("unsupported_space",
                        f"an image with {image.channels} channels has no colour space")


def _lut_apply(arr: np.ndarray, lut: np.ndarray) -> np.ndarray:
    return lut[arr]


def _histogram_memory(header: Mapping[str, Any], channels_at_once: int) -> float:
    """Input, a copy and the output, plus a contiguous copy of the samples counted at
    once (``channels_at_once`` colour channels, or one) where they are not contiguous."""
    counted = plane_pixels(header) * min(channels_at_once, header.get("channels", 3))
    return decoded_bytes(header) * 3 + counted * header.get("itemsize", 1)


#: Samples counted per call of OpenCV's histogram: its float32 bins count exactly up to
#: 2**24, so larger images are counted in parts and summed in int64.
_HIST_PART = 1 << 24


def exact_histogram(values: np.ndarray) -> np.ndarray:
    """The exact histogram of 8- or 16-bit ``values`` (any shape): int64 counts of every
    level, 256 or 65536 bins.

    OpenCV's ``calcHist`` counts (15x faster than ``np.bincount``, which first widens
    every sample to 64 bits), in parts small enough that its float32 counts are exact
    integers.

    Examples
    --------
    >>> exact_histogram(np.array([[0, 3], [3, 255]], np.uint8))[[0, 3, 255]].tolist()
    [1, 2, 1]
    """
    bins = _hist_bins(values.dtype)
    if bins is None:
        raise ValueError(f"exact_histogram counts uint8 or uint16 values, not {values.dtype}")
    from dagflow._opencv import cv2

    flat = np.ascontiguousarray(values).reshape(-1)
    counts = np.zeros(bins, dtype=np.int64)
    for start in range(0, flat.size, _HIST_PART):
        part = flat[start:start + _HIST_PART].reshape(1, -1)
        found = cv2().calcHist([part], [0], None, [bins], [0, bins]).ravel()
        counts += found.astype(np.int64)
    return counts


def _hist_bins(dtype: np.dtype) -> int | None:
    """The exact histogram size for small unsigned integer dtypes, else ``None``."""
    if dtype == np.uint8:
        return 256
    if dtype == np.uint16:
        return 65536
    return None


# --------------------------------------------------------------------------- luma


def luma_array(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of ``rgb`` (y, x, 3) as (y, x, 1) in the same dtype.

    Integer images use exact integer arithmetic, ``(299 R + 587 G + 114 B + 500) // 1000``;
    float images use the float weights.
    """
    if rgb.dtype.kind in "ui":
        acc = np.zeros(rgb.shape[:2], dtype=np.int64 if rgb.dtype.itemsize > 2 else np.int32)
        for ch, weight in enumerate(_LUMA_INT):
            acc += rgb[:, :, ch].astype(acc.dtype) * weight
        acc += 500
        acc //= 1000
        return acc.astype(rgb.dtype)[:, :, None]
    out = np.zeros(rgb.shape[:2], dtype=np.float32)
    for ch, weight in enumerate(LUMA_WEIGHTS):
        out += rgb[:, :, ch].astype(np.float32) * np.float32(weight)
    return out.astype(rgb.dtype)[:, :, None]


# --------------------------------------------------------------------------- normalize


def _percentiles_from_counts(counts: np.ndarray, qs: Sequence[float]) -> list[float]:
    """Percentiles (numpy's ``linear`` method) of the values whose histogram is ``counts``."""
    cum = np.cumsum(counts)
    n = int(cum[-1])
    out = []
    for q in qs:
        k = q / 100.0 * (n - 1)
        lo, hi = int(np.floor(k)), int(np.ceil(k))
        v_lo = int(np.searchsorted(cum, lo, side="right"))
        v_hi = int(np.searchsorted(cum, hi, side="right"))
        out.append(v_lo + (v_hi - v_lo) * (k - lo))
    return out


def _percentiles(values: np.ndarray, qs: Sequence[float]) -> list[float]:
    bins = _hist_bins(values.dtype)
    if bins is not None:
        return _percentiles_from_counts(exact_histogram(values), qs)
    return [float(v) for v in np.percentile(values, qs)]


def _stretch(values: np.ndarray, lo: float, hi: float, dtype: np.dtype) -> np.ndarray:
    top = dtype_max(dtype)
    if hi <= lo:
        return values.copy()
    bins = _hist_bins(dtype)
    if bins is not None:
        levels = np.arange(bins, dtype=np.float64)
        lut = from_float(np.clip((levels - lo) * (top / (hi - lo)), 0, top), dtype)
        return _lut_apply(values, lut)
    out = (values.astype(np.float32) - np.float32(lo)) * np.float32(top / (hi - lo))
    return from_float(np.clip(out, 0, top), dtype)


@array_function(lazy=CUPY)
def normalize_array(
    arr: np.ndarray,
    low: float = 1.0,
    high: float = 99.0,
    *,
    per_channel: bool = False,
    alpha: bool = False,
) -> np.ndarray:
    """Stretch so the ``low`` and ``high`` percentiles map to 0 and the dtype's maximum.

    Values outside are clipped. ``out = clip((x - p_low) / (p_high - p_low) * max)``,
    rounded; percentiles as :func:`numpy.percentile` (``linear``). A channel whose two
    percentiles are equal is left unchanged.

    Parameters
    ----------
    arr
        Pixels ``(y, x, c)``.
    low, high
        Percentiles, 0-100.
    per_channel
        One stretch per colour channel (changes colour balance) instead of one joint
        stretch over all colour channels (keeps hue).
    alpha
        Whether the last channel is alpha (excluded and copied unchanged).

    Returns
    -------
    numpy.ndarray
        The stretched pixels in ``arr``'s dtype.
    """
    require_dtype(arr, "normalize")
    n_colour = arr.shape[2] - 1 if alpha else arr.shape[2]
    out = arr.copy()
    if per_channel:
        for ch in range(n_colour):
            lo, hi = _percentiles(arr[:, :, ch], (low, high))
            out[:, :, ch] = _stretch(arr[:, :, ch], lo, hi, arr.dtype)
    else:
        colour = arr[:, :, :n_colour]
        lo, hi = _percentiles(colour, (low, high))
        out[:, :, :n_colour] = _stretch(colour, lo, hi, arr.dtype)
    return out


def _normalize_memory(header: Mapping[str, Any], params: Mapping[str, Any]) -> float:
    return _histogram_memory(header, 3)


def _normalize_check(params: Mapping[str, Any]) -> list[str]:
    if params["low"] >= params["high"]:
        return [f"parameters 'low' and 'high': expected low < high, got "
                f"{params['low']!r} and {params['high']!r}"]
    return []


# --------------------------------------------------------------------------- tiled histograms


def _histogram_tiles(op: str, dtype: Any) -> str | None:
    if dtype is None or np.dtype(dtype) in (np.uint8, np.uint16):
        return None
    return f"tiled {op} needs an 8- or 16-bit image"


def _normalize_tiles(params: Mapping[str, Any], dtype: Any) -> str | None:
    return _histogram_tiles("normalize", dtype)


def _equalize_tiles(params: Mapping[str, Any], dtype: Any) -> str | None:
    return _histogram_tiles("equalize", dtype)


def _colour_counts(image: Image, **params: Any) -> np.ndarray:
    """The exact histogram of each colour channel of a block: ``(colour channels, bins)``."""
    arr = np.asarray(image.data)
    n_colour = image.channels - 1 if has_alpha(image) else image.channels
    return np.stack([exact_histogram(arr[:, :, c]) for c in range(n_colour)])


def _lut_dtype(counts: np.ndarray) -> np.dtype:
    """The dtype whose exact histogram ``counts`` is (its bins say)."""
    return np.dtype(np.uint8) if counts.shape[1] == 256 else np.dtype(np.uint16)


def _normalize_luts(counts: np.ndarray, *, low: float, high: float, per_channel: bool
                    ) -> list[np.ndarray | None]:
    """:func:`normalize_array`'s lookup table per colour channel from the whole image's
    histograms (``None``: the channel stays as it is)."""
    dtype = _lut_dtype(counts)
    levels = np.arange(counts.shape[1], dtype=np.float64)
    top = dtype_max(dtype)
    n_colour = counts.shape[0]
    groups = [[c] for c in range(n_colour)] if per_channel else [list(range(n_colour))]
    luts: list[np.ndarray | None] = []
    for group in groups:
        lo, hi = _percentiles_from_counts(counts[group].sum(axis=0), (low, high))
        lut = None if hi <= lo else from_float(
            np.clip((levels - lo) * (top / (hi - lo)), 0, top), dtype)
        luts.extend([lut] * len(group))
    return luts


def _apply_luts(image: Image, luts: list[np.ndarray | None], **params: Any) -> Image:
    block = np.asarray(image.data)
    out = block.copy()
    for c, lut in enumerate(luts):
        if lut is not None:
            out[:, :, c] = lut[block[:, :, c]]
    return image.replace(out)


@register_op(
    "normalize",
    params=[
        Param("low", float, 1.0, "percentile mapped to black", minimum=0, maximum=100),
        Param("high", float, 99.0, "percentile mapped to full intensity",
              minimum=0, maximum=100),
        Param("per_channel", bool, False, "stretch each colour channel on its own"),
    ],
    memory=_normalize_memory,
    check=_normalize_check,
    tiling=reduction(_colour_counts, _apply_luts, finish=_normalize_luts,
                     why_not=_normalize_tiles),
    backends=common_backends(normalize_array),
)
def normalize(
    image: Image, *, low: float = 1.0, high: float = 99.0, per_channel: bool = False
) -> Image:
    """Percentile contrast stretch to the dtype's full range; alpha and dtype are kept.

    Parameters
    ----------
    image
        The input image.
    low, high
        The percentiles mapped to 0 and to full intensity.
    per_channel
        Stretch each colour channel separately instead of jointly.

    Returns
    -------
    Image
        The stretched image.
    """
    data = normalize_array(image.data, low, high, per_channel=per_channel,
                           alpha=has_alpha(image))
    return image.replace(data)


# --------------------------------------------------------------------------- convert


@array_function(lazy=CUPY)
def convert_dtype_array(arr: np.ndarray, dtype: Any) -> np.ndarray:
    """Convert ``arr`` to ``dtype`` (uint8, uint16, float32) with explicit scaling.

    ``uint16 -> uint8`` is ``round(x / 257)``; ``uint8 -> uint16`` is ``x * 257``;
    floats are 0-1: ``float -> int`` is ``round(clip(x, 0, 1) * max)`` and
    ``int -> float`` is ``x / max``; other integers (signed, 32-bit) have their dtype's
    whole range mapped onto the target's (``int16`` -32768..32767 -> 0..255).
    """
    src, dst = np.dtype(arr.dtype), np.dtype(dtype)
    if src == dst:
        return arr.copy()
    if src == np.uint16 and dst == np.uint8:
        # round(x / 257) as a multiply and a shift (exact for every 16-bit x; numpy's
        # integer division is a slow scalar loop)
        return ((arr.astype(np.uint32) * 255 + 32895) >> 16).astype(np.uint8)
    if src == np.uint8 and dst == np.uint16:
        return arr.astype(np.uint16) * np.uint16(257)
    if src.kind == "f" and dst.kind == "f":
        return arr.astype(dst)
    if src.kind == "f":
        top = dtype_max(dst)
        return from_float(np.clip(arr.astype(np.float32), 0, 1) * np.float32(top), dst)
    if dst.kind == "f":
        return (arr.astype(dst) / dst.type(dtype_max(src))).astype(dst)
    # other integer pairs (signed and 32-bit TIFF samples): the source dtype's whole range,
    # min..max, onto the target's, as the writers convert them
    low, high = float(np.iinfo(src).min), float(np.iinfo(src).max)
    lo_dst, hi_dst = float(np.iinfo(dst).min), float(np.iinfo(dst).max)
    scaled = (arr.astype(np.float64) - low) * ((hi_dst - lo_dst) / (high - low)) + lo_dst
    return from_float(scaled, dst)


def _opaque(shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    return np.full((*shape, 1), dtype_max(dtype), dtype=dtype)


def _flatten_alpha(colour: np.ndarray, alpha: np.ndarray,
                   background: Sequence[float] | float | None) -> np.ndarray:
    if background is None:
        return colour
    dtype = colour.dtype
    top = np.float32(dtype_max(dtype))
    levels = [background] * colour.shape[2] if isinstance(background, int | float) \
        else list(background)
    if len(levels) == 1:
        levels = levels * colour.shape[2]
    if len(levels) != colour.shape[2]:
        raise BadInputError("shape_mismatch", f"background {background!r} does not match "
                            f"{colour.shape[2]} colour channels")
    a = alpha[:, :, 0].astype(np.float32) / top
    out = np.empty_like(colour)
    for ch in range(colour.shape[2]):
        bg = np.float32(level_to_dtype(levels[ch], dtype))
        out[:, :, ch] = from_float(colour[:, :, ch] * a + bg * (1 - a), dtype)
    return out


@array_function(lazy=CUPY)
def convert_space_array(
    arr: np.ndarray,
    src: str,
    dst: str,
    *,
    background: Sequence[float] | float | None = None,
) -> np.ndarray:
    """Convert ``arr`` between the colour spaces ``gray``, ``graya``, ``rgb``, ``rgba``.

    Colour to gray uses BT.601 luma (:func:`luma_array`); gray to colour replicates; an
    added alpha channel is opaque; a dropped alpha channel is discarded, or, with
    ``background`` (8-bit levels, one or per colour channel), composited over it first.
    """
    if src == dst:
        return arr.copy()
    src_alpha, dst_alpha = src in ("graya", "rgba"), dst in ("graya", "rgba")
    colour = arr[:, :, :-1] if src_alpha else arr
    alpha = arr[:, :, -1:] if src_alpha else None
    if alpha is not None and not dst_alpha:
        colour = _flatten_alpha(colour, alpha, background)
    src_rgb, dst_rgb = src.startswith("rgb"), dst.startswith("rgb")
    if src_rgb and not dst_rgb:
        colour = luma_array(colour)
    elif dst_rgb and not src_rgb:
        colour = np.repeat(colour, 3, axis=2)
    if not dst_alpha:
        return np.ascontiguousarray(colour)
    if alpha is None:
        alpha = _opaque(arr.shape[:2], arr.dtype)
    return np.concatenate([colour, alpha], axis=2)


def _convert_check(params: Mapping[str, Any]) -> list[str]:
    problems = []
    if params["dtype"] is None and params["space"] is None:
        problems.append("convert needs at least one of 'dtype' or 'space'")
    bg = params.get("background")
    if isinstance(bg, list | tuple) and (
            len(bg) not in (1, 3)
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bg)):
        problems.append(f"parameter 'background': expected a level or [r, g, b] levels, "
                        f"got {bg!r}")
    return problems


def _convert_output(header: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if params.get("space"):
        out.update(channels=_CHANNELS.get(params["space"], header["channels"]),
                   space=params["space"])
    if params.get("dtype"):
        out["dtype"] = params["dtype"]
    return out


def _convert_memory(header: Mapping[str, Any], params: Mapping[str, Any]) -> float:
    out_item = {"uint8": 1, "uint16": 2, "float32": 4}.get(params.get("dtype") or "",
                                                           header.get("itemsize", 1))
    channels = _CHANNELS.get(params.get("space") or "", header.get("channels", 3))
    out = plane_pixels(header) * channels * max(out_item, header.get("itemsize", 1))
    return decoded_bytes(header) + 2 * out + plane_pixels(header) * 4


@register_op(
    "convert",
    params=[
        Param("dtype", str, None, "output pixel type (explicit scaling)",
              choices=_DTYPES, nullable=True),
        Param("space", str, None, "output colour space", choices=_SPACES, nullable=True),
        Param("background", (float, list), None, "when dropping alpha, composite over "
              "this colour (8-bit levels) instead of discarding it", minimum=0,
              maximum=255, nullable=True),
    ],
    memory=_convert_memory,
    check=_convert_check,
    output=_convert_output,
    tiling="pointwise",
    backends=common_backends(convert_dtype_array, convert_space_array),
)
def convert(
    image: Image,
    *,
    dtype: str | None = None,
    space: str | None = None,
    background: Sequence[float] | float | None = None,
) -> Image:
    """Change the pixel type (with explicit scaling) and/or the colour space.

    Parameters
    ----------
    image
        The input image (1-4 channels).
    dtype
        ``uint8``, ``uint16`` or ``float32`` (0-1), see :func:`convert_dtype_array`.
    space
        ``gray``, ``graya``, ``rgb`` or ``rgba``, see :func:`convert_space_array`.
    background
        Colour to composite over when alpha is dropped; ``None`` discards alpha.

    Returns
    -------
    Image
        The converted image.
    """
    arr = image.data
    require_dtype(arr, "convert")
    meta: dict[str, Any] = {}
    if space is not None:
        arr = convert_space_array(arr, _space_of(image), space, background=background)
        meta["space"] = space
    if dtype is not None:
        arr = convert_dtype_array(arr, dtype)
    return image.replace(arr, **meta)


def _grayscale_memory(header: Mapping[str, Any], params: Mapping[str, Any]) -> float:
    # input, output, the 32-bit luma accumulator and a 32-bit channel at a time
    return decoded_bytes(header) * 1.5 + plane_pixels(header) * 12


def _grayscale_output(header: Mapping[str, Any], params: Mapping[str, Any]
                      ) -> dict[str, Any]:
    alpha = params.get("keep_alpha", True) and header["channels"] in (2, 4)
    return {"channels": 2, "space": "graya"} if alpha else {"channels": 1, "space": "gray"}


@register_op(
    "grayscale",
    params=[Param("keep_alpha", bool, True, "keep an alpha channel (output graya)")],
    memory=_grayscale_memory,
    output=_grayscale_output,
    tiling="pointwise",
)
def grayscale(image: Image, *, keep_alpha: bool = True) -> Image:
    """Convert to gray with BT.601 luma; alpha is kept (graya) unless ``keep_alpha`` is off.

    Parameters
    ----------
    image
        The input image.
    keep_alpha
        Keep an alpha channel; otherwise it is discarded.

    Returns
    -------
    Image
        A 1-channel (or 2-channel with alpha) image of the same dtype.
    """
    src = _space_of(image)
    dst = "graya" if keep_alpha and src in ("graya", "rgba") else "gray"
    data = convert_space_array(np.asarray(image.data), src, dst)
    return image.replace(data, space=dst)


# --------------------------------------------------------------------------- equalize

_FLOAT_BINS = 65536


def equalize_array(arr: np.ndarray, *, alpha: bool = False) -> np.ndarray:
    """Histogram equalisation of each colour channel.

    ``out = round((cdf(x) - cdf_min) / (n - cdf_min) * max)`` with an exact histogram of
    256 bins for 8-bit, 65536 for 16-bit; floats are binned into 65536 bins over 0-1.
    A constant channel is left unchanged.
    """
    require_dtype(arr, "equalize")
    n_colour = arr.shape[2] - 1 if alpha else arr.shape[2]
    out = arr.copy()
    bins = _hist_bins(arr.dtype)
    top = dtype_max(arr.dtype)
    for ch in range(n_colour):
        plane = arr[:, :, ch]
        if bins is not None:
            index = plane
            counts = exact_histogram(plane)
        else:
            index = np.clip(np.rint(plane.astype(np.float64) * (_FLOAT_BINS - 1)), 0,
                            _FLOAT_BINS - 1).astype(np.intp)
            counts = np.bincount(index.ravel(), minlength=_FLOAT_BINS)
        cdf = np.cumsum(counts)
        n = int(cdf[-1])
        cdf_min = int(cdf[np.flatnonzero(counts)[0]])
        if n == cdf_min:
            continue
        lut = from_float((cdf - cdf_min) / (n - cdf_min) * top, arr.dtype)
        out[:, :, ch] = lut[index]
    return out


def _equalize_luts(counts: np.ndarray, **params: Any) -> list[np.ndarray | None]:
    """:func:`equalize_array`'s lookup table per colour channel from the whole image's
    histograms (``None``: a constant channel stays as it is)."""
    dtype = _lut_dtype(counts)
    top = dtype_max(dtype)
    luts: list[np.ndarray | None] = []
    for channel in counts:
        cdf = np.cumsum(channel)
        n = int(cdf[-1])
        nonzero = np.flatnonzero(channel)
        cdf_min = int(cdf[nonzero[0]]) if len(nonzero) else n
        luts.append(None if n == cdf_min else
                    from_float((cdf - cdf_min) / (n - cdf_min) * top, dtype))
    return luts


def _equalize_memory(header: Mapping[str, Any], params: Mapping[str, Any]) -> float:
    return _histogram_memory(header, 1)


@register_op("equalize", memory=_equalize_memory,
             tiling=reduction(_colour_counts, _apply_luts, finish=_equalize_luts,
                              why_not=_equalize_tiles))
def equalize(image: Image) -> Image:
    """Histogram equalisation per colour channel (8- and 16-bit); alpha and dtype are kept.

    Parameters
    ----------
    image
        The input image.

    Returns
    -------
    Image
        The equalised image.
    """
    return image.replace(equalize_array(np.asarray(image.data), alpha=has_alpha(image)))


# --------------------------------------------------------------------------- threshold


def otsu_threshold(gray: np.ndarray) -> float:
    """Otsu's threshold of ``gray``: pixels ``> t`` are foreground.

    Maximises the between-class variance ``w0 w1 (mu0 - mu1)^2`` over every candidate
    level of an exact histogram (8/16-bit) or of 4096 bins (floats); the first maximum
    wins.
    """
    bins = _hist_bins(gray.dtype)
    if bins is not None:
        counts = exact_histogram(gray).astype(np.float64)
        levels = np.arange(bins, dtype=np.float64)
    else:
        counts, edges = np.histogram(gray, bins=4096)
        counts = counts.astype(np.float64)
        levels = (edges[:-1] + edges[1:]) / 2
    total = counts.sum()
    w0 = np.cumsum(counts)
    w1 = total - w0
    sum0 = np.cumsum(counts * levels)
    sum_all = sum0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mu0 = sum0 / w0
        mu1 = (sum_all - sum0) / w1
        between = w0 * w1 * (mu0 - mu1) ** 2
    between[~np.isfinite(between)] = -1.0
    return float(levels[int(np.argmax(between))])


def threshold_array(arr: np.ndarray, value: float | None = None, *,
                    method: str | None = None, alpha: bool = False) -> np.ndarray:
    """Binary image (y, x, 1): full intensity where the gray level is ``> value``, else 0.

    Colour images are reduced to BT.601 luma first; alpha is dropped. ``value`` is in the
    image's own units; ``method="otsu"`` computes it with :func:`otsu_threshold`.
    """
    require_dtype(arr, "threshold")
    colour = arr[:, :, :-1] if alpha else arr
    gray = luma_array(colour) if colour.shape[2] == 3 else colour[:, :, :1]
    if method == "otsu":
        value = otsu_threshold(gray)
    if value is None:
        raise ValueError("threshold_array needs a value or method='otsu'")
    top = dtype_max(arr.dtype)
    out = np.zeros(gray.shape, dtype=arr.dtype)
    out[gray > value] = top
    return out


def _threshold_output(header: Mapping[str, Any], params: Mapping[str, Any]
                      ) -> dict[str, Any]:
    return {"channels": 1, "space": "gray"}


def _threshold_tiles(params: Mapping[str, Any], dtype: Any) -> str | None:
    return "threshold by otsu needs the whole image" if params.get("method") else None


def _threshold_check(params: Mapping[str, Any]) -> list[str]:
    if (params["value"] is None) == (params["method"] is None):
        return ["threshold needs exactly one of 'value' (a level) or 'method' ('otsu')"]
    return []


@register_op(
    "threshold",
    params=[
        Param("value", float, None, "gray level in 8-bit levels; above it is white",
              minimum=0, maximum=255, nullable=True),
        Param("method", str, None, "compute the level automatically", choices=("otsu",),
              nullable=True),
    ],
    memory_factor=2.0,
    check=_threshold_check,
    output=_threshold_output,
    tiling=pointwise(why_not=_threshold_tiles),
)
def threshold(image: Image, *, value: float | None = None, method: str | None = None) -> Image:
    """Binarise to one channel: 0 or the dtype's maximum, at a level or by Otsu's method.

    Parameters
    ----------
    image
        The input image; colour is reduced to luma, alpha dropped.
    value
        The level in 8-bit units (scaled to the dtype); pixels above it become white.
    method
        ``otsu`` to choose the level from the image's histogram.

    Returns
    -------
    Image
        A ``gray`` image of the same dtype with values 0 and full intensity.
    """
    arr = np.asarray(image.data)
    level = None if value is None else level_to_dtype(value, arr.dtype)
    data = threshold_array(arr, level, method=method, alpha=has_alpha(image))
    return image.replace(data, space="gray")

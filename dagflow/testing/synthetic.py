"""Synthetic, photograph-like pixels for tests and benchmarks.

:func:`photo_like` makes deterministic content with the statistics codecs and image ops
care about -- smooth gradients, soft blobs, hard-edged shapes, stripes and grain --
rather than flat colour, which would make JPEG sizes, timings and resampling tests
meaningless. It is built as a sum of separable (rank-one) terms, so a whole image is one
matrix product: 2048 x 1536 RGB takes a few tens of milliseconds.

This module owns pixel generation only; files are written by
:mod:`dagflow.testing.samples` and :mod:`dagflow.testing.badcorpus`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["asymmetric_pattern", "photo_like"]

_BLOBS = 10
_SHAPES = 6
_WAVES = 4


def photo_like(
    height: int,
    width: int,
    seed: int = 0,
    channels: int = 3,
    dtype: Any = np.uint8,
) -> np.ndarray:
    """A deterministic photograph-like image.

    Parameters
    ----------
    height, width
        Size in pixels.
    seed
        Same seed, same pixels (on every platform numpy's ``default_rng`` supports).
    channels
        Number of channels (1 grey, 3 RGB, 4 RGBA with a smooth alpha...).
    dtype
        ``uint8``, ``uint16`` (full 16-bit range, not 8-bit values shifted) or a float
        type (values in [0, 1]).

    Returns
    -------
    numpy.ndarray
        ``(height, width, channels)`` of ``dtype``.

    Examples
    --------
    >>> a = photo_like(48, 64, seed=1)
    >>> a.shape, a.dtype.name, bool((a == photo_like(48, 64, seed=1)).all())
    ((48, 64, 3), 'uint8', True)
    >>> int(a.std()) > 10
    True
    """
    if height < 1 or width < 1 or channels < 1:
        raise ValueError(f"need a positive size and channel count, got {height}x{width}x{channels}")
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)
    ys: list[np.ndarray] = [np.ones_like(y), y]
    xs: list[np.ndarray] = [np.ones_like(x), x]
    # Gradients: a + b*x (first pair) and c*y (second pair), per channel weights below.
    for _ in range(_BLOBS):
        cy, cx = rng.uniform(0.0, 1.0, 2)
        sy, sx = rng.uniform(0.04, 0.3, 2)
        ys.append(np.exp(-(((y - cy) / sy) ** 2)))
        xs.append(np.exp(-(((x - cx) / sx) ** 2)))
    for _ in range(_SHAPES):
        start = rng.uniform(-0.1, 0.9, 2)
        (y0, x0), (y1, x1) = start, start + rng.uniform(0.05, 0.45, 2)
        ys.append(((y >= y0) & (y <= y1)).astype(np.float32))
        xs.append(((x >= x0) & (x <= x1)).astype(np.float32))
    for _ in range(_WAVES):
        fy, fx = rng.uniform(2.0, 40.0, 2)
        py, px = rng.uniform(0.0, 2 * np.pi, 2)
        ys.append(np.sin(2 * np.pi * fy * y + py).astype(np.float32))
        xs.append(np.cos(2 * np.pi * fx * x + px).astype(np.float32))
    basis_y = np.stack(ys, axis=1)  # (H, K)
    basis_x = np.stack(xs, axis=0)  # (K, W)
    k = basis_y.shape[1]
    weights = rng.normal(0.0, 1.0, (k, channels)).astype(np.float32)
    weights[0] = rng.uniform(0.2, 0.8, channels)  # base level
    weights[1:3] *= 0.8  # gradients
    weights[3 : 3 + _BLOBS] *= 1.3  # soft blobs
    weights[3 + _BLOBS : 3 + _BLOBS + _SHAPES] *= 0.5  # hard-edged shapes
    weights[-_WAVES:] *= 0.08  # gentle stripes
    dtype = np.dtype(dtype)
    top = _top(dtype)
    # Normalise each channel to [0.05, 0.95] x top, using the range of a subsampled
    # render, folded into the weights so the full-size render is already in output units.
    sample = basis_y[::4] @ (basis_x[:, ::4, None] * weights[:, None, :]).reshape(k, -1)
    sample = sample.reshape(sample.shape[0], -1, channels)
    low = sample.min(axis=(0, 1))
    span = np.maximum(sample.max(axis=(0, 1)) - low, 1e-6)
    scale = (0.9 * top / span).astype(np.float32)
    integer = not np.issubdtype(dtype, np.floating)
    # Offsets folded in too: the grain's mean, and +0.5 so the final cast rounds.
    offset = 0.05 * top - low * scale - 0.015 * top + (0.5 if integer else 0.0)
    weights *= scale
    weights[0] += offset.astype(np.float32)
    mixed = (basis_x[:, :, None] * weights[:, None, :]).reshape(k, width * channels)
    image = basis_y @ mixed  # (H, W * C)
    # Grain: uniform noise of +-1.5 % of the range, independent per channel.
    grain = np.frombuffer(rng.bytes(height * width * channels), dtype=np.uint8)
    noise = np.multiply(grain.reshape(image.shape), np.float32(0.03 * top / 255), dtype=np.float32)
    image += noise
    np.clip(image, 0.0, top, out=image)
    return image.reshape(height, width, channels).astype(dtype, copy=False)

def _top(dtype: np.dtype) -> float:
    if np.issubdtype(dtype, np.floating):
        return 1.0
    if dtype == np.uint8 or dtype == np.uint16:
        return float(np.iinfo(dtype).max)
    raise ValueError(f"photo_like makes uint8, uint16 or float pixels, not {dtype}")


def asymmetric_pattern(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo-like RGB image whose orientation is obvious at a glance and to a test.

    Solid markers sit in three corners -- red top-left (large), green top-right, blue
    bottom-left -- and the bottom-right stays photographic, so every one of the eight
    EXIF orientations gives a different picture.

    Examples
    --------
    >>> a = asymmetric_pattern(60, 80)
    >>> a[2, 2].tolist(), a[2, -3].tolist(), a[-3, 2].tolist()
    ([230, 20, 20], [20, 200, 40], [30, 40, 220])
    """
    image = photo_like(height, width, seed=seed, channels=3)
    big = max(2, min(height, width) // 4)
    small = max(2, min(height, width) // 6)
    image[:big, :big] = (230, 20, 20)
    image[:small, -small:] = (20, 200, 40)
    image[-small:, :small] = (30, 40, 220)
    return image

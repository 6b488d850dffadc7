"""Helpers shared by the built-in ops: dtype ranges, alpha handling, memory arithmetic.

Conventions every built-in op follows, kept here so they are written once:

- Pixel values are in the image's own dtype: ``uint8`` (0-255), ``uint16`` (0-65535) or
  floating point (nominally 0-1). An op keeps the input's dtype unless changing it is
  its purpose, rounding to nearest and clipping to the dtype's range.
- Colour *levels given as parameters* (``fill``, ``background``, ``threshold``,
  ``value``) are in 8-bit units, 0-255, and scaled to the image's dtype (x257 for
  16-bit, /255 for floats), so that one workflow behaves the same on 8- and 16-bit
  inputs.
- An image has an alpha channel when ``meta["space"]`` is ``graya`` or ``rgba`` (and it
  has 2 or 4 channels); the alpha channel is the last one.

This module holds no op and registers nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from dagflow.exceptions import BadInputError
from dagflow.image import Image

__all__ = [
    "ALPHA_SPACES",
    "apply_to_colour",
    "decoded_bytes",
    "dtype_max",
    "from_float",
    "has_alpha",
    "level_to_dtype",
    "plane_pixels",
    "require_dtype",
]

#: Colour spaces whose last channel is alpha.
ALPHA_SPACES = frozenset({"graya", "rgba"})


def has_alpha(image: Image) -> bool:
    """Whether ``image``'s last channel is alpha (space ``graya``/``rgba``, 2 or 4 channels)."""
    return image.meta.get("space") in ALPHA_SPACES and image.channels in (2, 4)


def dtype_max(dtype: Any) -> float:
    """The value of full intensity: the integer maximum, or 1.0 for floating point."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        return float(np.iinfo(dtype).max)
    return 1.0


def from_float(values: np.ndarray, dtype: Any) -> np.ndarray:
    """Cast float ``values`` to ``dtype``: round to nearest and clip for integer dtypes."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        out = np.rint(values)
        np.clip(out, info.min, info.max, out=out)
        return out.astype(dtype)
    return values.astype(dtype, copy=False)


def level_to_dtype(level: float, dtype: Any) -> float:
    """An 8-bit level (0-255) in the units of ``dtype``."""
    return float(level) * dtype_max(dtype) / 255.0


def decoded_bytes(header: Mapping[str, Any]) -> int:
    """Bytes of the decoded image described by ``header`` (width, height, channels, itemsize)."""
    return int(header.get("width", 0) * header.get("height", 0)
               * header.get("channels", 3) * header.get("itemsize", 1))


def plane_pixels(header: Mapping[str, Any]) -> int:
    """Pixels of one channel of the image described by ``header``."""
    return int(header.get("width", 0) * header.get("height", 0))


def apply_to_colour(
    arr: np.ndarray, alpha: bool, func: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Apply ``func`` to each colour channel of ``arr`` (y, x, c); copy alpha unchanged.

    ``func`` receives one 2-D channel and returns the new channel in ``arr``'s dtype.
    """
    out = np.empty_like(arr)
    n_colour = arr.shape[2] - 1 if alpha else arr.shape[2]
    for c in range(n_colour):
        out[:, :, c] = func(arr[:, :, c])
    if alpha:
        out[:, :, -1] = arr[:, :, -1]
    return out


def require_dtype(arr: np.ndarray, op: str, kinds: str = "uif") -> None:
    """Raise :class:`BadInputError` when ``arr``'s dtype kind is not one of ``kinds``."""
    if np.dtype(arr.dtype).kind not in kinds:
        raise BadInputError(
            "unsupported_dtype", f"{op} cannot process images of dtype {arr.dtype}"
        )

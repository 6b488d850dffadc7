"""The image value that flows between nodes: pixels ``(y, x, c)`` plus metadata.

An :class:`Image` is a thin, cheap container (a numpy or cupy array and a dict), so that a
chunk of thumbnails moves through a node without the per-image cost of building an
``xarray.DataArray``. :meth:`Image.to_xarray` gives exactly that view, with dims
``("y", "x", "c")`` and the metadata in ``attrs``, for notebooks and for user code.

This module owns the type only; reading and writing live in :mod:`dagflow.io`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["Image", "as_image"]

#: Colour spaces an :class:`Image` can declare in ``meta["space"]``, by channel count.
SPACES_BY_CHANNELS = {1: "gray", 2: "graya", 3: "rgb", 4: "rgba"}


@dataclass(slots=True)
class Image:
    """Pixels with dims ``(y, x, c)`` and their metadata.

    Parameters
    ----------
    data
        A 3-D array ``(height, width, channels)``; 2-D input is given one channel.
    meta
        Metadata: ``space`` (``gray``, ``graya``, ``rgb``, ``rgba``), ``format`` of the
        source file, ``orientation`` (EXIF, 1 once applied), ``path`` and anything an op
        adds. Ops copy it forward and update what they change.

    Examples
    --------
    >>> import numpy as np
    >>> img = Image(np.zeros((4, 6), dtype=np.uint8))
    >>> img.height, img.width, img.channels, img.meta["space"]
    (4, 6, 1, 'gray')
    """

    data: Any
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data.ndim == 2:
            self.data = self.data[:, :, None]
        if self.data.ndim != 3:
            raise ValueError(f"an Image needs (y, x, c) pixels, got shape {self.data.shape}")
        self.meta.setdefault("space", SPACES_BY_CHANNELS.get(self.data.shape[2], "multi"))

    @property
    def height(self) -> int:
        return int(self.data.shape[0])

    @property
    def width(self) -> int:
        return int(self.data.shape[1])

    @property
    def channels(self) -> int:
        return int(self.data.shape[2])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def replace(self, data: Any, **meta: Any) -> Image:
        """A new image with ``data`` and the metadata updated by ``meta``.

        The colour space is re-derived from the channel count unless ``space`` is given.
        """
        new_meta = {**self.meta, **meta}
        if "space" not in meta:
            channels = data.shape[2] if data.ndim == 3 else 1
            if channels != self.channels:
                new_meta["space"] = SPACES_BY_CHANNELS.get(channels, "multi")
        return Image(data, new_meta)

    def describe(self) -> dict[str, Any]:
        """The fields a ``when:`` condition can test, for this image as it is now."""
        return {
            "width": self.width,
            "height": self.height,
            "channels": self.channels,
            "dtype": self.dtype.name,
            "format": self.meta.get("format"),
            "orientation": self.meta.get("source_orientation", self.meta.get("orientation", 1)),
            "space": self.meta.get("space"),
            "megapixels": self.width * self.height / 1e6,
        }

    def to_xarray(self) -> xr.DataArray:
        """This image as an ``xarray.DataArray`` with dims ``("y", "x", "c")``."""
        import xarray as xr

        return xr.DataArray(self.data, dims=("y", "x", "c"), attrs=dict(self.meta))

    @classmethod
    def from_xarray(cls, array: xr.DataArray) -> Image:
        """Build an image from a DataArray with dims ``y, x`` and optionally ``c``."""
        if "c" not in array.dims:
            array = array.expand_dims("c", axis=-1)
        array = array.transpose("y", "x", "c")
        return cls(array.data, dict(array.attrs))


def as_image(value: Any) -> Image:
    """Coerce an :class:`Image`, an ``xarray.DataArray`` or an array to :class:`Image`."""
    if isinstance(value, Image):
        return value
    if hasattr(value, "dims") and hasattr(value, "attrs"):
        return Image.from_xarray(value)
    return Image(np.asarray(value) if not hasattr(value, "__cuda_array_interface__") else value)

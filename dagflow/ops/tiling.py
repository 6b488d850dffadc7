"""How an op runs on an image larger than memory, block by block: its tiling declaration.

An op says how it tiles with ``register_op(..., tiling=...)``; :mod:`dagflow.tiled` reads
the declaration and holds no list of ops. A transform is one of:

=====================  ======================================================================
declaration            what :func:`dagflow.tiled.apply_op` does
=====================  ======================================================================
:func:`pointwise`      each output pixel depends on the same input pixel only: the op's own
                       function runs on each block as an image (``map_blocks``)
:func:`overlap`        each output pixel depends on the input within ``depth`` pixels (a
                       function of the parameters, e.g. ``ceil(truncate * sigma)``): the op
                       runs on each block with ``depth`` pixels of its neighbours, reflected
                       at the image's edges as the built-in filters' own edge mode, and the
                       margin is cut off (``map_overlap``); equal to the whole-image result
:func:`reduction`      a statistic of the whole image, then a pointwise map using it
                       (``normalize``, ``equalize``): ``summarize`` each block, ``combine``
                       the summaries (one pass over the image), ``finish`` once, ``apply``
                       to each block
:func:`lazy`           the op builds its own lazy result from the dask array (geometry:
                       ``resize``, ``crop``, ``flip``, ``rotate``)
``None``               not tileable (the default)
=====================  ======================================================================

A source declares how it opens an image lazily (:func:`source`), a sink how it writes
one band by band (:func:`sink`): a tiled workflow is a chain from such a source through
tileable transforms to such a sink. Any declaration may add ``why_not(params, dtype)``:
why the op cannot tile with these parameters on this dtype (``None`` when it can;
``dtype`` is ``None`` while planning, before the image is opened).

The block functions get :class:`~dagflow.image.Image` values whose metadata is the
image's (``space`` says whether the last channel is alpha); a pointwise or overlap op's
block has the op's output header's channels and dtype
(:meth:`~dagflow.ops.registry.OpSpec.output_header`) and the block's own size.

Examples
--------
A blur whose kernel reaches ``3 * sigma`` pixels:

>>> import math
>>> t = overlap(lambda params: math.ceil(3 * params["sigma"]))
>>> t.kind, t.overlap_depth({"sigma": 1.5})
('overlap', 5)

This module imports neither Dask nor the workflow layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "TRANSFORM_KINDS",
    "Tiling",
    "TilingKind",
    "as_tiling",
    "lazy",
    "overlap",
    "pointwise",
    "reduction",
    "sink",
    "source",
]

TilingKind = Literal["pointwise", "overlap", "reduction", "lazy", "source", "sink"]
#: ``why_not(params, dtype) -> reason or None``.
WhyNot = Callable[[Mapping[str, Any], Any], str | None]
#: The tiling kinds of a transform (one image in, one out).
TRANSFORM_KINDS = frozenset({"pointwise", "overlap", "reduction", "lazy"})


@dataclass(frozen=True)
class Tiling:
    """An op's tiling declaration; made by :func:`pointwise`, :func:`overlap`,
    :func:`reduction`, :func:`lazy`, :func:`source` or :func:`sink`.

    Attributes
    ----------
    kind
        ``pointwise``, ``overlap``, ``reduction``, ``lazy``, ``source`` or ``sink``.
    depth
        ``overlap``: pixels of context each side, an int or ``depth(params) -> int``.
    summarize, combine, finish, apply
        ``reduction``: ``summarize(image, **params) -> summary`` of one block,
        ``combine(a, b) -> summary`` of two (default ``a + b``),
        ``finish(summary, **params) -> state`` once for the whole image (default: the
        summary itself), ``apply(image, state, **params) -> Image`` on each block.
    build
        ``lazy``: ``build(array, meta, **params) -> array``, the op on a dask array
        ``(y, x, c)`` with the image's metadata.
    open
        ``source``: ``open(path, chunks, **params) -> xarray.DataArray``, lazy.
    write
        ``sink``: ``write(image, dest, *, client, band_bytes, **params) -> path``: writes
        the lazy image at ``dest`` plus the op's suffix, band by band.
    why_not
        ``why_not(params, dtype) -> reason or None``.
    """

    kind: TilingKind
    depth: int | Callable[[Mapping[str, Any]], int] | None = None
    summarize: Callable[..., Any] | None = None
    combine: Callable[[Any, Any], Any] | None = None
    finish: Callable[..., Any] | None = None
    apply: Callable[..., Any] | None = None
    build: Callable[..., Any] | None = None
    open: Callable[..., Any] | None = None
    write: Callable[..., Any] | None = None
    why_not: WhyNot | None = None

    def refusal(self, params: Mapping[str, Any], dtype: Any = None) -> str | None:
        """Why the op cannot tile with ``params`` on ``dtype`` (``None``: it can)."""
        return self.why_not(params, dtype) if self.why_not is not None else None

    def overlap_depth(self, params: Mapping[str, Any]) -> int:
        """The overlap in pixels each side for ``params`` (0 unless ``overlap``)."""
        if self.depth is None:
            return 0
        depth = self.depth(params) if callable(self.depth) else self.depth
        return int(depth)


def pointwise(*, why_not: WhyNot | None = None) -> Tiling:
    """Each output pixel depends on the same input pixel only (``convert``)."""
    return Tiling("pointwise", why_not=why_not)


def overlap(depth: int | Callable[[Mapping[str, Any]], int], *,
            why_not: WhyNot | None = None) -> Tiling:
    """Each output pixel depends on the input within ``depth`` pixels (``gaussian``:
    ``ceil(truncate * sigma)``); the op keeps the image's size and channels."""
    return Tiling("overlap", depth=depth, why_not=why_not)


def reduction(summarize: Callable[..., Any], apply: Callable[..., Any], *,
              finish: Callable[..., Any] | None = None,
              combine: Callable[[Any, Any], Any] | None = None,
              why_not: WhyNot | None = None) -> Tiling:
    """A whole-image statistic, then a pointwise map using it (``normalize``: a
    histogram, then lookup tables)."""
    return Tiling("reduction", summarize=summarize, apply=apply, finish=finish,
                  combine=combine, why_not=why_not)


def lazy(build: Callable[..., Any], *, why_not: WhyNot | None = None) -> Tiling:
    """The op builds its lazy result itself: ``build(array, meta, **params)``."""
    return Tiling("lazy", build=build, why_not=why_not)


def source(open: Callable[..., Any]) -> Tiling:
    """A source that opens an image lazily: ``open(path, chunks, **params)``."""
    return Tiling("source", open=open)


def sink(write: Callable[..., Any], *, why_not: WhyNot | None = None) -> Tiling:
    """A sink that writes a lazy image band by band:
    ``write(image, dest, *, client, band_bytes, **params) -> path``."""
    return Tiling("sink", write=write, why_not=why_not)


def as_tiling(value: Tiling | str | None) -> Tiling | None:
    """A :class:`Tiling` from a declaration (``"pointwise"`` is short for
    :func:`pointwise`).

    Raises
    ------
    TypeError
        For anything else.
    """
    if value is None or isinstance(value, Tiling):
        return value
    if value == "pointwise":
        return pointwise()
    raise TypeError(f"tiling= takes a dagflow.ops.tiling declaration (pointwise(), "
                    f"overlap(depth), reduction(...), lazy(build)), \"pointwise\" or None, "
                    f"not {value!r}")

"""Tiled execution: a workflow's ops on an image larger than memory, block by block.

An image opened with :func:`dagflow.open_image` is an ``xarray.DataArray`` backed by a
dask array (see :mod:`dagflow.io.lazy`). :func:`apply_op` runs a built-in op on it and
returns another lazy DataArray, equal to what the op computes on the whole image:

===============================  ===========================================================
ops                              how
===============================  ===========================================================
``gaussian``, ``median``,        ``map_overlap`` with the op's :func:`~dagflow.ops.filters.
``unsharp``                      filter_depth` (``boundary="reflect"``, the filters' own edge
                                 mode), equal to the whole-image result
``convert``, ``grayscale``,      blockwise (``map_blocks``)
``threshold`` (a ``value``)
``normalize``, ``equalize``      a first pass for the exact histogram (8- and 16-bit), then
                                 blockwise lookup tables
``resize``                       blockwise with an overlap of the Lanczos support: each
                                 block resamples its part of the output with Pillow's
                                 ``box`` (pure Lanczos, ``reducing_gap`` is not used), equal
                                 to the whole-image ``resize_array(..., reducing_gap=None)``
                                 within one level; any factor, integer or fractional
``crop``, ``flip``, ``rotate``   lazy slicing, flips and ``rot90`` (multiples of 90 degrees)
===============================  ===========================================================

:func:`write_tiff` writes the result as a tiled BigTIFF (or OME-TIFF) tile by tile,
computing one band of rows at a time (the next band computes while this one is written),
atomically; :func:`write_zarr` writes a zarr store when zarr is installed.

:func:`run_tiled` is what the runtime uses for an item too large for any worker: its
workflow must be a chain ``load -> tiled ops -> save (format tiff)``; one task on a
worker builds the graph (the client never touches pixels), submits the bands to the
cluster from the worker (``worker_client``) and writes the file, so the largest thing any
process holds is a few bands, whatever the image's size.

This module imports dask lazily and knows nothing of the workflow layer.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dagflow.exceptions import BadInputError

__all__ = [
    "TILED_OPS",
    "apply_op",
    "not_tileable",
    "resize_lazy",
    "run_tiled",
    "write_tiff",
    "write_zarr",
]

logger = logging.getLogger(__name__)

NEIGHBOURHOOD_OPS = frozenset({"gaussian", "median", "unsharp"})
POINT_OPS = frozenset({"convert", "grayscale", "threshold", "normalize", "equalize"})
GEOMETRY_OPS = frozenset({"resize", "crop", "flip", "rotate"})
#: Transform ops :func:`apply_op` runs on a lazy image.
TILED_OPS = NEIGHBOURHOOD_OPS | POINT_OPS | GEOMETRY_OPS

_ALPHA_SPACES = ("graya", "rgba")
_SPACE_BY_CHANNELS = {1: "gray", 2: "graya", 3: "rgb", 4: "rgba"}
_LANCZOS_SUPPORT = 3.0


def not_tileable(op: str, params: Mapping[str, Any], dtype: Any = np.uint8) -> str | None:
    """Why ``op`` cannot run tiled with ``params`` on ``dtype``, or ``None`` when it can.

    Examples
    --------
    >>> not_tileable("gaussian", {"sigma": 2.0}) is None
    True
    >>> not_tileable("threshold", {"method": "otsu", "value": None})
    'threshold by otsu needs the whole image'
    """
    if op not in TILED_OPS:
        return f"op {op!r} has no tiled implementation"
    if op == "threshold" and params.get("method"):
        return "threshold by otsu needs the whole image"
    if op in ("normalize", "equalize") and np.dtype(dtype) not in (np.uint8, np.uint16):
        return f"tiled {op} needs an 8- or 16-bit image"
    if op == "rotate":
        quarter = float(params.get("angle", 0)) / 90.0
        if not math.isclose(quarter, round(quarter), abs_tol=1e-9):
            return "tiled rotate takes multiples of 90 degrees only"
    return None


# --------------------------------------------------------------------------- executing


class _Ready:
    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


def _executor(client: Any = None) -> Callable[[Any], Any]:
    """``submit(collection) -> handle with .result()``: on ``client``, else the local
    scheduler (computed at once).

    On a client, an array is culled to what it needs and submitted without graph
    optimisation: the writer submits the next band while this one computes, and the two
    share blocks (the overlap); optimised separately, a shared key could come with two
    different tasks, which Dask's scheduler warns may deadlock.
    """
    if client is None:
        import dask

        return lambda obj: _Ready(dask.compute(obj)[0])

    def submit(obj: Any) -> Any:
        import dask.array as da
        from dask.core import flatten

        if isinstance(obj, da.Array):
            graph = obj.__dask_graph__().cull(set(flatten(obj.__dask_keys__())))
            obj = da.Array(graph, obj.name, obj.chunks, meta=obj._meta)
            return client.compute(obj, optimize_graph=False)
        return client.compute(obj)

    return submit


# --------------------------------------------------------------------------- ops


def _meta(image: Any) -> dict[str, Any]:
    return dict(image.attrs)


def _alpha(meta: Mapping[str, Any], channels: int) -> bool:
    return meta.get("space") in _ALPHA_SPACES and channels in (2, 4)


def _wrap(array: Any, meta: Mapping[str, Any], space: str | None = None) -> Any:
    """A DataArray for ``array`` with ``meta`` updated to its size, dtype and space."""
    import xarray as xr

    meta = dict(meta)
    channels = int(array.shape[2])
    if space is not None:
        meta["space"] = space
    elif meta.get("channels") != channels:
        meta["space"] = _SPACE_BY_CHANNELS.get(channels, "multi")
    meta.update(height=int(array.shape[0]), width=int(array.shape[1]), channels=channels,
                dtype=np.dtype(array.dtype).name)
    return xr.DataArray(array, dims=("y", "x", "c"), attrs=meta)


def _overlap(array: Any, depth: int, func: Callable[[np.ndarray], np.ndarray]) -> Any:
    depth = int(depth)
    if depth <= 0:
        return array.map_blocks(func, dtype=array.dtype)
    return array.map_overlap(func, depth={0: depth, 1: depth, 2: 0},
                             boundary={0: "reflect", 1: "reflect", 2: "none"},
                             dtype=array.dtype, allow_rechunk=True)


def _with_channels(array: Any, func: Callable[[np.ndarray], np.ndarray], channels: int,
                   dtype: Any) -> Any:
    chunks = (array.chunks[0], array.chunks[1], (channels,))
    return array.map_blocks(func, dtype=np.dtype(dtype), chunks=chunks,
                            meta=np.empty((0, 0, 0), dtype=dtype))


def _histogram(array: Any, channels: int, submit: Callable[[Any], Any]) -> np.ndarray:
    """Exact per-channel histogram ``(channels, bins)`` of an 8/16-bit array (one pass)."""
    import dask

    bins = 256 if array.dtype == np.uint8 else 65536

    def count(block: np.ndarray) -> np.ndarray:
        return np.stack([np.bincount(block[:, :, c].ravel(), minlength=bins)
                         for c in range(channels)])

    parts = [dask.delayed(count)(b) for b in array[:, :, :channels].to_delayed().ravel()]
    total = dask.delayed(sum)(parts)
    return np.asarray(submit(total).result())


def apply_op(image: Any, op: str, params: Mapping[str, Any] | None = None, *,
             client: Any = None) -> Any:
    """Run the built-in ``op`` on a lazy image; the result is lazy too.

    Parameters
    ----------
    image
        An ``xarray.DataArray`` with dims ``y, x, c`` backed by a dask array (from
        :func:`dagflow.open_image`), ``attrs["space"]`` saying whether it has alpha.
    op, params
        The op and its parameters (defaults filled in as in a workflow).
    client
        Where the first pass of ``normalize`` / ``equalize`` computes (default: the
        local scheduler). Every other op computes nothing here.

    Returns
    -------
    xarray.DataArray
        The lazy result, its ``attrs`` updated (size, channels, dtype, space).

    Raises
    ------
    ValueError
        For an op that cannot run tiled (see :func:`not_tileable`).
    """
    from dagflow.ops.registry import get_op

    spec = get_op(op)
    resolved, problems = spec.resolve_params(dict(params or {}))
    if problems:
        raise ValueError(f"{op}: {'; '.join(problems)}")
    array = image.data
    meta = _meta(image)
    why = not_tileable(op, resolved, array.dtype)
    if why:
        raise ValueError(why)
    channels = int(array.shape[2])
    alpha = _alpha(meta, channels)
    submit = _executor(client)
    p = resolved
    if op in NEIGHBOURHOOD_OPS:
        from dagflow.ops import filters
        from dagflow.ops._common import dtype_max

        depth = filters.filter_depth(op, p)
        if op == "gaussian":
            def func(b: np.ndarray) -> np.ndarray:
                return filters.gaussian_array(b, p["sigma"], p["truncate"], alpha=alpha)
        elif op == "median":
            def func(b: np.ndarray) -> np.ndarray:
                return filters.median_array(b, p["size"], alpha=alpha)
        else:
            level = p["threshold"] * dtype_max(array.dtype) / 255.0

            def func(b: np.ndarray) -> np.ndarray:
                return filters.unsharp_array(b, p["sigma"], p["amount"], level, p["truncate"],
                                             alpha=alpha)
        return _wrap(_overlap(array, depth, func), meta)
    if op in ("convert", "grayscale", "threshold"):
        from dagflow.ops import intensity

        src = meta.get("space") if meta.get("space") in intensity._CHANNELS else \
            _SPACE_BY_CHANNELS.get(channels, "multi")
        if op == "convert":
            dst_space = p.get("space") or src
            out_c = intensity._CHANNELS.get(dst_space, channels)
            out_dtype = np.dtype(p["dtype"]) if p.get("dtype") else array.dtype

            def point(b: np.ndarray) -> np.ndarray:
                if p.get("space"):
                    b = intensity.convert_space_array(b, src, p["space"],
                                                      background=p.get("background"))
                if p.get("dtype"):
                    b = intensity.convert_dtype_array(b, p["dtype"])
                return b
            space = p.get("space")
        elif op == "grayscale":
            dst = "graya" if p["keep_alpha"] and src in _ALPHA_SPACES else "gray"
            out_c, out_dtype = intensity._CHANNELS[dst], array.dtype

            def point(b: np.ndarray) -> np.ndarray:
                return intensity.convert_space_array(b, src, dst)
            space = dst
        else:
            from dagflow.ops._common import level_to_dtype

            level = level_to_dtype(p["value"], array.dtype)
            out_c, out_dtype = 1, array.dtype

            def point(b: np.ndarray) -> np.ndarray:
                return intensity.threshold_array(b, level, alpha=alpha)
            space = "gray"
        return _wrap(_with_channels(array, point, out_c, out_dtype), meta, space)
    if op in ("normalize", "equalize"):
        return _wrap(_lut_op(array, op, p, alpha, submit), meta)
    if op == "resize":
        from dagflow.ops.geometry import resize_shape

        w, h = resize_shape(int(array.shape[1]), int(array.shape[0]),
                            long_side=p.get("long_side"), size=p.get("size"),
                            scale=p.get("scale"), allow_upscale=p.get("allow_upscale", False))
        return _wrap(resize_lazy(array, w, h, alpha=alpha), meta)
    if op == "crop":
        from dagflow.ops.geometry import crop_box

        x0, y0, w, h = crop_box(int(array.shape[1]), int(array.shape[0]), box=p.get("box"),
                                center=p.get("center"))
        return _wrap(array[y0:y0 + h, x0:x0 + w], meta)
    if op == "flip":
        flips = {"horizontal": (slice(None), slice(None, None, -1)),
                 "vertical": (slice(None, None, -1), slice(None)),
                 "both": (slice(None, None, -1), slice(None, None, -1))}
        return _wrap(array[flips[p["axis"]]], meta)
    import dask.array as da  # rotate by a multiple of 90 degrees

    k = round(float(p["angle"]) / 90.0) % 4
    return _wrap(da.rot90(array, k=k, axes=(0, 1)), meta)


def _lut_op(array: Any, op: str, p: Mapping[str, Any], alpha: bool,
            submit: Callable[[Any], Any]) -> Any:
    from dagflow.ops import intensity
    from dagflow.ops._common import dtype_max, from_float

    dtype = np.dtype(array.dtype)
    channels = int(array.shape[2])
    n_colour = channels - 1 if alpha else channels
    counts = _histogram(array, n_colour, submit)
    bins = counts.shape[1]
    levels = np.arange(bins, dtype=np.float64)
    top = dtype_max(dtype)
    luts: list[np.ndarray | None] = []
    if op == "normalize":
        groups = [[c] for c in range(n_colour)] if p["per_channel"] else [list(range(n_colour))]
        for group in groups:
            lo, hi = intensity._percentiles_from_counts(counts[group].sum(axis=0),
                                                        (p["low"], p["high"]))
            lut = None if hi <= lo else from_float(
                np.clip((levels - lo) * (top / (hi - lo)), 0, top), dtype)
            luts.extend([lut] * len(group))
    else:
        for c in range(n_colour):
            cdf = np.cumsum(counts[c])
            n = int(cdf[-1])
            nonzero = np.flatnonzero(counts[c])
            cdf_min = int(cdf[nonzero[0]]) if len(nonzero) else n
            luts.append(None if n == cdf_min else
                        from_float((cdf - cdf_min) / (n - cdf_min) * top, dtype))

    def apply(block: np.ndarray) -> np.ndarray:
        out = block.copy()
        for c, lut in enumerate(luts):
            if lut is not None:
                out[:, :, c] = lut[block[:, :, c]]
        return out

    return array.map_blocks(apply, dtype=dtype)


# --------------------------------------------------------------------------- resize


def _resize_block(block: np.ndarray, out_w: int, out_h: int,
                  box: tuple[float, float, float, float], alpha: bool) -> np.ndarray:
    """Pillow's pure Lanczos resize of the ``box`` region of ``block`` (which may hold
    pixels outside the box for the kernel to use), as :func:`~dagflow.ops.geometry.
    resize_array` with ``reducing_gap=None``."""
    from PIL import Image as PILImage

    from dagflow.ops._common import dtype_max, from_float

    lanczos = PILImage.Resampling.LANCZOS
    _h, _w, c = block.shape
    if block.dtype == np.uint8 and (c in (1, 3) or (c in (2, 4) and alpha)):
        src = PILImage.fromarray(np.ascontiguousarray(block[:, :, 0] if c == 1 else block))
        out = np.asarray(src.resize((out_w, out_h), lanczos, box=box, reducing_gap=None))
        return out.reshape(out_h, out_w, c).copy()
    dtype = block.dtype
    top = dtype_max(dtype)
    out = np.empty((out_h, out_w, c), dtype=dtype)
    n_colour = c - 1 if alpha else c
    coverage = safe = None

    def resample(plane: np.ndarray) -> np.ndarray:
        return np.asarray(PILImage.fromarray(plane).resize((out_w, out_h), lanczos, box=box,
                                                           reducing_gap=None))

    if alpha:
        a = block[:, :, -1].astype(np.float32) / np.float32(top)
        a_small = resample(a)
        out[:, :, -1] = from_float(np.clip(a_small, 0.0, 1.0) * top, dtype)
        coverage = a
        safe = np.where(a_small > 1e-6, a_small, 1.0).astype(np.float32)
    for ch in range(n_colour):
        plane = block[:, :, ch].astype(np.float32)
        if coverage is not None:
            plane *= coverage
        small = resample(plane)
        if safe is not None:
            small = small / safe
        out[:, :, ch] = from_float(small, dtype)
    return out


def _bounds(chunks: Sequence[int]) -> list[int]:
    return [0, *np.cumsum(chunks).tolist()]


def resize_lazy(array: Any, width: int, height: int, *, alpha: bool = False) -> Any:
    """Resize a lazy ``(y, x, c)`` dask array to ``height x width``, blockwise.

    Each output block covers the output pixels whose centres fall in one input block;
    it is resampled from that block plus an overlap of the Lanczos support (no overlap
    at the image's edges, where Pillow clips the kernel as on the whole image).
    """
    import dask.array as da

    in_h, in_w = int(array.shape[0]), int(array.shape[1])
    if (in_w, in_h) == (width, height):
        return array
    sy, sx = in_h / height, in_w / width
    depth_y = math.ceil(_LANCZOS_SUPPORT * max(sy, 1.0)) + 2
    depth_x = math.ceil(_LANCZOS_SUPPORT * max(sx, 1.0)) + 2
    # every input block needs room for the overlap and at least a few output pixels
    min_y = max(2 * depth_y, math.ceil(4 * sy))
    min_x = max(2 * depth_x, math.ceil(4 * sx))
    if min(array.chunks[0]) < min_y or min(array.chunks[1]) < min_x:
        array = array.rechunk({0: max(min_y, max(array.chunks[0])),
                               1: max(min_x, max(array.chunks[1]))})
        array = array.rechunk({0: _even_chunks(in_h, max(array.chunks[0]), min_y),
                               1: _even_chunks(in_w, max(array.chunks[1]), min_x)})
    ybounds, xbounds = _bounds(array.chunks[0]), _bounds(array.chunks[1])
    oy = [round(b * height / in_h) for b in ybounds]
    ox = [round(b * width / in_w) for b in xbounds]
    out_chunks = (tuple(np.diff(oy).tolist()), tuple(np.diff(ox).tolist()),
                  (int(array.shape[2]),))
    padded = da.overlap.overlap(array, depth={0: depth_y, 1: depth_x, 2: 0},
                                boundary={0: "none", 1: "none", 2: "none"})

    def block(b: np.ndarray, block_id: tuple[int, int, int] | None = None) -> np.ndarray:
        i, j, _ = block_id  # type: ignore[misc]
        top = ybounds[i] - (depth_y if i > 0 else 0)
        left = xbounds[j] - (depth_x if j > 0 else 0)
        out_h, out_w = oy[i + 1] - oy[i], ox[j + 1] - ox[j]
        if out_h <= 0 or out_w <= 0:
            return np.empty((max(out_h, 0), max(out_w, 0), b.shape[2]), dtype=b.dtype)
        box = (ox[j] * sx - left, oy[i] * sy - top, ox[j + 1] * sx - left,
               oy[i + 1] * sy - top)
        return _resize_block(b, out_w, out_h, box, alpha)

    return da.map_blocks(block, padded, chunks=out_chunks, dtype=array.dtype,
                         meta=np.empty((0, 0, 0), dtype=array.dtype))


def _even_chunks(total: int, target: int, minimum: int) -> tuple[int, ...]:
    """Chunks of about ``target`` whose smallest is at least ``minimum`` (when possible)."""
    n = max(1, total // max(target, 1))
    if total // n < minimum:
        n = max(1, total // minimum)
    base, rest = divmod(total, n)
    return tuple(base + (1 if k < rest else 0) for k in range(n))


# --------------------------------------------------------------------------- writing


def _row_groups(row_chunks: Sequence[int], target_rows: int) -> Iterator[tuple[int, int]]:
    """Consecutive groups of row chunks, each at least ``target_rows`` (the last less)."""
    start = 0
    acc = 0
    for size in row_chunks:
        acc += size
        if acc >= target_rows:
            yield start, start + acc
            start += acc
            acc = 0
    if acc:
        yield start, start + acc


def write_tiff(image: Any, path: str | os.PathLike[str], *, tile: Sequence[int] = (256, 256),
               compression: str | None = "zlib", ome: bool = False, bigtiff: bool = True,
               client: Any = None, submit: Callable[[Any], Any] | None = None,
               band_bytes: int = 64 * 2**20, description: str | None = None) -> str:
    """Write a lazy image as a tiled (Big)TIFF or OME-TIFF, band by band, atomically.

    Parameters
    ----------
    image
        A lazy ``(y, x, c)`` DataArray (or a dask array).
    path
        The output file; written to a temporary file beside it, moved into place at the end.
    tile
        Tile ``(height, width)``, multiples of 16.
    compression
        ``zlib`` (default), ``none``/``None``, or any codec tifffile (with imagecodecs)
        writes.
    ome
        Write OME-TIFF metadata (axes ``YXS``).
    bigtiff
        64-bit offsets (needed beyond 4 GiB).
    client, submit
        Where the bands compute: a distributed client, or ``submit(collection) -> handle
        with .result()``; default the local scheduler.
    band_bytes
        About how many bytes of decoded pixels one band holds (whole tile rows); the
        writer holds this band, the next one computing, and the tiles being encoded.

    Returns
    -------
    str
        The path written.
    """
    import tifffile

    from dagflow.io.atomic import atomic_path

    array = getattr(image, "data", image)
    meta = dict(getattr(image, "attrs", {}) or {})
    height, width, channels = (int(v) for v in array.shape)
    dtype = np.dtype(array.dtype)
    th, tw = (int(tile[0]), int(tile[1]))
    row_bytes = width * channels * dtype.itemsize
    target_rows = max(th, (band_bytes // max(1, row_bytes * th)) * th)
    submit = submit or _executor(client)
    groups = list(_row_groups(array.chunks[0], target_rows))

    def tiles() -> Iterator[np.ndarray]:
        pending = None
        leftover = np.empty((0, width, channels), dtype=dtype)
        for index in range(len(groups)):
            handle = pending if pending is not None else submit(
                array[groups[index][0]:groups[index][1]])
            pending = (submit(array[groups[index + 1][0]:groups[index + 1][1]])
                       if index + 1 < len(groups) else None)
            band = np.asarray(handle.result())
            del handle
            buf = np.concatenate([leftover, band]) if len(leftover) else band
            last = index == len(groups) - 1
            usable = len(buf) if last else (len(buf) // th) * th
            for r in range(0, usable, th):
                rows = buf[r:r + th]
                for x in range(0, width, tw):
                    yield np.ascontiguousarray(rows[:, x:x + tw])
            leftover = buf[usable:].copy()
            del buf, band

    codec = None if compression in (None, "none") else compression
    kwargs: dict[str, Any] = {
        "shape": (height, width, channels) if channels > 1 else (height, width),
        "dtype": dtype, "tile": (th, tw), "compression": codec,
        "photometric": "rgb" if channels in (3, 4) else "minisblack",
    }
    if channels > 1:
        kwargs["planarconfig"] = "contig"
    extras = channels - (3 if channels in (3, 4) else 1)
    if extras > 0:
        alpha = meta.get("space") in _ALPHA_SPACES
        kwargs["extrasamples"] = (("unassalpha",) if alpha else ("unspecified",)) \
            + ("unspecified",) * (extras - 1)
    if ome:
        kwargs["metadata"] = {"axes": "YXS" if channels > 1 else "YX"}
    else:
        kwargs["metadata"] = None
        if description:
            kwargs["description"] = description
    source = (t[:, :, 0] for t in tiles()) if channels == 1 else tiles()
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff, ome=ome) as tw_:
        tw_.write(source, **kwargs)
    return os.fspath(path)


def write_zarr(image: Any, path: str | os.PathLike[str], *, client: Any = None) -> str:
    """Write a lazy image as a zarr array, block by block, atomically.

    Each Dask block becomes one zarr chunk, written by the worker that computed it. The
    store is filled beside ``path`` and renamed into place when complete
    (:func:`dagflow.io.atomic.atomic_directory`): an existing store at ``path`` is
    replaced only by a finished one, and a failed write leaves it as it was.

    Parameters
    ----------
    image
        An :class:`xarray.DataArray` from :func:`dagflow.open_image` or :func:`apply_op`,
        or a dask array ``(y, x[, c])``.
    path
        The store, a directory (conventionally ``*.zarr``).
    client
        Compute on this :class:`distributed.Client`; by default on the local scheduler.
        The workers must see ``path`` (a shared filesystem).

    Returns
    -------
    str
        ``path``. The array's attributes hold ``dims`` and the image's JSON-safe
        metadata (``space``, ``format``, ``source_orientation``, ...).

    Raises
    ------
    ModuleNotFoundError
        zarr is not installed (``pip install 'dagflow[zarr]'``).
    """
    try:
        import zarr
    except ImportError as exc:
        raise ModuleNotFoundError("writing zarr needs the 'zarr' package: "
                                  "pip install 'dagflow[zarr]'") from exc
    import dask.array as da

    from dagflow.io.atomic import atomic_directory

    array = getattr(image, "data", image)
    if any(len(set(c[:-1])) > 1 or (len(c) > 1 and c[-1] > c[0]) for c in array.chunks):
        # zarr chunks are regular: equal blocks but for a smaller last one
        array = array.rechunk(tuple(max(c) for c in array.chunks))
    dims = getattr(image, "dims", ("y", "x", "c")[:array.ndim])
    attrs = {"dims": list(dims), **_json_safe(getattr(image, "attrs", {}) or {})}
    with atomic_directory(path) as tmp:
        stored = da.to_zarr(array, os.fspath(tmp), compute=False)
        _executor(client)(stored).result()
        zarr.open_array(os.fspath(tmp), mode="r+").attrs.update(attrs)
    return os.fspath(path)


def _json_safe(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``meta`` that JSON can hold as they are (tuples as lists)."""
    def ok(value: Any) -> bool:
        if isinstance(value, list | tuple):
            return all(ok(v) for v in value)
        return value is None or isinstance(value, str | int | float | bool)

    return {str(k): list(v) if isinstance(v, tuple) else v
            for k, v in meta.items() if ok(v)}


# --------------------------------------------------------------------------- the runtime


@dataclass
class TiledResult:
    """What :func:`run_tiled` did: the output path, sizes per node, seconds."""

    output_path: str
    sizes: dict[str, tuple[int, int]]
    duration_s: float
    skipped: list[str]


def chain_problem(tasks: Sequence[Any]) -> str | None:
    """Why this resolved workflow cannot run tiled, or ``None`` when it can.

    It must be a chain: one ``load``, then ops that :func:`apply_op` runs, then one
    ``save`` with ``format: tiff``.
    """
    if len(tasks) < 2:
        return "a tiled workflow needs a load and a save"
    first, last = tasks[0], tasks[-1]
    if first.op != "load":
        return f"the first node is {first.op!r}, not load"
    if last.kind != "sink" or last.op != "save" or last.params.get("format") != "tiff":
        return "the last node must save with format: tiff"
    for prev, task in itertools.pairwise(tasks):
        if tuple(task.parents) != (prev.id,):
            return f"node {task.id!r} is not in a single chain"
    for task in tasks[1:-1]:
        why = None if task.op in TILED_OPS else f"op {task.op!r} has no tiled implementation"
        if why is None and task.op == "threshold" and task.params.get("method"):
            why = "threshold by otsu needs the whole image"
        if why is None and task.op == "rotate":
            why = not_tileable("rotate", task.params)
        if why:
            return f"node {task.id!r}: {why}"
    return None


def _tiled_task(tasks: Sequence[Any], item: Mapping[str, Any], dest: str,
                fields: Callable[[Mapping[str, Any]], dict[str, Any]] | None,
                chunk: int | None, band_bytes: int) -> TiledResult:
    """Runs in a task on a worker: builds the graph, computes it band by band from this
    worker, writes the TIFF."""
    from dagflow.io.lazy import open_image

    t0 = time.perf_counter()
    load, save, middle = tasks[0], tasks[-1], tasks[1:-1]
    orient = bool(load.params.get("auto_orient", True))
    image = open_image(item["path"], chunk, auto_orient=orient)
    if chunk is None:
        # a band of blocks spans the width: keep one band near band_bytes
        row_bytes = int(image.shape[1]) * int(image.shape[2]) * image.dtype.itemsize
        rows = max(256, band_bytes // max(1, row_bytes))
        side = max(image.data.chunks[1])
        if rows < max(image.data.chunks[0]):
            image = open_image(item["path"], (rows, side), auto_orient=orient)
    sizes = {load.id: (int(image.shape[1]), int(image.shape[0]))}
    skipped: list[str] = []
    ctx = _client_context()
    with ctx as client:
        for task in middle:
            if task.when is not None and fields is not None \
                    and not task.when(fields(image.attrs)):
                skipped = [t.id for t in tasks[tasks.index(task):]]
                return TiledResult("", sizes, time.perf_counter() - t0, skipped)
            image = apply_op(image, task.op, task.params, client=client)
            sizes[task.id] = (int(image.shape[1]), int(image.shape[0]))
        tile = save.params.get("tile") or (256, 256)
        written = write_tiff(image, dest + ".tif", tile=(int(tile[1]), int(tile[0])),
                             compression=save.params.get("compression"), client=client,
                             band_bytes=band_bytes)
    sizes[save.id] = sizes[tasks[-2].id]
    return TiledResult(written, sizes, time.perf_counter() - t0, skipped)


@contextlib.contextmanager
def _client_context() -> Iterator[Any]:
    """The cluster seen from inside a task (``worker_client``), else the local scheduler."""
    try:
        from distributed import get_worker, worker_client

        get_worker()
    except (ImportError, ValueError):
        yield None
        return
    with worker_client() as client:
        yield client


def run_tiled(tasks: Sequence[Any], item: Mapping[str, Any], dest: str, client: Any = None,
              *, chunk: int | None = None, band_bytes: int | None = None,
              fields: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
              key: str | None = None) -> TiledResult:
    """Process one large TIFF item through a chain of nodes, tiled, on ``client``.

    Parameters
    ----------
    tasks
        The resolved nodes in order (``load``, tiled ops, ``save`` with format tiff);
        see :func:`chain_problem`.
    item
        The item (``path``).
    dest
        The output path without suffix (``.tif`` is added).
    client
        A distributed client: one task on a worker drives the computation. Without one,
        everything runs here on the local scheduler.
    chunk
        Block side in pixels (default ``dagflow.resources.tile-chunk``).
    band_bytes
        Bytes per written band (default 64 MiB).

    Raises
    ------
    BadInputError
        When the file cannot be read lazily; whatever an op raises.
    """
    problem = chain_problem(tasks)
    if problem:
        raise BadInputError("oversize", f"cannot process tiled: {problem}")
    band = int(band_bytes or 64 * 2**20)
    if client is None:
        return _tiled_task(tasks, item, dest, fields, chunk, band)
    future = client.submit(_tiled_task, list(tasks), dict(item), dest, fields, chunk, band,
                           key=key, pure=False)
    try:
        return future.result()
    finally:
        future.release()

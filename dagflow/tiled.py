"""Tiled execution: a workflow's ops on an image larger than memory, block by block.

An image opened with :func:`dagflow.open_image` is an ``xarray.DataArray`` backed by a
dask array (see :mod:`dagflow.io.lazy`). :func:`apply_op` runs an op on it and returns
another lazy DataArray, equal to what the op computes on the whole image. How is the
op's own declaration (:mod:`dagflow.ops.tiling`); this module holds no list of ops:

=====================  ======================================================================
op's tiling            how (built-in ops that declare it)
=====================  ======================================================================
``pointwise``          the op's function on each block (``map_blocks``): ``convert``,
                       ``grayscale``, ``threshold`` (a ``value``)
``overlap``            the op's function on each block with its declared depth of the
                       neighbours (``map_overlap``, ``boundary="reflect"``, the filters' own
                       edge mode), equal to the whole-image result: ``gaussian``,
                       ``median``, ``unsharp``
``reduction``          a first pass summarising every block (computed on ``client``), then
                       the op's map on each block: ``normalize``, ``equalize`` (exact
                       histograms, 8- and 16-bit)
``lazy``               the op's own lazy result: ``crop``, ``flip``, ``rotate`` (multiples
                       of 90 degrees) slice and turn; ``resize`` resamples block by block
                       with an overlap of the Lanczos support, equal to the whole-image
                       ``resize_array(..., reducing_gap=None)`` within one level
=====================  ======================================================================

A user's op declared ``pointwise`` or ``overlap`` runs tiled through its own function,
unchanged: each block is an :class:`~dagflow.image.Image` with the image's metadata,
and the op's output header (:meth:`~dagflow.ops.registry.OpSpec.output_header`) says the
result's channels, dtype and colour space before anything computes.

:func:`write_tiff` writes the result as a tiled BigTIFF (or OME-TIFF) tile by tile,
computing one band of rows at a time (the next band computes while this one is written),
atomically; :func:`write_zarr` writes a zarr store when zarr is installed.

:func:`run_tiled` is what the runtime uses for an item too large for any worker: its
workflow must be a chain from a source that opens the image lazily (``load``) through
tileable ops to a sink that writes it band by band (``save`` with format tiff); one task
on a worker builds the graph (the client never touches pixels), submits the bands to
the cluster from the worker (``worker_client``) and writes the file, so the largest
thing any process holds is a few bands, whatever the image's size.

This module imports dask lazily and knows nothing of the workflow layer.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import operator
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dagflow.exceptions import BadInputError
from dagflow.image import SPACES_BY_CHANNELS, Image
from dagflow.ops._tiled_resize import resize_lazy
from dagflow.ops.registry import OpSpec, get_op, list_ops
from dagflow.ops.tiling import TRANSFORM_KINDS

__all__ = [
    "apply_op",
    "not_tileable",
    "resize_lazy",
    "run_tiled",
    "tiled_ops",
    "write_tiff",
    "write_zarr",
]

logger = logging.getLogger(__name__)

_ALPHA_SPACES = ("graya", "rgba")


def _spec(op: str | OpSpec) -> OpSpec:
    return op if isinstance(op, OpSpec) else get_op(op)


def tiled_ops() -> frozenset[str]:
    """The registered ops :func:`apply_op` runs: those whose declaration tiles.

    Examples
    --------
    >>> {"gaussian", "resize", "normalize"} <= tiled_ops(), "composite" in tiled_ops()
    (True, False)
    """
    return frozenset(spec.name for spec in list_ops()
                     if spec.tiling is not None and spec.tiling.kind in TRANSFORM_KINDS)


def __getattr__(name: str) -> Any:
    if name == "TILED_OPS":  # the earlier constant, now read from the declarations
        return tiled_ops()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def not_tileable(op: str | OpSpec, params: Mapping[str, Any], dtype: Any = None
                 ) -> str | None:
    """Why ``op`` cannot run tiled with ``params`` on ``dtype``, or ``None`` when it can.

    ``dtype`` ``None`` (planning, before the image is opened) passes what depends on it.

    Examples
    --------
    >>> not_tileable("gaussian", {"sigma": 2.0}) is None
    True
    >>> not_tileable("threshold", {"method": "otsu", "value": None})
    'threshold by otsu needs the whole image'
    """
    spec = _spec(op)
    if spec.tiling is None or spec.tiling.kind not in TRANSFORM_KINDS:
        return f"op {spec.name!r} has no tiled implementation"
    return spec.tiling.refusal(params, dtype)


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


def _wrap(array: Any, meta: Mapping[str, Any], space: str | None = None) -> Any:
    """A DataArray for ``array`` with ``meta`` updated to its size, dtype and space."""
    import xarray as xr

    meta = dict(meta)
    channels = int(array.shape[2])
    if space is not None:
        meta["space"] = space
    elif meta.get("channels") != channels:
        meta["space"] = SPACES_BY_CHANNELS.get(channels, "multi")
    meta.update(height=int(array.shape[0]), width=int(array.shape[1]), channels=channels,
                dtype=np.dtype(array.dtype).name)
    return xr.DataArray(array, dims=("y", "x", "c"), attrs=meta)


def _header(array: Any, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The header of a lazy image, as the ops' output rules read it."""
    dtype = np.dtype(array.dtype)
    return {"width": int(array.shape[1]), "height": int(array.shape[0]),
            "channels": int(array.shape[2]), "dtype": dtype.name,
            "itemsize": dtype.itemsize, "format": meta.get("format"),
            "space": meta.get("space")}


def _block_op(spec: OpSpec, params: Mapping[str, Any], meta: Mapping[str, Any],
              out: Mapping[str, Any], run: Callable[..., Any] | None = None
              ) -> Callable[[np.ndarray], np.ndarray]:
    """``run(image, **params)`` (default: the op's own function) on one block as an image
    with the image's metadata, its result checked against the op's output header."""
    run = run or spec.func
    channels, dtype = int(out["channels"]), np.dtype(out["dtype"])

    def block_op(block: np.ndarray) -> np.ndarray:
        data = np.asarray(run(Image(block, dict(meta)), **params).data)
        if data.shape != (*block.shape[:2], channels) or data.dtype != dtype:
            raise ValueError(
                f"op {spec.name!r} gave a {data.shape} {data.dtype} block for a "
                f"{block.shape} one where its declaration says {channels} channels of "
                f"{dtype} and the block's size: declare output= (or tiling=) to match")
        return data

    return block_op


def _blockwise(array: Any, block_op: Callable[[np.ndarray], np.ndarray], depth: int,
               out: Mapping[str, Any]) -> Any:
    """``block_op`` on every block, with ``depth`` pixels of the neighbours (reflected at
    the edges) when ``depth > 0``."""
    dtype = np.dtype(out["dtype"])
    meta = np.empty((0, 0, 0), dtype=dtype)
    if depth <= 0:
        chunks = (array.chunks[0], array.chunks[1], (int(out["channels"]),))
        return array.map_blocks(block_op, dtype=dtype, chunks=chunks, meta=meta)
    return array.map_overlap(block_op, depth={0: depth, 1: depth, 2: 0},
                             boundary={0: "reflect", 1: "reflect", 2: "none"},
                             dtype=dtype, meta=meta, allow_rechunk=True)


def _reduce(parts: list[Any], combine: Callable[[Any, Any], Any]) -> Any:
    return functools.reduce(combine, parts)


def _summary(spec: OpSpec, array: Any, meta: Mapping[str, Any], params: Mapping[str, Any],
             submit: Callable[[Any], Any]) -> Any:
    """A reduction's first pass: every block summarised, combined, finished."""
    import dask

    tiling = spec.tiling
    assert tiling is not None and tiling.summarize is not None

    def summarize(block: np.ndarray) -> Any:
        return tiling.summarize(Image(block, dict(meta)), **params)  # type: ignore[misc]

    parts = [dask.delayed(summarize)(b) for b in array.to_delayed().ravel()]
    total = dask.delayed(_reduce)(parts, tiling.combine or operator.add)
    summary = submit(total).result()
    return tiling.finish(summary, **params) if tiling.finish is not None else summary


def apply_op(image: Any, op: str | OpSpec, params: Mapping[str, Any] | None = None, *,
             client: Any = None) -> Any:
    """Run ``op`` on a lazy image, as its tiling declaration says; the result is lazy too.

    Parameters
    ----------
    image
        An ``xarray.DataArray`` with dims ``y, x, c`` backed by a dask array (from
        :func:`dagflow.open_image`), ``attrs["space"]`` saying whether it has alpha.
    op, params
        The op (its name or :class:`~dagflow.ops.registry.OpSpec`) and its parameters
        (defaults filled in as in a workflow).
    client
        Where the first pass of a reduction (``normalize``, ``equalize``) computes
        (default: the local scheduler). Every other op computes nothing here.

    Returns
    -------
    xarray.DataArray
        The lazy result, its ``attrs`` updated (size, channels, dtype, space).

    Raises
    ------
    ValueError
        For an op that cannot run tiled (see :func:`not_tileable`), and when the op's
        function does not give what its declaration says.
    """
    spec = _spec(op)
    resolved, problems = spec.resolve_params(dict(params or {}))
    if problems:
        raise ValueError(f"{spec.name}: {'; '.join(problems)}")
    array = image.data
    meta = dict(image.attrs)
    why = not_tileable(spec, resolved, array.dtype)
    if why:
        raise ValueError(why)
    tiling = spec.tiling
    assert tiling is not None
    header = _header(array, meta)
    out = spec.output_header(header, resolved)
    declared = out.get("space")
    space = declared if declared != header["space"] else None
    if tiling.kind == "lazy":
        assert tiling.build is not None
        result = tiling.build(array, meta, **resolved)
        declared_shape = (out["height"], out["width"], out["channels"])
        if tuple(result.shape) != declared_shape:
            raise ValueError(f"op {spec.name!r} built a {tuple(result.shape)} result where "
                             f"its output header says {declared_shape}: declare output= "
                             "to match")
        return _wrap(result, meta, space)
    if (out["width"], out["height"]) != (header["width"], header["height"]):
        raise ValueError(f"op {spec.name!r} is declared {tiling.kind} but its output "
                         "header changes the image's size: declare tiling=lazy(...)")
    if tiling.kind == "reduction":
        state = _summary(spec, array, meta, resolved, _executor(client))

        def apply(image: Image, **params: Any) -> Image:
            return tiling.apply(image, state, **params)  # type: ignore[misc]

        block_op = _block_op(spec, resolved, meta, out, apply)
        return _wrap(_blockwise(array, block_op, 0, out), meta, space)
    depth = tiling.overlap_depth(resolved)
    if depth > 0 and int(out["channels"]) != header["channels"]:
        raise ValueError(f"op {spec.name!r} is declared overlap but changes the channels")
    return _wrap(_blockwise(array, _block_op(spec, resolved, meta, out), depth, out), meta,
                 space)


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

    It must be a chain: a source whose declaration opens the image lazily (``load``),
    then ops that :func:`apply_op` runs, then a sink whose declaration writes it band by
    band (``save`` with ``format: tiff``).
    """
    if len(tasks) < 2:
        return "a tiled workflow needs a load and a save"
    first, last = tasks[0], tasks[-1]
    source, sink = first.op_spec.tiling, last.op_spec.tiling
    if first.kind != "source" or source is None or source.kind != "source":
        return f"the first node is {first.op!r}, which cannot open an image lazily"
    if last.kind != "sink" or sink is None or sink.kind != "sink":
        return f"the last node is {last.op!r}, which cannot write an image band by band"
    why = sink.refusal(last.params)
    if why:
        return why
    for prev, task in itertools.pairwise(tasks):
        if tuple(task.parents) != (prev.id,):
            return f"node {task.id!r} is not in a single chain"
    for task in tasks[1:-1]:
        why = not_tileable(task.op_spec, task.params)
        if why:
            return f"node {task.id!r}: {why}"
    return None


def _tiled_task(tasks: Sequence[Any], item: Mapping[str, Any], dest: str,
                fields: Callable[[Mapping[str, Any]], dict[str, Any]] | None,
                chunk: int | None, band_bytes: int) -> TiledResult:
    """Runs in a task on a worker: builds the graph, computes it band by band from this
    worker, writes the TIFF."""

    t0 = time.perf_counter()
    load, save, middle = tasks[0], tasks[-1], tasks[1:-1]
    open_lazy = load.op_spec.tiling.open  # the source's and the sink's declarations
    image = open_lazy(item["path"], chunk, **load.params)
    if chunk is None:
        # a band of blocks spans the width: keep one band near band_bytes
        row_bytes = int(image.shape[1]) * int(image.shape[2]) * image.dtype.itemsize
        rows = max(256, band_bytes // max(1, row_bytes))
        side = max(image.data.chunks[1])
        if rows < max(image.data.chunks[0]):
            image = open_lazy(item["path"], (rows, side), **load.params)
    sizes = {load.id: (int(image.shape[1]), int(image.shape[0]))}
    skipped: list[str] = []
    ctx = _client_context()
    with ctx as client:
        for task in middle:
            if task.when is not None and fields is not None \
                    and not task.when(fields(image.attrs)):
                skipped = [t.id for t in tasks[tasks.index(task):]]
                return TiledResult("", sizes, time.perf_counter() - t0, skipped)
            image = apply_op(image, task.op_spec, task.params, client=client)
            sizes[task.id] = (int(image.shape[1]), int(image.shape[0]))
        written = save.op_spec.tiling.write(image, dest, client=client,
                                            band_bytes=band_bytes, **save.params)
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

"""The memory model: what a task needs, what a worker can give, and how items are grouped.

Everything here is decided from image *headers* (width, height, channels, dtype), before
a pixel is decoded:

* :class:`Resources` -- a frozen value (``MEMORY`` bytes, ``GPU`` units, named
  concurrency slots) that turns into Dask annotations (``{"resources": {...}}``).
* :func:`output_header` -- the header an op hands to the next node (``resize`` shrinks
  it, ``grayscale`` drops channels, ``convert`` changes the dtype...), as the op's
  declaration says, so that every node of a chain is estimated on the image it will
  actually see.
* :class:`MemoryModel` -- per item and node, the op's peak working set
  (:meth:`~dagflow.ops.registry.OpSpec.estimate_memory`), the bytes it receives and the
  bytes it hands on; per chunk, the peak of each node's task. A task holds its parents'
  images for every item of the chunk, the images it has produced so far and the working
  set of the item in hand, so a chunk's task needs::

      sum(inputs) + sum(outputs) + max(working set - input - output)

  Estimates are cached per header signature: a batch of same-sized photos costs one
  estimate, not one per item.
* :func:`worker_budget` -- what a worker advertises as ``MEMORY``: its memory limit less
  a safety margin (``dagflow.resources.memory-margin``, 20% by default, which keeps a
  full worker below Dask's pause threshold of 80%) and less the worker process's own
  footprint.
* :meth:`MemoryModel.make_chunks` -- groups consecutive items so that no node's task
  estimate exceeds a fraction (``dagflow.resources.chunk-memory-fraction``) of the
  smallest worker budget, and no chunk exceeds the count-based size. Whatever is held
  between two tasks of a chunk is not counted by Dask's resources; the fraction leaves
  room for it.

Dask's resources are abstract counters: a worker advertising ``MEMORY: 4e9`` runs tasks
whose ``MEMORY`` annotations sum to at most 4e9 at once. A task asking for more than any
worker advertises would wait forever, so the runtime never annotates more than the
largest budget and refuses (or tiles) an item that does not fit.

This module is pure: no Dask import, no I/O beyond :func:`probe_headers`.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dagflow import config

__all__ = [
    "CONCURRENCY_PREFIX",
    "GPU",
    "MEMORY",
    "MemoryModel",
    "NodeEstimate",
    "Resources",
    "concurrency_resource",
    "device_bytes",
    "format_bytes",
    "has_size",
    "header_fields",
    "output_header",
    "probe_headers",
    "worker_budget",
]

logger = logging.getLogger(__name__)

#: The resource name of a worker's memory budget, in bytes.
MEMORY = "MEMORY"
#: The resource name of a GPU (one per dask-cuda worker).
GPU = "GPU"
#: Prefix of the per-node concurrency resources (``dagflow-save: 2``).
CONCURRENCY_PREFIX = "dagflow-"

#: Header fields an item may carry (from a manifest or a probe).
HEADER_KEYS = ("width", "height", "channels", "dtype", "itemsize", "format", "orientation")


def concurrency_resource(node_id: str) -> str:
    """The resource that caps node ``node_id``'s tasks per worker.

    Examples
    --------
    >>> concurrency_resource("save")
    'dagflow-save'
    """
    return f"{CONCURRENCY_PREFIX}{node_id}"


def format_bytes(n: float | None) -> str:
    """``n`` bytes for people: ``'1.5 GiB'``.

    Examples
    --------
    >>> format_bytes(1536 * 2**20), format_bytes(512), format_bytes(None)
    ('1.5 GiB', '512 B', '?')
    """
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


@dataclass(frozen=True)
class Resources:
    """What one task needs from a worker, as a value.

    Parameters
    ----------
    memory
        Bytes (the ``MEMORY`` resource); 0 for none.
    gpu
        GPUs (the ``GPU`` resource); 0 for none.
    slots
        Other abstract resources, e.g. ``(("dagflow-save", 1),)`` for a concurrency cap.

    Examples
    --------
    >>> r = Resources(memory=2**30, gpu=1)
    >>> r.annotations()
    {'resources': {'MEMORY': 1073741824, 'GPU': 1}}
    >>> (r | Resources(slots=(("dagflow-save", 1),))).to_dict()
    {'MEMORY': 1073741824, 'GPU': 1, 'dagflow-save': 1}
    >>> Resources().annotations()
    {}
    """

    memory: int = 0
    gpu: float = 0
    slots: tuple[tuple[str, float], ...] = ()

    def to_dict(self) -> dict[str, float]:
        """The resources as Dask expects them (only those asked for)."""
        out: dict[str, float] = {}
        if self.memory > 0:
            out[MEMORY] = int(self.memory)
        if self.gpu > 0:
            out[GPU] = self.gpu
        out.update(self.slots)
        return out

    def annotations(self) -> dict[str, Any]:
        """Dask annotations: ``{"resources": {...}}``, or ``{}`` when nothing is needed."""
        resources = self.to_dict()
        return {"resources": resources} if resources else {}

    def __or__(self, other: Resources) -> Resources:
        """Both needs at once: the larger memory and GPU, the union of the slots."""
        slots = dict(self.slots)
        for name, amount in other.slots:
            slots[name] = max(slots.get(name, 0), amount)
        return Resources(max(self.memory, other.memory), max(self.gpu, other.gpu),
                         tuple(sorted(slots.items())))


def worker_budget(memory_limit: float | None, *, margin: float | None = None,
                  baseline: float = 0.0, total_memory: float | None = None) -> int:
    """The ``MEMORY`` a worker advertises: its limit less the margin and its own footprint.

    Parameters
    ----------
    memory_limit
        The worker's memory limit in bytes; ``None`` or 0 (no limit) uses
        ``total_memory``.
    margin
        Fraction of the limit kept free; default ``dagflow.resources.memory-margin``.
    baseline
        The worker process's memory before any task (interpreter, libraries), capped at
        half the limit.
    total_memory
        The machine's memory, for workers without a limit.

    Examples
    --------
    >>> round(worker_budget(4 * 2**30, margin=0.2, baseline=2**28) / 2**30, 2)
    2.95
    """
    if margin is None:
        margin = float(config.get("resources.memory-margin"))
    limit = float(memory_limit or total_memory or 0)
    if limit <= 0:
        return 0
    return max(0, int(limit * (1.0 - margin) - min(float(baseline), limit / 2)))


# --------------------------------------------------------------------------- headers


def _itemsize(header: Mapping[str, Any]) -> int:
    size = header.get("itemsize")
    if size:
        return int(size)
    dtype = header.get("dtype")
    if dtype:
        try:
            return int(np.dtype(dtype).itemsize)
        except TypeError:
            return 1
    return 1


def has_size(item: Mapping[str, Any]) -> bool:
    """Whether the item's header gives its width and height (cheap: planning asks it of
    every item)."""
    return bool(item.get("width")) and bool(item.get("height"))


def header_fields(item: Mapping[str, Any]) -> dict[str, Any] | None:
    """The header part of an item (``None`` when its size is unknown)."""
    if not has_size(item):
        return None
    return {
        "width": int(item["width"]), "height": int(item["height"]),
        "channels": int(item.get("channels") or 3), "itemsize": _itemsize(item),
        "dtype": str(item.get("dtype") or {1: "uint8", 2: "uint16", 4: "float32"}.get(
            _itemsize(item), "uint8")),
        "format": item.get("format"), "orientation": int(item.get("orientation") or 1),
    }


def output_header(op: str | Any, header: Mapping[str, Any], params: Mapping[str, Any]
                  ) -> dict[str, Any]:
    """The header of the image ``op`` produces from an input with ``header``: what the
    op's declaration says (:meth:`~dagflow.ops.registry.OpSpec.output_header`).

    Parameters
    ----------
    op
        An op's name or its :class:`~dagflow.ops.registry.OpSpec`.

    Examples
    --------
    >>> h = {"width": 4000, "height": 3000, "channels": 3, "itemsize": 1, "dtype": "uint8"}
    >>> out = output_header("resize", h, {"long_side": 1000})
    >>> out["width"], out["height"]
    (1000, 750)
    >>> output_header("grayscale", h, {"keep_alpha": True})["channels"]
    1
    >>> output_header("convert", h, {"dtype": "uint16", "space": None})["itemsize"]
    2
    """
    if isinstance(op, str):
        from dagflow.ops.registry import get_op

        op = get_op(op)
    return op.output_header(header, params)


def condition_fields(header: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a ``when:`` condition sees, as far as a header tells them."""
    w, h, c = header.get("width", 0), header.get("height", 0), header.get("channels", 3)
    return {"width": w, "height": h, "channels": c, "dtype": header.get("dtype"),
            "format": header.get("format"), "orientation": header.get("orientation", 1),
            "space": {1: "gray", 2: "graya", 3: "rgb", 4: "rgba"}.get(c),
            "megapixels": w * h / 1e6}


def decoded_bytes(header: Mapping[str, Any]) -> int:
    """Bytes of the decoded image ``header`` describes."""
    return int(header.get("width", 0) * header.get("height", 0) * header.get("channels", 3)
               * header.get("itemsize", 1))


def device_bytes(header: Mapping[str, Any], output: Mapping[str, Any]) -> int:
    """GPU memory a GPU implementation needs for one image with ``header`` that it turns
    into ``output`` (:func:`output_header`).

    The image and its result on the device, two float32 copies of the larger one's
    channels (a float copy and a sort's or an expression's temporary) and four float32
    planes of working space: the most :mod:`dagflow.ops.gpu` holds at once (the GPU
    tests check it per op against cupy's memory pool). A chunk's GPU task needs its
    largest item's figure, not their sum: items pass through the device one at a time.

    Examples
    --------
    >>> h = {"width": 1000, "height": 1000, "channels": 3, "itemsize": 1}
    >>> device_bytes(h, dict(h, width=500, height=500))
    43750000
    """
    pixels = max(int(header.get("width", 0)) * int(header.get("height", 0)),
                 int(output.get("width", 0)) * int(output.get("height", 0)))
    channels = max(int(header.get("channels", 3)), int(output.get("channels", 3)))
    return decoded_bytes(header) + decoded_bytes(output) + 4 * pixels * (2 * channels + 4)


#: Files probed first, in the calling thread, to tell I/O-bound probing from CPU-bound.
_PROBE_TRIAL = 64
#: Wall time over CPU time above which probing is I/O-bound and threads are used.
_IO_BOUND = 2.0


def probe_headers(items: Sequence[dict[str, Any]], *, threads: int | None = None,
                  limit: int | None = None, sample: int | None = None,
                  seed: int = 0) -> dict[str, int]:
    """Add header fields (in place) to the items that lack them, reading headers only.

    Probing reads a few kilobytes per file (:func:`dagflow.io.probe_header`), in a thread
    pool on the client. Up to ``limit`` items are probed; for a larger batch a random
    ``sample`` is probed instead and the others are estimated from it (they still meet
    the decoder's pixel limit on the worker). A file that cannot be probed is left
    without a header: its load fails with the reason when it runs.

    Parameters
    ----------
    items
        Item dicts, changed in place.
    threads, limit, sample
        Default to ``dagflow.resources.probe-threads``, ``probe-limit`` and
        ``probe-sample``.

    Returns
    -------
    dict
        ``probed``, ``failed`` and ``missing`` (left without a header) counts.
    """
    from dagflow.io import probe_header
    from dagflow.io.storage import is_remote

    threads = int(threads or config.get("resources.probe-threads"))
    limit = int(limit if limit is not None else config.get("resources.probe-limit"))
    sample = int(sample if sample is not None else config.get("resources.probe-sample"))
    lacking = [it for it in items if not has_size(it)]
    unknown = len(lacking)
    if len(lacking) > limit:
        lacking = random.Random(seed).sample(lacking, min(sample, len(lacking)))
    failed = 0

    def probe_batch(batch: Sequence[dict[str, Any]]) -> list[dict[str, Any] | None]:
        headers: list[dict[str, Any] | None] = []
        for item in batch:
            try:
                headers.append(probe_header(item["path"]))
            except Exception:  # bad inputs are reported by the load that runs them
                headers.append(None)
        return headers

    def absorb(batch: Sequence[dict[str, Any]], headers: list[dict[str, Any] | None]) -> int:
        bad = 0
        for item, header in zip(batch, headers, strict=True):
            if header is None:
                bad += 1
                continue
            for key in HEADER_KEYS:
                if header.get(key) is not None:
                    item[key] = header[key]
        return bad

    # Threads pay only where the files are slow to reach (a network file system): on a
    # local disk the header walk is CPU work under the GIL and threads slow it down
    # (1 thread: 70 us a file; 4: 160). A first batch, read in this thread, tells which;
    # objects on a store are a request each, slow to reach by definition.
    on_store = bool(lacking) and is_remote(lacking[0]["path"])
    first = [] if on_store else lacking[:_PROBE_TRIAL]
    wall, cpu = time.perf_counter(), time.thread_time()
    failed += absorb(first, probe_batch(first))
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    rest = lacking[len(first):]
    if rest and (on_store or wall > _IO_BOUND * cpu) and threads > 1:
        # batches, not one future per file: a future costs about as much as a small
        # JPEG's header, and the threads would compete for the queue
        n_threads = max(1, min(threads, len(rest)))
        step = max(1, min(512, -(-len(rest) // (4 * n_threads))))
        batches = [rest[i:i + step] for i in range(0, len(rest), step)]
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            for batch, headers in zip(batches, pool.map(probe_batch, batches), strict=True):
                failed += absorb(batch, headers)
    elif rest:
        failed += absorb(rest, probe_batch(rest))
    missing = unknown - sum(1 for it in lacking if has_size(it))  # only these changed
    return {"probed": len(lacking) - failed, "failed": failed, "missing": missing}


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class NodeEstimate:
    """One node's figures for one item, in bytes.

    Attributes
    ----------
    peak
        The op's working set (:meth:`~dagflow.ops.registry.OpSpec.estimate_memory`).
    inputs
        The images it receives (held for the whole chunk while the task runs).
    output
        The image it hands on (0 for sinks).
    megapixels
        Of its input, for duration estimates from seconds per megapixel.
    hold
        What the item keeps in memory for the whole task: ``inputs + output``.
    extra
        The working set beyond what is held.
    single
        The task's peak for a chunk of this item alone: ``hold + extra``.
    """

    peak: int
    inputs: int
    output: int
    megapixels: float
    hold: int = 0
    extra: int = 0
    single: int = 0

    @classmethod
    def of(cls, peak: int, inputs: int, output: int, megapixels: float) -> NodeEstimate:
        hold = inputs + output
        extra = max(0, peak - hold)
        return cls(peak, inputs, output, megapixels, hold, extra, hold + extra)


def _uniform_cap(est: Sequence[NodeEstimate], limit: float) -> int:
    """How many items sharing ``est`` fit one chunk within ``limit`` (at least one): the
    largest ``c`` with ``c * hold + extra <= limit`` for every node."""
    cap = sys.maxsize
    for e in est:
        if e.hold <= 0:
            if e.extra > limit:
                return 1
            continue
        c = int((limit - e.extra) // e.hold) if limit >= e.extra else 0
        while (c + 1) * e.hold + e.extra <= limit:  # exact in integers, whatever the float
            c += 1
        while c > 0 and c * e.hold + e.extra > limit:
            c -= 1
        cap = min(cap, c)
    return max(1, cap)


@dataclass
class MemoryModel:
    """Per item and node estimates for a resolved workflow.

    Parameters
    ----------
    tasks
        Node id to resolved node (:class:`~dagflow.compile.NodeTask` or anything with
        ``op``, ``kind``, ``params``, ``parents`` and ``op_spec``), in topological order.

    Examples
    --------
    >>> from types import SimpleNamespace as NS
    >>> from dagflow.ops.registry import get_op
    >>> tasks = {"load": NS(op="load", kind="source", params={}, parents=(),
    ...                     op_spec=get_op("load"))}
    >>> model = MemoryModel(tasks)
    >>> item = {"width": 1000, "height": 1000, "channels": 3, "dtype": "uint8"}
    >>> model.item_peak(item)
    6000000
    """

    tasks: Mapping[str, Any]
    _cache: dict[tuple[Any, ...], tuple[NodeEstimate, ...]] = field(default_factory=dict,
                                                                   repr=False)
    _default: tuple[NodeEstimate, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.node_ids = list(self.tasks)

    @staticmethod
    def signature(item: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The item's header fields as a cache key (``None`` when its size is unknown)."""
        get = item.get  # spelled out: planning calls this for every item
        width, height = get("width"), get("height")
        if not width or not height:
            return None
        return (width, height, get("channels"), get("itemsize"), get("dtype"), get("format"),
                get("orientation"))

    def _estimate(self, header: Mapping[str, Any]) -> tuple[NodeEstimate, ...]:
        outputs: dict[str, dict[str, Any]] = {}
        out: list[NodeEstimate] = []
        for nid, task in self.tasks.items():
            parents = [outputs[p] for p in task.parents if p in outputs]
            in_header = parents[0] if parents else header
            spec = task.op_spec
            try:
                peak = int(spec.estimate_memory(in_header, task.params))
            except Exception:  # a user's memory model that fails: fall back to the factor
                peak = int(decoded_bytes(in_header) * spec.memory_factor)
            inputs = sum(decoded_bytes(p) for p in parents)
            if task.kind in ("sink", "aggregate"):
                produced = dict(in_header)
                output = 0
            else:
                produced = spec.output_header(in_header, task.params)
                output = decoded_bytes(produced)
            outputs[nid] = produced
            mp = in_header.get("width", 0) * in_header.get("height", 0) / 1e6
            out.append(NodeEstimate.of(peak, inputs, output, mp))
        return tuple(out)

    def headers_through(self, item: Mapping[str, Any]) -> dict[str, dict[str, Any]] | None:
        """The header each node receives for ``item`` (``None`` without a header)."""
        header = header_fields(item)
        if header is None:
            return None
        outputs: dict[str, dict[str, Any]] = {}
        received: dict[str, dict[str, Any]] = {}
        for nid, task in self.tasks.items():
            parents = [outputs[p] for p in task.parents if p in outputs]
            in_header = parents[0] if parents else header
            received[nid] = in_header
            outputs[nid] = (dict(in_header) if task.kind in ("sink", "aggregate")
                            else task.op_spec.output_header(in_header, task.params))
        return received

    def estimates(self, item: Mapping[str, Any]) -> tuple[NodeEstimate, ...] | None:
        """One :class:`NodeEstimate` per node for ``item``; without a header, the default
        (:meth:`set_default`) or ``None``."""
        sig = self.signature(item)
        if sig is None:
            return self._default
        cached = self._cache.get(sig)
        if cached is None:
            cached = self._estimate(header_fields(item))  # type: ignore[arg-type]
            self._cache[sig] = cached
        return cached

    def set_default(self, items: Iterable[Mapping[str, Any]], limit: float | None = None
                    ) -> None:
        """Estimate items without a header like the largest item that has one (ignoring
        items above ``limit`` bytes: those are refused or tiled, not typical)."""
        best: tuple[NodeEstimate, ...] | None = None
        best_peak = -1
        seen: set[int] = set()
        for item in items:
            if not has_size(item):
                continue
            est = self.estimates(item) or ()
            if id(est) in seen:  # items share their estimates: each tuple once
                continue
            seen.add(id(est))
            peak = max((e.single for e in est), default=0)
            if est and peak > best_peak and (not limit or peak <= limit):
                best, best_peak = est, peak
        self._default = best

    def item_peak(self, item: Mapping[str, Any]) -> int:
        """The largest task estimate of any node for ``item`` alone (0 when unknown)."""
        est = self.estimates(item)
        return max((e.single for e in est), default=0) if est else 0

    def worst_node(self, item: Mapping[str, Any]) -> tuple[str, int]:
        """The node with the largest single-item estimate, and that estimate."""
        est = self.estimates(item) or ()
        if not est:
            return self.node_ids[0], 0
        i = max(range(len(est)), key=lambda k: est[k].single)
        return self.node_ids[i], est[i].single

    def chunk_peaks(self, items: Iterable[Mapping[str, Any]]) -> dict[str, int]:
        """Per node, the estimated peak of its task over a chunk of ``items``."""
        n = len(self.node_ids)
        hold = [0] * n
        extra = [0] * n
        for item in items:
            est = self.estimates(item)
            if not est:
                continue
            for k in range(n):
                e = est[k]
                hold[k] += e.hold
                if e.extra > extra[k]:
                    extra[k] = e.extra
        return {nid: hold[k] + extra[k] for k, nid in enumerate(self.node_ids)}

    def make_chunks(self, items: Sequence[Mapping[str, Any]], size: int, limit: float | None,
                    *, start: int = 0, make: Callable[[int, tuple], Any] | None = None,
                    peaks: dict[int, dict[str, int]] | None = None) -> list[Any]:
        """Group consecutive ``items`` into chunks of at most ``size`` items whose every
        node's task estimate stays within ``limit`` bytes (a single item always makes a
        chunk, however large).

        Parameters
        ----------
        make
            ``make(index, items) -> chunk``; default :class:`dagflow.compile.Chunk`.
        peaks
            Filled, when given and ``limit`` is set, with each chunk's :meth:`chunk_peaks`
            by chunk index (computed on the way, at no extra cost).
        """
        if make is None:
            from dagflow.compile.spec import Chunk

            make = Chunk
        size = max(1, int(size))
        if not limit or limit <= 0:
            return [make(start + i, tuple(items[j:j + size]))
                    for i, j in enumerate(range(0, len(items), size))]
        chunks: list[Any] = []
        n = len(self.node_ids)
        nodes = range(n)
        first = 0
        count = 0
        hold = [0] * n
        extra = [0] * n
        # a chunk of items that all share one estimates tuple (the items planned without
        # a header share the default): its sums are count * hold and the extra, and how
        # many fit is known in advance, so those items cost no loop over the nodes
        uniform: tuple[NodeEstimate, ...] | None = None
        caps: dict[int, int] = {}

        def settle() -> None:  # the uniform chunk's sums, before a different item joins
            nonlocal uniform
            if uniform is not None:
                for k in nodes:
                    hold[k], extra[k] = count * uniform[k].hold, uniform[k].extra
                uniform = None

        def close(end: int) -> None:
            settle()
            index = start + len(chunks)
            chunks.append(make(index, tuple(items[first:end])))
            if peaks is not None:
                peaks[index] = {nid: hold[k] + extra[k] for k, nid in enumerate(self.node_ids)}

        for pos, item in enumerate(items):
            est = self.estimates(item) or ()
            if est and est is uniform:
                cap = caps.get(id(est))
                if cap is None:
                    cap = caps[id(est)] = _uniform_cap(est, limit)
                if count < size and count < cap:
                    count += 1
                    continue
                close(pos)
                first, count, hold, extra = pos, 1, [0] * n, [0] * n
                uniform = est
                continue
            if count:
                settle()
                fits = count < size
                if fits:  # a plain loop: this runs for every item of a batch
                    for k in range(len(est)):
                        e = est[k]
                        if hold[k] + e.hold + (extra[k] if extra[k] > e.extra else e.extra) \
                                > limit:
                            fits = False
                            break
                if not fits:
                    close(pos)
                    first, count, hold, extra = pos, 0, [0] * n, [0] * n
            if not count and est:
                uniform = est  # a chunk starting with this item
                count = 1
                continue
            count += 1
            for k in nodes if est else ():
                e = est[k]
                hold[k] += e.hold
                if e.extra > extra[k]:
                    extra[k] = e.extra
        if count:
            close(len(items))
        return chunks

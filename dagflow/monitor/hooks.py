"""Where the runtime and the tasks tell monitoring what happens.

The runtime calls :func:`run_started` once connected and :func:`run_finished` at the
end; each chunk's records task calls :func:`chunk_done` on its worker with the chunk's
records. Monitoring (the scheduler plugin, metrics files, the report) hangs off these.

* :func:`run_started` writes the run's plan to ``<run_dir>/metrics/run.json`` and, on
  the scheduler, installs the :class:`~dagflow.monitor.plugin.DagflowMonitor` plugin,
  the JSON routes and the dashboard page (idempotent) and tells it about the run.
* :func:`with_metrics` adds the metrics' columns to a chunk's record columns, so that
  the chunk's one Parquet part holds both; :func:`chunk_done` then, inside a
  distributed worker, sends one compact payload to the plugin with
  ``Worker.log_event`` (for a run without checkpoints it first writes the metrics as
  their own part, atomically like the records).
* :func:`run_finished` fetches what only the scheduler knew (worker resources, queue
  depth, Dask's CPU / non-CPU seconds per node), writes it to the run directory, appends
  the run's per-node figures to the history used for planning and writes the report.

Monitoring never fails a run: every hook logs a warning and carries on when something
goes wrong. ``dagflow.monitor.enabled: false`` turns all of it off. Hooks that run in
tasks read the worker's configuration. No Dask import at module import time (this module
is imported on workers by :mod:`dagflow.execute`).
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import time
from array import array
from collections.abc import Mapping, Sequence
from typing import Any

from dagflow import config
from dagflow.monitor.sampling import interval_counters

__all__ = ["breaker_changed", "chunk_done", "chunk_payload", "chunk_sample", "enabled",
           "metric_columns", "metric_rows", "run_finished", "run_started", "with_metrics"]

logger = logging.getLogger(__name__)


def enabled() -> bool:
    """Whether monitoring is on (``dagflow.monitor.enabled``)."""
    return bool(config.get("monitor.enabled", True))


# --- client side ---------------------------------------------------------------------


def run_plan(ctx: Any, tasks: Mapping[str, Any], items: int | None = None,
             batch_plan: Any = None) -> dict[str, Any]:
    """The run as the plugin and the report need it (JSON-ready): with the batch's plan
    (:class:`~dagflow.runtime.plan.BatchPlan`), its threads, workers, chunks and the
    prediction the report shows beside what happened."""
    plan: dict[str, Any] = {
        "run_id": ctx.run_id, "workflow": ctx.workflow, "run_dir": os.fspath(ctx.run_dir),
        "output_dir": os.fspath(ctx.output_dir), "started": time.time(), "items": items,
        "nodes": {nid: {"op": t.op, "kind": t.kind, "parents": list(t.parents),
                        "device": getattr(t, "device", "auto"), "leaf": bool(t.leaf),
                        "timeout": getattr(t, "timeout", None)}
                  for nid, t in tasks.items()},
    }
    if batch_plan is not None:
        plan.update(threads=batch_plan.threads, workers=batch_plan.workers,
                    chunk_size=batch_plan.chunk_size, chunks=batch_plan.chunks,
                    prediction=batch_plan.prediction or None)
    return plan


def run_started(client: Any, ctx: Any, tasks: Mapping[str, Any], *,
                items: int | None = None, batch_plan: Any = None) -> None:
    """The run is connected to its cluster and about to submit chunks."""
    if not enabled():
        return
    from dagflow.monitor.store import metrics_dir, write_json

    plan = run_plan(ctx, tasks, items, batch_plan)
    try:
        write_json(metrics_dir(ctx.run_dir) / "run.json", plan)
    except Exception as exc:
        logger.warning("could not write the run's monitoring plan: %s", exc)
    if client is None:
        return
    try:  # every worker process reads its counters now: its first chunk's interval
        client.run(_worker_baseline)
    except Exception as exc:
        logger.debug("the workers could not read their counters: %s", exc)
    try:
        client.run_on_scheduler(_scheduler_begin_run, plan)
    except Exception as exc:
        logger.warning("dagflow monitoring is off on this cluster (the scheduler could not "
                       "install it: %s: %s)", type(exc).__name__, exc)


def breaker_changed(client: Any, ctx: Any, node: str, state: str, why: str | None = None) -> Any:
    """A circuit breaker changed state (sent to the plugin for Prometheus and the page).

    Returns what ``client.log_event`` returns (an awaitable for an asynchronous client).
    """
    if client is None or not enabled():
        return None
    from dagflow.monitor.plugin import BREAKER_TOPIC

    try:
        return client.log_event(BREAKER_TOPIC, {"run": ctx.run_id, "node": node,
                                                "state": state, "why": why, "t": time.time()})
    except Exception as exc:
        logger.debug("could not report a breaker change: %s", exc)
        return None


def run_finished(client: Any, ctx: Any, result: Any) -> float:
    """Every chunk and aggregate is done; the summary is about to be written.

    Returns the CPU seconds the scheduler plugin spent while the run ran (0 when it is
    not there).
    """
    if not enabled():
        return 0.0
    data = None
    if client is not None:
        try:
            from dagflow.monitor.store import metrics_dir, read_json

            plan = read_json(metrics_dir(ctx.run_dir) / "run.json") or {}
            # Dask's CPU / non-CPU split is only read for nodes without a timeout (see
            # dagflow.monitor.analysis); only then wait for the heartbeat that carries it
            wait = any(n.get("timeout", 0) is None for n in plan.get("nodes", {}).values())
            data = client.run_on_scheduler(_scheduler_end_run, ctx.run_id, wait)
        except Exception as exc:
            logger.warning("could not fetch the scheduler's measurements: %s", exc)
        if data:
            try:
                _write_scheduler_data(ctx.run_dir, data)
            except Exception as exc:
                logger.warning("could not write the scheduler's measurements: %s", exc)
    report = config.get("monitor.report", "cli") is True  # "cli": the command sets it
    try:
        from dagflow.monitor import history
        from dagflow.monitor.analysis import analyze

        # the whole analysis only for the report; the history needs the node figures
        analysis = analyze(ctx.run_dir, duration_s=getattr(result, "duration_s", None)) \
            if report else None
        live = (data or {}).get("nodes") if client is not None else None
        history.append_run(ctx.run_dir, analysis=analysis,
                           live=live if _covers(live, getattr(result, "nodes", None)) else None,
                           duration_s=getattr(result, "duration_s", None))
    except Exception as exc:
        logger.warning("could not analyse this run: %s: %s", type(exc).__name__, exc)
        return plugin_cpu_s(data)
    if report:
        try:
            from dagflow.monitor.report import write_report

            write_report(ctx.run_dir, analysis=analysis)
        except Exception as exc:
            logger.warning("could not write the run report: %s: %s", type(exc).__name__, exc)
    return plugin_cpu_s(data)


def plugin_cpu_s(data: Mapping[str, Any] | None) -> float:
    """The scheduler plugin's CPU seconds in what it returned at a run's end."""
    try:
        return max(0.0, float((data or {}).get("cpu_s") or 0.0))
    except (TypeError, ValueError):
        return 0.0


def _covers(live: Mapping[str, Mapping[str, Any]] | None,
            counts: Mapping[str, Mapping[str, int]] | None) -> bool:
    """Whether the plugin's node figures count every record the run counted.

    A chunk's payload reaches the plugin before its task is reported finished (both go
    through the worker's one stream to the scheduler, in order), so they do unless some
    records were made outside the workers (tiled items, failed tasks) or the plugin is
    missing; then the history is computed from the records parts.
    """
    if not live or not counts:
        return False
    for node, by_status in counts.items():
        figures = live.get(node)
        if figures is None or any(int(figures.get(status) or 0) != n
                                  for status, n in by_status.items() if n):
            return False
    return True


def _write_scheduler_data(run_dir: str, data: Mapping[str, Any]) -> None:
    import pyarrow as pa

    from dagflow.monitor.store import metrics_dir, write_json, write_table

    directory = metrics_dir(run_dir)
    for name in ("workers", "queue", "throughput"):
        columns = data.get("timeline" if name == "throughput" else name)
        if columns and any(columns.values()):
            write_table(directory / f"{name}.parquet", pa.table(columns))
    write_json(directory / "scheduler.json",
               {k: data.get(k) for k in ("run", "nodes", "tasks", "breakers", "fine_metrics")})


def _worker_baseline() -> bool:
    from dagflow.monitor.sampling import mark_baseline

    return mark_baseline()


# --- scheduler side (run through Client.run_on_scheduler) -----------------------------


def _scheduler_begin_run(plan: Mapping[str, Any], dask_scheduler: Any = None) -> bool:
    from dagflow.monitor.preload import install

    plugin = install(dask_scheduler)
    plugin.begin_run(plan)
    return True


async def _scheduler_end_run(run_id: str, wait: bool = False,
                             dask_scheduler: Any = None) -> dict[str, Any]:
    import asyncio

    from dagflow.monitor.plugin import PLUGIN_NAME

    plugin = dask_scheduler.plugins.get(PLUGIN_NAME)
    if plugin is None:
        return {}
    if wait:  # Dask's per-task CPU / non-CPU seconds arrive with the next heartbeat
        await asyncio.sleep(min(1.0, _heartbeat_interval(dask_scheduler)))
    return plugin.end_run(run_id)


def _heartbeat_interval(scheduler: Any) -> float:
    try:
        from distributed.scheduler import heartbeat_interval

        return float(heartbeat_interval(len(scheduler.workers)))
    except Exception:
        return 0.5


# --- worker side ---------------------------------------------------------------------


_KINDS: dict[str, str] = {}


def _kind(op: str) -> str:
    kind = _KINDS.get(op)
    if kind is None:
        try:
            from dagflow.ops.registry import get_op

            kind = get_op(op).kind
        except Exception:
            kind = "transform"
        _KINDS[op] = kind
    return kind


def _size(path: Any) -> int | None:
    if not path:
        return None
    try:
        return os.stat(path).st_size
    except OSError:
        return None


#: The columns of the records that the metrics carry as they are.
_RECORD_COLUMNS = ("run_id", "item_id", "rel", "node_id", "op", "status", "error_class",
                   "attempts", "duration_s", "cpu_s", "started", "worker", "device",
                   "width", "height")


def _record_columns(records: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]
                    ) -> Mapping[str, Sequence[Any]]:
    if isinstance(records, Mapping):
        return records
    from dagflow.recovery.checkpoint import record_columns

    return record_columns(records)


def metric_columns(ctx: Any,
                   records: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
                   sample: Mapping[str, Any] | None = None,
                   sizes: Mapping[int, int] | None = None) -> dict[str, list[Any]]:
    """The metrics of a chunk's records, column by column: one entry per item and node.

    ``records`` are rows or columns by name
    (:func:`~dagflow.recovery.checkpoint.record_columns`); their columns are returned
    as they are (the same lists), beside what the records do not say: the chunk (its
    first item), megapixels, bytes read by source nodes (the input file's size, from
    ``sizes`` by item id when the caller knows it, else a ``stat``) and written by sink
    nodes (the output file), the process's and the machine's counters now
    (:func:`~dagflow.monitor.sampling.host_counters`: where time went off the CPU), and,
    given a ``sample``, the worker process's CPU, memory and GPU when the chunk was
    committed. Built a column at a time: a chunk has
    thousands of rows and this runs for every one of them.
    """
    records = _record_columns(records)
    cols: dict[str, Any] = dict(records)
    n = len(cols["item_id"])
    for k in _RECORD_COLUMNS:
        if k not in cols:
            cols[k] = [None] * n
    cols["chunk"] = [min(cols["item_id"], default=None)] * n
    cols["megapixels"] = [(w * h / 1e6) if w and h else None
                          for w, h in zip(cols["width"], cols["height"], strict=True)]
    state_dir = os.fspath(getattr(ctx, "state_dir", "") or "") or None
    bytes_in: list[int | None] = [None] * n
    bytes_out: list[int | None] = [None] * n
    item_ids, paths, outputs = cols["item_id"], cols.get("input_path"), cols.get("output_path")
    for i, (op, status) in enumerate(zip(cols["op"], cols["status"], strict=True)):
        if status != "ok":
            continue
        kind = _kind(op or "")
        if kind == "source":
            size = sizes.get(item_ids[i]) if sizes else None
            bytes_in[i] = size if size is not None and size >= 0 else \
                _size(paths[i] if paths else None)
        elif kind == "sink":
            out_path = outputs[i] if outputs else None
            if out_path and not (state_dir and os.fspath(out_path).startswith(state_dir)):
                # recorded relative to the output root, with its size
                sizes_out = cols.get("output_size")
                bytes_out[i] = sizes_out[i] if sizes_out and sizes_out[i] is not None else \
                    _size(os.path.join(getattr(ctx, "output_dir", ""), out_path))
    cols["bytes_in"], cols["bytes_out"] = bytes_in, bytes_out
    if n:  # once per chunk, on its first row (nulls cost next to nothing in Parquet)
        before, now = interval_counters()
        values = [None] * len(now) if before is None else list(before.values())
        cols["counters"] = [[None if v is None else float(v)
                             for v in (*values, *now.values())], *([None] * (n - 1))]
    if sample is not None:
        for name, key in (("sample_worker", "worker"), ("sample_time", "time"),
                          ("worker_cpu", "cpu"), ("worker_memory", "memory"),
                          ("worker_gpu", "gpu_utilization")):
            cols[name] = [sample.get(key)] * n
    return cols


def metric_rows(ctx: Any, rows: Sequence[Mapping[str, Any]],
                sample: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The metrics of a chunk's records as one dict per item and node
    (:func:`metric_columns`, row by row)."""
    cols = metric_columns(ctx, rows, sample or {})
    names = list(cols)
    return [dict(zip(names, values, strict=True)) for values in zip(*cols.values(), strict=True)]


def _columns(metrics: Sequence[Mapping[str, Any]] | Mapping[str, list[Any]],
             *names: str) -> list[list[Any]]:
    """The named columns of metrics given as rows or as columns."""
    if isinstance(metrics, Mapping):
        return [metrics[k] for k in names]
    return [[m.get(k) for m in metrics] for k in names]


_RAN = frozenset({"ok", "failed"})
_FAILED = frozenset({"failed", "upstream_failed"})


def chunk_payload(ctx: Any, metrics: Sequence[Mapping[str, Any]] | Mapping[str, list[Any]],
                  worker: str | None = None,
                  sample: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The compact, columnar message a chunk sends to the scheduler plugin.

    ``metrics`` are :func:`metric_rows` or :func:`metric_columns`. Per node: ``d``
    durations of the items the op ran on (float64 bytes, read by
    :func:`dagflow.monitor.plugin.payload_durations`), ``s`` counts by status, ``e``
    counts by error class, ``r`` item retries (attempts beyond the first), ``bi`` /
    ``bo`` bytes read and written, ``mp`` megapixels, ``dev`` counts by device. For the
    chunk: ``items`` and ``failed`` items. Only msgpack-friendly types.
    """
    columns = _columns(metrics, "node_id", "op", "status", "item_id", "duration_s",
                       "attempts", "device", "error_class", "bytes_in", "bytes_out",
                       "megapixels")
    node_ids, ops, statuses, item_ids = columns[:4]
    groups: dict[str, list[int]] = {}
    if node_ids and node_ids.count(node_ids[0]) == len(node_ids):  # counted in C
        groups[node_ids[0]] = []  # one node: all the rows
    else:
        for i, n in enumerate(node_ids):
            group = groups.get(n)
            if group is None:
                groups[n] = [i]
            else:
                group.append(i)
    nodes = {n: _node_payload(ops[idx[0] if idx else 0], idx, columns)
             for n, idx in groups.items()}
    failed = {iid for iid, status in zip(item_ids, statuses, strict=True) if status in _FAILED}
    return {"v": 1, "run": getattr(ctx, "run_id", None), "worker": worker, "t": time.time(),
            "items": len(set(item_ids)), "failed": len(failed), "nodes": nodes,
            "res": {k: (sample or {}).get(k) for k in ("cpu", "memory", "gpu_utilization")}}


def _node_payload(op: Any, idx: list[int], columns: list[list[Any]]) -> dict[str, Any]:
    """One node's entry in :func:`chunk_payload` (``idx``: its rows; empty: all rows).

    Written for chunks of a thousand rows: counts and sums in C where the values allow.
    """
    def take(col: list[Any]) -> list[Any]:
        return [col[i] for i in idx] if idx else col

    _, _, status, _, duration, attempts, device, cls, bi, bo, mp = map(take, columns)
    counts = collections.Counter(status)
    if counts.keys() <= _RAN:  # every row ran: no selection needed
        durations, ran_attempts, ran_devices = duration, attempts, device
    else:
        ran = [i for i, s in enumerate(status) if s in _RAN]
        durations = [duration[i] for i in ran]
        ran_attempts = [attempts[i] for i in ran]
        ran_devices = [device[i] for i in ran]
    errors = collections.Counter(cls[i] or s for i, s in enumerate(status) if s in _FAILED) \
        if counts.keys() & _FAILED else {}
    if None in durations:
        durations = [d or 0.0 for d in durations]
    if None in ran_attempts or 0 in ran_attempts:
        retries = sum(a - 1 for a in ran_attempts if a and a > 1)
    else:
        retries = sum(ran_attempts) - len(ran_attempts)
    # durations as the bytes of a float64 array: Dask walks a list value by value, twice,
    # before sending it (is it msgpack-able? how large?); bytes it takes as they are
    return {"op": op, "d": array("d", durations).tobytes(), "s": dict(counts),
            "e": dict(errors), "r": retries, "bi": sum(filter(None, bi)),
            "bo": sum(filter(None, bo)),
            "mp": float(sum(filter(None, mp))),
            "dev": dict(collections.Counter(filter(None, ran_devices)))}


def _current_worker() -> Any:
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def chunk_sample() -> dict[str, Any] | None:
    """The sample a chunk's metrics carry: none inside a distributed worker (the plugin
    samples every worker from the scheduler), else this process's CPU, memory and GPU."""
    if _current_worker() is not None:
        return None
    from dagflow.monitor.sampling import process_sample

    sample = process_sample()
    sample["worker"] = f"{socket.gethostname()}:{os.getpid()}"
    return sample


def with_metrics(ctx: Any, columns: Mapping[str, Sequence[Any]],
                 sizes: Mapping[int, int] | None = None) -> Mapping[str, Sequence[Any]]:
    """A chunk's record columns with the metrics' own columns beside them (for the part
    that holds both); the columns alone when monitoring is off or fails."""
    if not enabled():
        return columns
    try:
        return metric_columns(ctx, columns, chunk_sample(), sizes)
    except Exception as exc:  # monitoring never fails a chunk
        logger.warning("dagflow monitoring of a chunk failed: %s: %s", type(exc).__name__, exc)
        return columns


def chunk_done(ctx: Any, records: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
               sizes: Mapping[int, int] | None = None, *, chunk: int | None = None,
               written: bool = False) -> None:
    """A chunk's records are committed (runs on the worker).

    ``records`` are rows or columns (with the metrics' columns, from
    :func:`with_metrics`, when ``written``: the records part already holds them);
    otherwise the metrics are written here as the chunk's part of the metrics directory.
    Then the plugin gets the chunk's payload, and OpenTelemetry its spans. ``sizes`` are
    the input files' sizes by item id, when known.
    """
    if not enabled():
        return
    try:
        # the columns from with_metrics already carry the metrics' own
        metrics = records if isinstance(records, Mapping) and "chunk" in records \
            else metric_columns(ctx, records, chunk_sample(), sizes)
        if not metrics["item_id"]:
            return
        if not written and getattr(ctx, "run_dir", None):
            from dagflow.monitor.store import write_metrics

            write_metrics(ctx.run_dir, metrics, chunk)
        worker = _current_worker()
        if worker is not None:
            worker.log_event(_topic(), chunk_payload(ctx, metrics, worker.address))
        if config.get("monitor.opentelemetry", True):
            from dagflow.monitor.otel import emit_spans

            emit_spans(ctx, metrics)
    except Exception as exc:  # monitoring never fails a chunk
        logger.warning("dagflow monitoring of a chunk failed: %s: %s", type(exc).__name__, exc)


def _topic() -> str:
    from dagflow.monitor.plugin import METRICS_TOPIC

    return METRICS_TOPIC


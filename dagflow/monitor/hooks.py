"""Where the runtime and the tasks tell monitoring what happens.

The runtime calls :func:`run_started` once connected and :func:`run_finished` at the
end; each chunk's records task calls :func:`chunk_done` on its worker with the chunk's
records. Monitoring (the scheduler plugin, metrics files, the report) hangs off these.

* :func:`run_started` writes the run's plan to ``<run_dir>/metrics/run.json`` and, on
  the scheduler, installs the :class:`~dagflow.monitor.plugin.DagflowMonitor` plugin,
  the JSON routes and the dashboard page (idempotent) and tells it about the run.
* :func:`chunk_done` writes the chunk's metrics part (atomically, like the records) and,
  inside a distributed worker, sends one compact payload to the plugin with
  ``Worker.log_event``; elsewhere (the synchronous scheduler) it only writes the file.
* :func:`run_finished` fetches what only the scheduler knew (worker resources, queue
  depth, Dask's CPU / non-CPU seconds per node), writes it to the run directory, appends
  the run's per-node figures to the history used for planning and writes the report.

Monitoring never fails a run: every hook logs a warning and carries on when something
goes wrong. ``dagflow.monitor.enabled: false`` turns all of it off. Hooks that run in
tasks read the worker's configuration. No Dask import at module import time (this module
is imported on workers by :mod:`dagflow.execute`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

from dagflow import config

__all__ = ["breaker_changed", "chunk_done", "chunk_payload", "enabled", "metric_columns",
           "metric_rows",
           "run_finished", "run_started"]

logger = logging.getLogger(__name__)


def enabled() -> bool:
    """Whether monitoring is on (``dagflow.monitor.enabled``)."""
    return bool(config.get("monitor.enabled", True))


# --- client side ---------------------------------------------------------------------


def run_plan(ctx: Any, tasks: Mapping[str, Any], items: int | None = None) -> dict[str, Any]:
    """The run as the plugin and the report need it (JSON-ready)."""
    return {
        "run_id": ctx.run_id, "workflow": ctx.workflow, "run_dir": os.fspath(ctx.run_dir),
        "output_dir": os.fspath(ctx.output_dir), "started": time.time(), "items": items,
        "nodes": {nid: {"op": t.op, "kind": t.kind, "parents": list(t.parents),
                        "device": getattr(t, "device", "auto"), "leaf": bool(t.leaf),
                        "timeout": getattr(t, "timeout", None)}
                  for nid, t in tasks.items()},
    }


def run_started(client: Any, ctx: Any, tasks: Mapping[str, Any], *,
                items: int | None = None) -> None:
    """The run is connected to its cluster and about to submit chunks."""
    if not enabled():
        return
    from dagflow.monitor.store import metrics_dir, write_json

    plan = run_plan(ctx, tasks, items)
    try:
        write_json(metrics_dir(ctx.run_dir) / "run.json", plan)
    except Exception as exc:
        logger.warning("could not write the run's monitoring plan: %s", exc)
    if client is None:
        return
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


def run_finished(client: Any, ctx: Any, result: Any) -> None:
    """Every chunk and aggregate is done; the summary is about to be written."""
    if not enabled():
        return
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
            data = None
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
        history.append_run(ctx.run_dir, analysis=analysis)
    except Exception as exc:
        logger.warning("could not analyse this run: %s: %s", type(exc).__name__, exc)
        return
    if report:
        try:
            from dagflow.monitor.report import write_report

            write_report(ctx.run_dir, analysis=analysis)
        except Exception as exc:
            logger.warning("could not write the run report: %s: %s", type(exc).__name__, exc)


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


def metric_columns(ctx: Any, rows: Sequence[Mapping[str, Any]],
                   sample: Mapping[str, Any] | None = None,
                   sizes: Mapping[int, int] | None = None) -> dict[str, list[Any]]:
    """The metrics of a chunk's records, column by column: one entry per item and node.

    Adds what the records do not say: megapixels, bytes read by source nodes (the input
    file's size, from ``sizes`` by item id when the caller knows it, else a ``stat``) and
    written by sink nodes (the output file), and the worker process's CPU, memory and GPU
    when the chunk was committed. Built a column at a time: a chunk has thousands of rows
    and this runs for every one of them.
    """
    sample = sample or {}
    n = len(rows)
    cols: dict[str, list[Any]] = {k: [r.get(k) for r in rows] for k in _RECORD_COLUMNS}
    cols["attempts"] = [a or 0 for a in cols["attempts"]]
    cols["duration_s"] = [float(d or 0.0) for d in cols["duration_s"]]
    cols["started"] = [float(t or 0.0) for t in cols["started"]]
    cols["chunk"] = [min(cols["item_id"], default=None)] * n
    cols["megapixels"] = [(w * h / 1e6) if w and h else None
                          for w, h in zip(cols["width"], cols["height"], strict=True)]
    state_dir = os.fspath(getattr(ctx, "state_dir", "") or "") or None
    bytes_in: list[int | None] = [None] * n
    bytes_out: list[int | None] = [None] * n
    for i, (op, status) in enumerate(zip(cols["op"], cols["status"], strict=True)):
        if status != "ok":
            continue
        kind = _kind(op or "")
        if kind == "source":
            r = rows[i]
            size = sizes.get(r["item_id"]) if sizes else None
            bytes_in[i] = size if size is not None and size >= 0 else _size(r.get("input_path"))
        elif kind == "sink":
            out_path = rows[i].get("output_path")
            if out_path and not (state_dir and os.fspath(out_path).startswith(state_dir)):
                bytes_out[i] = _size(out_path)
    cols["bytes_in"], cols["bytes_out"] = bytes_in, bytes_out
    for name, key in (("sample_worker", "worker"), ("sample_time", "time"),
                      ("worker_cpu", "cpu"), ("worker_memory", "memory"),
                      ("worker_gpu", "gpu_utilization")):
        cols[name] = [sample.get(key)] * n
    return cols


def metric_rows(ctx: Any, rows: Sequence[Mapping[str, Any]],
                sample: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The metrics of a chunk's records as one dict per item and node
    (:func:`metric_columns`, row by row)."""
    cols = metric_columns(ctx, rows, sample)
    names = list(cols)
    return [dict(zip(names, values, strict=True)) for values in zip(*cols.values(), strict=True)]


def _columns(metrics: Sequence[Mapping[str, Any]] | Mapping[str, list[Any]],
             *names: str) -> list[list[Any]]:
    """The named columns of metrics given as rows or as columns."""
    if isinstance(metrics, Mapping):
        return [metrics[k] for k in names]
    return [[m.get(k) for m in metrics] for k in names]


def chunk_payload(ctx: Any, metrics: Sequence[Mapping[str, Any]] | Mapping[str, list[Any]],
                  worker: str | None = None,
                  sample: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The compact, columnar message a chunk sends to the scheduler plugin.

    ``metrics`` are :func:`metric_rows` or :func:`metric_columns`. Per node: ``d``
    durations of the items the op ran on, ``s`` counts by status, ``e`` counts by error
    class, ``r`` item retries (attempts beyond the first), ``bi`` / ``bo`` bytes read and
    written, ``mp`` megapixels, ``dev`` counts by device. For the chunk: ``items`` and
    ``failed`` items. Only msgpack-friendly types.
    """
    nodes: dict[str, dict[str, Any]] = {}
    items: set[Any] = set()
    failed: set[Any] = set()
    columns = _columns(metrics, "node_id", "op", "status", "item_id", "duration_s",
                       "attempts", "device", "error_class", "bytes_in", "bytes_out",
                       "megapixels")
    for n, op, status, iid, duration, attempts, device, cls, bi, bo, mp in zip(*columns,
                                                                              strict=True):
        entry = nodes.get(n)
        if entry is None:
            entry = nodes[n] = {"op": op, "d": [], "s": {}, "e": {}, "r": 0,
                                "bi": 0, "bo": 0, "mp": 0.0, "dev": {}}
        entry["s"][status] = entry["s"].get(status, 0) + 1
        items.add(iid)
        if status in ("ok", "failed"):
            entry["d"].append(round(duration, 6))
            entry["r"] += max(0, int(attempts or 0) - 1)
            if device:
                entry["dev"][device] = entry["dev"].get(device, 0) + 1
        if status in ("failed", "upstream_failed"):
            failed.add(iid)
            cls = cls or status
            entry["e"][cls] = entry["e"].get(cls, 0) + 1
        entry["bi"] += bi or 0
        entry["bo"] += bo or 0
        entry["mp"] += mp or 0.0
    return {"v": 1, "run": getattr(ctx, "run_id", None), "worker": worker, "t": time.time(),
            "items": len(items), "failed": len(failed), "nodes": nodes,
            "res": {k: (sample or {}).get(k) for k in ("cpu", "memory", "gpu_utilization")}}


def _current_worker() -> Any:
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def chunk_done(ctx: Any, rows: Sequence[Mapping[str, Any]],
               sizes: Mapping[int, int] | None = None) -> None:
    """A chunk's records are written (runs on the worker); ``sizes`` are the input files'
    sizes by item id, when known."""
    if not rows or not enabled():
        return
    try:
        from dagflow.monitor.sampling import process_sample
        from dagflow.monitor.store import write_metrics

        sample = process_sample()
        worker = _current_worker()
        sample["worker"] = worker.address if worker is not None else \
            f"{socket.gethostname()}:{os.getpid()}"
        metrics = metric_columns(ctx, rows, sample, sizes)
        if getattr(ctx, "run_dir", None):
            write_metrics(ctx.run_dir, metrics)
        if worker is not None:
            worker.log_event(_topic(), chunk_payload(ctx, metrics, worker.address, sample))
        if config.get("monitor.opentelemetry", True):
            from dagflow.monitor.otel import emit_spans

            emit_spans(ctx, metrics)
    except Exception as exc:  # monitoring never fails a chunk
        logger.warning("dagflow monitoring of a chunk failed: %s: %s", type(exc).__name__, exc)


def _topic() -> str:
    from dagflow.monitor.plugin import METRICS_TOPIC

    return METRICS_TOPIC


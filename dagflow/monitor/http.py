"""JSON under ``/dagflow/api/`` on the scheduler's HTTP server, for scripts.

``GET /dagflow/api/`` lists the endpoints; each returns part of the plugin's snapshot
(:meth:`~dagflow.monitor.plugin.DagflowMonitor.snapshot`), for the current run or the
run named by ``?run=<run id>``:

``summary``   the run, totals and the queue now
``nodes``     per node: counts, pending, p50 / p90 / p99, errors, retries, task states
``timeline``  throughput, errors and retries per second; queue depth over time
``workers``   CPU, memory and GPU per worker
``chunks``    chunks in flight with their progress
``runs``      the runs the plugin knows
``snapshot``  everything at once

Served through a route module (``routes``, usable in
``distributed.scheduler.http.routes``) or added to a running scheduler by
:func:`install_routes`. No Bokeh here.
"""

from __future__ import annotations

import json
import logging
import weakref
from typing import Any

from distributed.http.utils import RequestHandler

from dagflow.monitor.plugin import ensure_plugin

__all__ = ["ENDPOINTS", "DagflowAPIHandler", "install_routes", "routes"]

logger = logging.getLogger(__name__)

ENDPOINTS = ("summary", "nodes", "timeline", "workers", "chunks", "runs", "snapshot")
_installed: weakref.WeakSet[Any] = weakref.WeakSet()


def _part(snap: dict[str, Any], name: str) -> Any:
    if name == "summary":
        nodes = snap["nodes"]
        totals = {k: sum(n[k] for n in nodes) for k in ("ok", "failed", "skipped",
                                                        "upstream_failed")}
        return {"time": snap["time"], "run": snap["run"], "totals": totals,
                "queue": snap["queue_now"], "chunks_in_flight": len(snap["chunks"]),
                "workers": len(snap["workers"]), "breakers": snap["breakers"],
                "task_retries": snap["task_retries"]}
    if name == "nodes":
        return {"time": snap["time"], "nodes": snap["nodes"]}
    if name == "timeline":
        return {"time": snap["time"], "throughput": snap["throughput"], "queue": snap["queue"]}
    if name == "workers":
        return {"time": snap["time"], "workers": snap["workers"]}
    if name == "chunks":
        return {"time": snap["time"], "chunks": snap["chunks"]}
    if name == "runs":
        return {"time": snap["time"], "runs": snap["runs"], "current": (snap["run"] or {})
                .get("run_id")}
    return snap


class DagflowAPIHandler(RequestHandler):
    """``GET /dagflow/api/<endpoint>``: JSON from the dagflow plugin."""

    def get(self, endpoint: str = "") -> None:
        endpoint = (endpoint or "").strip("/")
        self.set_header("Content-Type", "application/json")
        if endpoint in ("", "index"):
            self.write(json.dumps({"endpoints": [f"dagflow/api/{e}" for e in ENDPOINTS]}))
            return
        if endpoint not in ENDPOINTS:
            self.set_status(404)
            self.write(json.dumps({"error": f"unknown endpoint {endpoint!r}",
                                   "endpoints": list(ENDPOINTS)}))
            return
        plugin = ensure_plugin(self.server)
        run = self.get_query_argument("run", None)
        try:
            window = float(self.get_query_argument("window", "300"))
        except ValueError:
            window = 300.0
        snap = plugin.snapshot(run, window=window)
        self.write(json.dumps(_part(snap, endpoint), default=str))


#: A route module for ``distributed.scheduler.http.routes``.
routes: list[tuple[str, type, dict[str, Any]]] = [
    (r"dagflow/api/?(.*)", DagflowAPIHandler, {}),
]


def _prefix(scheduler: Any) -> str:
    from dagflow.monitor.preload import bokeh_prefix

    prefix = bokeh_prefix(scheduler) or "/"
    return prefix.rstrip("/") + "/"


def install_routes(scheduler: Any) -> bool:
    """Add the routes to a running scheduler's HTTP server (once); ``False`` without one."""
    if scheduler in _installed:
        return True
    app = getattr(scheduler, "http_application", None)
    if app is None:
        return False
    app.add_handlers(r".*", [(_prefix(scheduler) + r"dagflow/api/?(.*)", DagflowAPIHandler,
                              {"dask_server": scheduler})])
    _installed.add(scheduler)
    return True

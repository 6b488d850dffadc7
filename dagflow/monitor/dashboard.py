"""dagflow's page in the Dask dashboard: ``/individual-dagflow``.

Live, from the :class:`~dagflow.monitor.plugin.DagflowMonitor` plugin (each component
installs it if the scheduler has none): items done / failed / pending per node,
throughput over time, queue depth, error and retry rates, p50 and p99 duration per
node, CPU / memory / GPU per worker, and the chunks in flight with their progress.

Each chart is a component in Dask's style: ``root`` (the Bokeh model), ``source`` (its
``ColumnDataSource``) and ``update()``; tests call ``update()`` and read
``source.data``. The page is registered in ``distributed.dashboard.scheduler.
applications`` (:func:`register_page`, for schedulers started afterwards: it is then
listed in ``/individual-plots.json`` and the JupyterLab extension) or added to a running
scheduler's dashboard (:func:`install_page`).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from bokeh.layouts import column, row
from bokeh.models import (
    ColumnDataSource,
    DataRange1d,
    Div,
    FactorRange,
    HoverTool,
    NumeralTickFormatter,
)
from bokeh.plotting import figure

from dagflow.monitor.plugin import DagflowMonitor, ensure_plugin

__all__ = [
    "PAGE",
    "ChunksInFlight",
    "DagflowPage",
    "ErrorRates",
    "NodeDurations",
    "NodeProgress",
    "QueueDepth",
    "Throughput",
    "WorkerResources",
    "dagflow_doc",
    "install_page",
    "register_page",
]

logger = logging.getLogger(__name__)

PAGE = "/individual-dagflow"
#: Seconds of history the time series show.
WINDOW = 300.0
#: Seconds over which the rates are averaged.
SMOOTH = 5


class _Component:
    """A chart fed by the plugin's snapshot."""

    source: ColumnDataSource
    root: Any

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.plugin: DagflowMonitor = ensure_plugin(scheduler)

    def snapshot(self, snapshot: dict[str, Any] | None) -> dict[str, Any]:
        return snapshot if snapshot is not None else self.plugin.snapshot(window=WINDOW)

    def update(self, snapshot: dict[str, Any] | None = None) -> None:  # pragma: no cover
        raise NotImplementedError


def _factors(fig: Any, axis: str, factors: list[str]) -> None:
    rng = fig.y_range if axis == "y" else fig.x_range
    if list(rng.factors) != factors:
        rng.factors = factors


def _set(source: ColumnDataSource, data: dict[str, list[Any]]) -> None:
    if source.data != data:
        source.data = data


class NodeProgress(_Component):
    """Items done (ok, skipped), failed and pending per node, as stacked bars."""

    STACK = ("ok", "skipped", "failed", "pending")
    COLORS = ("#41ab5d", "#bdbdbd", "#cb181d", "#c6dbef")

    def __init__(self, scheduler: Any, **kwargs: Any) -> None:
        super().__init__(scheduler)
        self.source = ColumnDataSource({"node": [], **{k: [] for k in self.STACK},
                                        "upstream_failed": []})
        self.root = figure(name="dagflow-progress", title="Items per node: done, failed, "
                           "pending", y_range=FactorRange(), tools="", toolbar_location=None,
                           height=260, **kwargs)
        self.root.hbar_stack(list(self.STACK), y="node", height=0.7, source=self.source,
                             color=list(self.COLORS), legend_label=list(self.STACK))
        self.root.legend.orientation = "horizontal"
        self.root.legend.location = "bottom_right"
        self.root.add_tools(HoverTool(tooltips=[
            ("node", "@node"), ("ok", "@ok"), ("skipped", "@skipped"), ("failed", "@failed"),
            ("upstream failed", "@upstream_failed"), ("pending", "@pending")]))

    def update(self, snapshot: dict[str, Any] | None = None) -> None:
        snap = self.snapshot(snapshot)
        nodes = snap["nodes"][::-1]
        data = {"node": [n["node"] for n in nodes],
                "ok": [n["ok"] for n in nodes], "skipped": [n["skipped"] for n in nodes],
                "failed": [n["failed"] + n["upstream_failed"] for n in nodes],
                "upstream_failed": [n["upstream_failed"] for n in nodes],
                "pending": [n["pending"] or 0 for n in nodes]}
        _factors(self.root, "y", data["node"])
        _set(self.source, data)


def _rates(throughput: dict[str, list[Any]], now: float) -> dict[str, list[float]]:
    """Per-second series (zero-filled) smoothed over :data:`SMOOTH` seconds."""
    times = throughput.get("time", [])
    if not times:
        return {"time": [], "items": [], "errors": [], "retries": []}
    start = int(min(times))
    end = int(max(now, max(times)))
    n = end - start + 1
    series = {k: [0.0] * n for k in ("items", "errors", "retries")}
    for t, done, err, retry in zip(times, throughput["items_done"], throughput["errors"],
                                   throughput["retries"], strict=True):
        i = int(t) - start
        series["items"][i] += done
        series["errors"][i] += err
        series["retries"][i] += retry
    out: dict[str, list[float]] = {"time": [(start + i) * 1000.0 for i in range(n)]}
    for k, values in series.items():
        acc, smoothed = 0.0, []
        for i, v in enumerate(values):
            acc += v
            if i >= SMOOTH:
                acc -= values[i - SMOOTH]
            smoothed.append(acc / min(i + 1, SMOOTH))
        out[k] = smoothed
    return out


class Throughput(_Component):
    """Items finished per second over time."""

    def __init__(self, scheduler: Any, **kwargs: Any) -> None:
        super().__init__(scheduler)
        self.source = ColumnDataSource({"time": [], "items": []})
        self.root = figure(name="dagflow-throughput", title="Throughput (items/s)",
                           x_axis_type="datetime", tools="", toolbar_location=None,
                           height=220, x_range=DataRange1d(follow="end",
                                                           follow_interval=WINDOW * 1000,
                                                           range_padding=0), **kwargs)
        self.root.line("time", "items", source=self.source, line_width=2, color="#2b7bb9")
        self.root.varea("time", 0, "items", source=self.source, fill_alpha=0.2,
                        color="#2b7bb9")

    def update(self, snapshot: dict[str, Any] | None = None) -> None:
        snap = self.snapshot(snapshot)
        r = _rates(snap["throughput"], snap["time"])
        _set(self.source, {"time": r["time"], "items": r["items"]})


class ErrorRates(_Component):
    """Failed items and retries per second over time."""

    def __init__(self, scheduler: Any, **kwargs: Any) -> None:
        super().__init__(scheduler)
        self.source = ColumnDataSource({"time": [], "errors": [], "retries": []})
        self.root = figure(name="dagflow-errors", title="Errors and retries (per s)",
                           x_axis_type="datetime", tools="", toolbar_location=None,
                           height=220, x_range=DataRange1d(follow="end",
                                                           follow_interval=WINDOW * 1000,
                                                           range_padding=0), **kwargs)
        self.root.line("time", "errors", source=self.source, line_width=2, color="#cb181d",
                       legend_label="errors")
        self.root.line("time", "retries", source=self.source, line_width=2, color="#fd8d3c",
                       legend_label="retries")
        self.root.legend.location = "top_left"

    def update(self, snapshot: dict[str, Any] | None = None) -> None:
        snap = self.snapshot(snapshot)
        r = _rates(snap["throughput"], snap["time"])
        _set(self.source, {"time": r["time"], "errors": r["errors"], "retries": r["retries"]})


class QueueDepth(_Component):
    """dagflow tasks queued and processing, and chunks in flight, over time."""

    def __init__(self, scheduler: Any, **kwargs: Any) -> None:
        super().__init__(scheduler)
        self.source = ColumnDataSource({"time": [], "queued": [], "processing": [],
                                        "chunks": []})
        self.root = figure(name="dagflow-queue", title="Queue depth (tasks)",
                           x_axis_type="datetime", tools="", toolbar_location=None,
                           height=220, x_range=DataRange1d(follow="end",
                                                           follow_interval=WINDOW * 1000,
                                                           range_padding=0), **kwargs)
        for key, color in (("queued", "#e6550d"), ("processing", "#31a354"),
                           ("chunks", "#756bb1")):
            self.root.line("time", key, source=self.source, line_width=2, color=color,
                           legend_label="chunks in flight" if key == "chunks" else key)
        self.root.legend.location = "top_left"

    def update(self, snapshot: dict[str, Any] | None = None) -> None:
        snap = self.snapshot(snapshot)
        q = snap["queue"]
        _set(self.source, {"time": [t * 1000.0 for t in q["time"]], "queued": q["queued"],
                           "processing": q["processing"], "chunks": q["chunks_in_flight"]})


class NodeDurations(_Component):
    """p50 and p99 item duration per node (recent items)."""

    def __init__(self, scheduler: Any, **kwargs: Any) -> None:
        super().__init__(scheduler)
        self.source = ColumnDataSource({"node": [], "p50": [], "p99": [], "mean": [],
                                        "count": []})
        self.root = figure(name="dagflow-durations", title="Item duration per node (s): "
                           "p50 dot, bar to p99", y_range=FactorRange(), tools="",
                           toolbar_location=None, height=260, **kwargs)
        self.root.hbar(y="node", left="p50", right="p99", height=0.5, source=self.source,
                       color="#9ecae1")
        self.root.scatter(x="p50", y="node", size=9, source=self.source, color="#08519c")
        self.root.add_tools(HoverTool(tooltips=[("node", "@node"), ("p50", "@p50{0.000} s"),
                                                ("p99", "@p99{0.000} s"),
                                                ("mean", "@mean{0.000} s"),
                                                ("items", "@count")]))

    def update(self, snapshot: dict[str, Any] | None = None) -> None:
        snap = self.snapshot(snapshot)
        nodes = [n for n in snap["nodes"] if n["count"]][::-1]
        data = {"node": [n["node"] for n in nodes], "p50": [n["p50"] for n in nodes],
                "p99": [n["p99"] for n in nodes], "mean": [n["mean"] for n in nodes],
                "count": [n["count"] for n in nodes]}
        _factors(self.root, "y", data["node"])
        _set(self.source, data)


class WorkerResources(_Component):
    """CPU, memory and GPU use per worker, now."""

    def __init__(self, scheduler: Any, **kwargs: Any) -> None:
        super().__init__(scheduler)
        self.source = ColumnDataSource({"worker": [], "cpu": [], "memory": [],
                                        "memory_fraction": [], "gpu": [], "executing": []})
        opts = {"y_range": FactorRange(), "tools": "", "toolbar_location": None,
                "height": 220, **kwargs}
        self.cpu = figure(name="dagflow-cpu", title="CPU per worker (%)", **opts)
        self.cpu.hbar(y="worker", right="cpu", height=0.7, source=self.source,
                      color="#6baed6")
        self.memory = figure(name="dagflow-memory", title="Memory per worker (of its limit)",
                             y_range=self.cpu.y_range, tools="", toolbar_location=None,
                             height=220, **kwargs)
        self.memory.hbar(y="worker", right="memory_fraction", height=0.7, source=self.source,
                         color="#fd8d3c")
        self.memory.xaxis.formatter = NumeralTickFormatter(format="0%")
        self.gpu = figure(name="dagflow-gpu", title="GPU per worker (%)",
                          y_range=self.cpu.y_range, tools="", toolbar_location=None,
                          height=220, **kwargs)
        self.gpu.hbar(y="worker", right="gpu", height=0.7, source=self.source, color="#74c476")
        for f in (self.cpu, self.memory, self.gpu):
            f.add_tools(HoverTool(tooltips=[("worker", "@worker"), ("CPU", "@cpu{0} %"),
                                            ("memory", "@memory{0.0 b}"),
                                            ("GPU", "@gpu{0} %"),
                                            ("running", "@executing")]))
        self.root = row(self.cpu, self.memory, self.gpu, sizing_mode="stretch_width")

    def update(self, snapshot: dict[str, Any] | None = None) -> None:
        snap = self.snapshot(snapshot)
        ws = snap["workers"]
        labels = [w["worker"].split("://")[-1] for w in ws]
        data = {"worker": labels,
                "cpu": [w["cpu"] or 0.0 for w in ws],
                "memory": [w["memory"] or 0.0 for w in ws],
                "memory_fraction": [(w["memory"] or 0.0) / w["memory_limit"]
                                    if w["memory_limit"] else 0.0 for w in ws],
                "gpu": [w["gpu_utilization"] or 0.0 for w in ws],
                "executing": [w["executing"] for w in ws]}
        _factors(self.cpu, "y", labels)
        self.gpu.visible = any(w["gpu_utilization"] is not None for w in ws)
        _set(self.source, data)


class ChunksInFlight(_Component):
    """The chunks being processed, with the share of their nodes done."""

    LIMIT = 40

    def __init__(self, scheduler: Any, **kwargs: Any) -> None:
        super().__init__(scheduler)
        self.source = ColumnDataSource({"chunk": [], "progress": [], "elapsed": [],
                                        "running": [], "color": []})
        self.root = figure(name="dagflow-chunks", title="Chunks in flight (share of nodes "
                           "done)", y_range=FactorRange(), x_range=(0, 1), tools="",
                           toolbar_location=None, height=320, **kwargs)
        self.root.hbar(y="chunk", right="progress", height=0.7, source=self.source,
                       color="color")
        self.root.xaxis.formatter = NumeralTickFormatter(format="0%")
        self.root.add_tools(HoverTool(tooltips=[("chunk", "@chunk"),
                                                ("done", "@progress{0%}"),
                                                ("running", "@running"),
                                                ("elapsed", "@elapsed{0.0} s")]))

    def update(self, snapshot: dict[str, Any] | None = None) -> None:
        snap = self.snapshot(snapshot)
        chunks = snap["chunks"][-self.LIMIT:][::-1]
        data = {"chunk": [f"chunk {c['chunk']}" for c in chunks],
                "progress": [c["progress"] for c in chunks],
                "elapsed": [c["elapsed_s"] for c in chunks],
                "running": [", ".join(c["running"]) for c in chunks],
                "color": ["#cb181d" if c["erred"] else "#6a51a3" for c in chunks]}
        _factors(self.root, "y", data["chunk"])
        _set(self.source, data)


class DagflowPage(_Component):
    """Every chart of the page, fed by one snapshot per update."""

    def __init__(self, scheduler: Any, **kwargs: Any) -> None:
        super().__init__(scheduler)
        opts = {"sizing_mode": "stretch_width", **kwargs}
        self.progress = NodeProgress(scheduler, **opts)
        self.throughput = Throughput(scheduler, **opts)
        self.errors = ErrorRates(scheduler, **opts)
        self.queue = QueueDepth(scheduler, **opts)
        self.durations = NodeDurations(scheduler, **opts)
        self.resources = WorkerResources(scheduler, **opts)
        self.chunks = ChunksInFlight(scheduler, **opts)
        self.components = [self.progress, self.throughput, self.errors, self.queue,
                           self.durations, self.resources, self.chunks]
        self.header = Div(name="dagflow-header", text="<b>dagflow</b>: waiting for a run",
                          sizing_mode="stretch_width")
        self.source = self.progress.source
        self.root = column(
            self.header,
            row(self.progress.root, self.durations.root, sizing_mode="stretch_width"),
            row(self.throughput.root, self.errors.root, self.queue.root,
                sizing_mode="stretch_width"),
            self.resources.root, self.chunks.root, sizing_mode="stretch_width",
            name="dagflow-page")

    def update(self, snapshot: dict[str, Any] | None = None) -> None:
        snap = self.snapshot(snapshot)
        run = snap.get("run")
        if run:
            state = "finished" if run.get("finished") else "running"
            items = f" of {run['items']}" if run.get("items") is not None else ""
            text = (f"<b>dagflow</b> run <code>{run['run_id']}</code> "
                    f"({run.get('workflow') or 'workflow'}), {state}: "
                    f"{run['items_done']}{items} items done, {run['items_failed']} failed, "
                    f"{run['elapsed_s']:.0f} s")
            if text != self.header.text:
                self.header.text = text
        for c in self.components:
            c.update(snap)


#: Runs in the browser once the page is drawn: records, in the light DOM where a
#: headless browser's ``--dump-dom`` sees it, which figures have a view and how many
#: canvases they drew (Bokeh draws inside shadow roots, which the dump leaves out).
RENDERED_JS = """
let canvases = 0;
const drawn = [];
function count(node) {
  if (node.nodeType === 1 && node.tagName === "CANVAS") canvases += 1;
  if (node.shadowRoot) count(node.shadowRoot);
  for (const child of node.childNodes) count(child);
}
for (const fig of figures) {
  const view = Bokeh.index.find_one(fig);
  if (view != null) {
    drawn.push(fig.name);
    count(view.el);
  }
}
let marker = document.getElementById("dagflow-rendered");
if (marker == null) {
  marker = document.createElement("div");
  marker.id = "dagflow-rendered";
  marker.hidden = true;
  document.body.appendChild(marker);
}
marker.dataset.figures = drawn.join(" ");
marker.dataset.canvases = String(canvases);
"""


def _figures(model: Any) -> list[Any]:
    from bokeh.models import Plot

    return sorted((m for m in model.references() if isinstance(m, Plot)),
                  key=lambda m: m.name or "")


def dagflow_doc(scheduler: Any, extra: dict[str, Any], doc: Any) -> None:
    """The Bokeh document of ``/individual-dagflow``."""
    from bokeh.events import DocumentReady
    from bokeh.models import CustomJS
    from distributed.dashboard.components import add_periodic_callback
    from distributed.dashboard.components.scheduler import BOKEH_THEME, env

    page = DagflowPage(scheduler)
    page.update()
    add_periodic_callback(doc, page, 500)
    doc.title = "Dask: dagflow"
    doc.add_root(page.root)
    doc.js_on_event(DocumentReady, CustomJS(args={"figures": _figures(page.root)},
                                            code=RENDERED_JS))
    try:
        doc.template = env.get_template("simple.html")
        doc.template_variables.update(extra)
    except Exception:  # the plain page still works without Dask's navigation bar
        logger.debug("no dashboard template", exc_info=True)
    doc.theme = BOKEH_THEME


def register_page() -> bool:
    """Add the page to ``distributed.dashboard.scheduler.applications``.

    Schedulers started afterwards serve it and list it among their individual plots.
    Returns whether the dashboard is available (Bokeh importable).
    """
    try:
        from distributed.dashboard import scheduler as dash
    except ImportError:
        return False
    dash.applications.setdefault(PAGE, dagflow_doc)
    return True


def _bokeh_server(scheduler: Any) -> Any:
    from bokeh.server.tornado import BokehTornado

    app = getattr(scheduler, "http_application", None)
    for a in getattr(app, "applications", ()):
        if isinstance(a, BokehTornado):
            return a
    return None


def install_page(scheduler: Any) -> bool:
    """Serve the page on a scheduler whose dashboard is already running.

    Returns ``False`` when the scheduler has no dashboard. Uses Bokeh's and Dask's
    internals (pinned versions, covered by an HTTP test).
    """
    register_page()
    server = _bokeh_server(scheduler)
    if server is None:
        return False
    if PAGE in server.app_paths:
        return True
    from bokeh.application import Application
    from bokeh.application.handlers.document_lifecycle import DocumentLifecycleHandler
    from bokeh.application.handlers.function import FunctionHandler
    from bokeh.server.contexts import ApplicationContext
    from bokeh.server.tornado import create_static_handler
    from bokeh.server.urls import per_app_patterns
    from bokeh.server.views.ws import WSHandler
    from distributed.dashboard.scheduler import template_variables

    variables = template_variables(scheduler)
    prefix = server._prefix
    extra = {"prefix": (prefix.rstrip("/") + "/") if prefix else "/", **variables}
    app = Application(FunctionHandler(functools.partial(dagflow_doc, scheduler, extra)))
    app.add(DocumentLifecycleHandler())
    context = ApplicationContext(app, url=PAGE, logout_url=None)
    context._loop = server._loop
    patterns = []
    for route, handler in per_app_patterns:
        kwargs: dict[str, Any] = {"application_context": context}
        if issubclass(handler, WSHandler):
            kwargs.update(compression_level=None, mem_level=None)
        patterns.append((prefix + PAGE + route, handler, kwargs))
    ws_path = next(p[0] for p in patterns if p[0].endswith("/ws"))
    for p in patterns:
        p[2]["bokeh_websocket_path"] = ws_path
    patterns.append(create_static_handler(prefix, PAGE, app))
    server._applications[PAGE] = context
    server.add_handlers(r".*", patterns)
    if server._loop is not None:
        server._loop.add_callback(context.run_load_hook)
    plots = variables.get("plots")
    if isinstance(plots, list) and not any(p.get("url") == PAGE.strip("/") for p in plots):
        plots.append({"url": PAGE.strip("/"), "name": "Dagflow"})
        plots.sort(key=lambda d: d["name"])
    logger.info("dagflow dashboard page added at %s", PAGE)
    return True

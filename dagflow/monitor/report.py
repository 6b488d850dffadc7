"""The run report: one self-contained HTML file (Bokeh, inline resources, no server).

:func:`write_report` analyses a run directory (:func:`dagflow.monitor.analysis.analyze`)
and writes ``report.html`` into it, atomically. The page works offline: BokehJS is
inlined and no figure uses math text (which would fetch MathJax). Sections, each with
an ``id``: ``summary``, ``recommendations``, ``nodes`` (count, mean, p50, p90, p95,
p99, max, std per node), ``throughput``, ``critical-path`` (with the bottleneck and
each node's share), ``anomalies``, ``trend``, ``resources``, ``waiting``, ``errors``,
``prediction``.
"""

from __future__ import annotations

import html
import math
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dagflow.monitor.analysis import RunAnalysis, analyze

__all__ = ["REPORT_NAME", "render_html", "write_report"]

REPORT_NAME = "report.html"
#: Most points drawn in a scatter plot (the rest are sampled out).
MAX_POINTS = 5000

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1200px; padding: 1em 2em; color: #222; height: auto; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em;
margin-top: 1.6em; }
.tbl { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: .82em; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
.rec { border-left: 4px solid #2b7bb9; padding: .3em .8em; margin: .6em 0;
       background: #f7fafd; }
.rec b { display: block; } .muted { color: #777; } .bad { color: #b22; }
code { background: #f4f4f4; padding: 0 .2em; }
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "&ndash;"
    if isinstance(x, int | np.integer):
        return f"{int(x):,}"
    x = float(x)
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def _secs(x: Any) -> str:
    """Seconds with four decimals below 10 s (durations of fast ops stay readable)."""
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "&ndash;"
    x = float(x)
    return f"{x:.4f}" if abs(x) < 10 else f"{x:,.1f}"


def _bytes(n: Any) -> str:
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _table(df: pd.DataFrame, columns: Sequence[tuple[str, str]], *, left: Sequence[str] = (),
           fmt: dict[str, Any] | None = None) -> str:
    fmt = fmt or {}
    head = "".join(f"<th class='{'l' if c in left else ''}'>{_esc(label)}</th>"
                   for c, label in columns)
    body = []
    for _, row in df.iterrows():
        cells = []
        for c, _label in columns:
            v = row.get(c)
            text = fmt[c](v) if c in fmt else (_esc(v) if c in left else _num(v))
            cells.append(f"<td class='{'l' if c in left else ''}'>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<div class='tbl'><table><tr>{head}</tr>{''.join(body)}</table></div>"


def _palette(names: Sequence[str]) -> dict[str, str]:
    from bokeh.palettes import Category10_10, Category20_20

    colors = Category10_10 if len(names) <= 10 else Category20_20
    return {n: colors[i % len(colors)] for i, n in enumerate(names)}


def _figures(a: RunAnalysis) -> dict[str, Any]:
    """The report's Bokeh figures, by name (``None`` when there is nothing to draw)."""
    from bokeh.models import ColumnDataSource, FactorRange, HoverTool, Legend
    from bokeh.plotting import figure

    figs: dict[str, Any] = {}
    stats = a.nodes[a.nodes["count"] > 0]
    names = [str(n) for n in a.nodes.index]
    colors = _palette(names)
    t0 = a.run.get("started") or 0.0

    # durations per node: p50 to p99 bar, p50, mean and max markers
    if len(stats):
        nodes = [str(n) for n in stats.index][::-1]
        src = ColumnDataSource({
            "node": nodes, "p50": stats["p50"].to_numpy()[::-1],
            "p90": stats["p90"].to_numpy()[::-1], "p99": stats["p99"].to_numpy()[::-1],
            "mean": stats["mean"].to_numpy()[::-1], "max": stats["max"].to_numpy()[::-1],
            "count": stats["count"].to_numpy()[::-1]})
        f = figure(name="durations", title="Item duration per node (s): p50-p99 bar, "
                   "p50 dot, max cross", y_range=FactorRange(*nodes), height=80 + 28 *
                   len(nodes), width=1000, tools="save", toolbar_location="right")
        f.hbar(y="node", left="p50", right="p99", height=0.5, source=src, color="#9ecae1")
        f.scatter(x="p50", y="node", source=src, size=8, color="#08519c")
        f.scatter(x="max", y="node", source=src, size=8, marker="x", color="#b22222")
        f.add_tools(HoverTool(tooltips=[("node", "@node"), ("items", "@count"),
                                        ("p50", "@p50{0.000} s"), ("p90", "@p90{0.000} s"),
                                        ("p99", "@p99{0.000} s"), ("max", "@max{0.000} s")]))
        f.xaxis.axis_label = "seconds"
        figs["durations"] = f

    # throughput
    if len(a.throughput):
        src = ColumnDataSource({c: a.throughput[c].to_numpy() for c in a.throughput})
        f = figure(name="throughput", title="Items finished per second", height=260,
                   width=1000, tools="pan,wheel_zoom,box_zoom,reset,save")
        f.line("t", "items_per_s", source=src, line_width=2, color="#2b7bb9")
        f.varea(x="t", y1=0, y2="items_per_s", source=src, fill_alpha=0.2, color="#2b7bb9")
        f.xaxis.axis_label = "seconds since the first item"
        figs["throughput"] = f

    # critical path and shares
    if len(stats):
        nodes = [str(n) for n in stats.index]
        on_path = set(a.critical_path)
        src = ColumnDataSource({
            "node": nodes, "share": (stats["share"] * 100).to_numpy(),
            "seconds": stats["total_s"].to_numpy(),
            "color": ["#d95f02" if n in on_path else "#bdbdbd" for n in nodes]})
        f = figure(name="shares", title="Share of compute time per node (%), critical path "
                   "in orange", x_range=FactorRange(*nodes), height=280, width=1000,
                   tools="save")
        f.vbar(x="node", top="share", width=0.7, color="color", source=src)
        f.add_tools(HoverTool(tooltips=[("node", "@node"), ("share", "@share{0.0} %"),
                                        ("seconds", "@seconds{0.00}")]))
        figs["shares"] = f

    # trend: duration against time, per node
    r = a.rows[a.rows["status"].isin(("ok", "failed"))] if len(a.rows) else a.rows
    if len(r):
        if len(r) > MAX_POINTS:
            r = r.sample(MAX_POINTS, random_state=0)
        f = figure(name="trend", title="Item duration against time (dots: items; lines: "
                   "median per period)", height=340, width=1000,
                   tools="pan,wheel_zoom,box_zoom,reset,save", y_axis_type="log")
        items = []
        for node in names:
            sub = r[r["node_id"] == node]
            if not len(sub):
                continue
            dots = f.scatter((sub["started"] - t0).to_numpy(),
                             np.maximum(sub["duration_s"].to_numpy(), 1e-6), size=4,
                             alpha=0.35, color=colors[node])
            tr = a.trend[a.trend["node_id"] == node]
            line = f.line(tr["t"].to_numpy(), np.maximum(tr["median_s"].to_numpy(), 1e-6),
                          line_width=2, color=colors[node])
            items.append((node, [dots, line]))
        f.add_layout(Legend(items=items, click_policy="hide"), "right")
        f.xaxis.axis_label = "seconds since the first item"
        f.yaxis.axis_label = "seconds"
        figs["trend"] = f

    # resources per worker
    res = a.resources
    if len(res) and res["time"].notna().any():
        workers = sorted(str(w) for w in res["worker"].dropna().unique())
        wcolors = _palette(workers)
        for metric, title, scale in (("cpu", "CPU per worker (%)", 1.0),
                                     ("memory", "Memory per worker (MiB)", 1 / 2**20),
                                     ("gpu_utilization", "GPU per worker (%)", 1.0)):
            if metric not in res or not res[metric].notna().any():
                continue
            f = figure(name=f"res_{metric}", title=title, height=220, width=1000,
                       tools="pan,wheel_zoom,box_zoom,reset,save")
            legend = []
            for w in workers:
                sub = res[(res["worker"] == w) & res[metric].notna()].sort_values("time")
                if len(sub):
                    line = f.line((sub["time"] - t0).to_numpy(),
                                  sub[metric].to_numpy(dtype=float) * scale, line_width=2,
                                  color=wcolors[w])
                    legend.append((w[-30:], [line]))
            if len(legend) <= 20:
                f.add_layout(Legend(items=legend), "right")
            f.xaxis.axis_label = "seconds since the first item"
            figs[f"res_{metric}"] = f

    # queue depth
    q = a.queue
    if len(q):
        f = figure(name="queue", title="Tasks queued and processing", height=220, width=1000,
                   tools="pan,wheel_zoom,box_zoom,reset,save")
        x = (q["time"] - t0).to_numpy()
        f.line(x, q["queued"].to_numpy(), color="#e6550d", line_width=2, legend_label="queued")
        f.line(x, q["processing"].to_numpy(), color="#31a354", line_width=2,
               legend_label="processing")
        f.xaxis.axis_label = "seconds since the first item"
        figs["queue"] = f

    # errors
    if len(a.errors):
        e = a.errors.groupby("error_class")[["failed", "retries"]].sum()
        classes = [str(c) for c in e.index]
        src = ColumnDataSource({"cls": classes, "failed": e["failed"].to_numpy(),
                                "retries": e["retries"].to_numpy()})
        f = figure(name="errors", title="Failed items and retries by error class",
                   x_range=FactorRange(*classes), height=240, width=1000, tools="save")
        f.vbar(x="cls", top="failed", width=0.6, source=src, color="#b22222",
               legend_label="failed")
        f.scatter(x="cls", y="retries", size=10, source=src, color="#2b7bb9",
                  legend_label="retries")
        figs["errors"] = f

    # prediction
    p = a.prediction
    if len(p):
        nodes = [str(n) for n in p["node_id"]]
        x = [(n, k) for n in nodes for k in ("predicted", "actual")]
        vals = [v for pair in zip(p["predicted_s"], p["actual_s"], strict=True) for v in pair]
        src = ColumnDataSource({"x": x, "s": vals,
                                "color": ["#9ecae1", "#08519c"] * len(nodes)})
        f = figure(name="prediction", title="Predicted (history) and actual seconds per node",
                   x_range=FactorRange(*x), height=260, width=1000, tools="save")
        f.vbar(x="x", top="s", width=0.8, color="color", source=src)
        figs["prediction"] = f
    for f in figs.values():
        f.toolbar.logo = None
    return figs


def _devices_html(rows: pd.DataFrame) -> str:
    """Items per node and device (``cpu``, ``gpu``, ``cpu-fallback``), with the degraded
    ones (a GPU node that ran on the CPU); empty when the records say nothing of it."""
    if rows is None or "device" not in rows or not rows["device"].notna().any():
        return ""
    ran = rows[rows["device"].notna() & (rows["status"] == "ok")]
    if ran.empty:
        return ""
    counts = ran.groupby(["node_id", "device"]).size().unstack(fill_value=0)
    degraded = ran[ran["degraded"].fillna(False).astype(bool)].groupby("node_id").size() \
        if "degraded" in ran else pd.Series(dtype=int)
    head = "".join(f"<th>{_esc(d)}</th>" for d in counts.columns)
    body = "".join(
        f"<tr><td class='l'>{_esc(node)}</td>"
        + "".join(f"<td>{int(v)}</td>" for v in counts.loc[node])
        + f"<td>{int(degraded.get(node, 0))}</td></tr>" for node in counts.index)
    note = ("<p>Degraded: asked for the GPU, ran on the CPU (no GPU, or out of GPU "
            "memory on that item); their status is still ok.</p>")
    return (f"<table><tr><th class='l'>node</th>{head}<th>degraded</th></tr>{body}</table>"
            + note)


def _section(sid: str, title: str, body: str) -> str:
    return f"<section id='{sid}'><h2>{_esc(title)}</h2>{body}</section>"


def render_html(a: RunAnalysis) -> str:
    """The report page for an analysis."""
    from bokeh.core.templates import FILE
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    figs = _figures(a)
    run = a.run
    sections: list[tuple[str, str, str]] = []

    def fig(name: str) -> str:
        return f"\x00FIG:{name}\x00" if name in figs else ""

    summary = (
        f"<p>Workflow <b>{_esc(run.get('workflow'))}</b>, run <code>{_esc(run['run_id'])}"
        f"</code>: <b>{_num(run['items'])}</b> items ({_num(run['items_failed'])} failed) in "
        f"<b>{_num(run['wall_s'])} s</b>, {_num(run.get('throughput'))} items/s; "
        f"{_num(run['busy_s'])} s of op time over {_num(run.get('threads'))} threads; "
        f"chunk size {_num(run.get('chunk_size'))}, {_num(run.get('chunks'))} chunks.</p>")
    if a.bottleneck:
        summary += (f"<p>Bottleneck: <b>{_esc(a.bottleneck['node'])}</b> "
                    f"({_esc(a.bottleneck.get('op'))}): {_esc(a.bottleneck['why'])}.</p>")
    sections.append(("summary", "Summary", summary))

    if a.recommendations:
        recs = "".join(
            f"<div class='rec'><b>{_esc(r.title)}</b>Why: {_esc(r.reason)}.<br>"
            f"Expected effect: {_esc(r.effect)}."
            + (f"<br>Setting: <code>{_esc(r.setting)}</code>" if r.setting else "")
            + "</div>" for r in a.recommendations)
    else:
        recs = "<p class='muted'>Nothing to recommend: no figure of this run points at a " \
               "setting to change.</p>"
    sections.append(("recommendations", "Recommendations", recs))

    cols = [("node_id", "node"), ("count", "items"), ("ok", "ok"), ("failed", "failed"),
            ("skipped", "skipped"), ("mean", "mean s"), ("p50", "p50"), ("p90", "p90"),
            ("p95", "p95"), ("p99", "p99"), ("max", "max"), ("std", "std"),
            ("total_s", "total s"), ("share", "share"), ("throughput", "items/s"),
            ("retries", "retries"), ("s_per_mp", "s/MP"), ("bytes_in", "read"),
            ("bytes_out", "written")]
    fmt = {"share": lambda v: f"{100 * v:.1f}%" if v == v else "&ndash;",
           "bytes_in": _bytes, "bytes_out": _bytes,
           **dict.fromkeys(("mean", "p50", "p90", "p95", "p99", "max", "std", "total_s"),
                           _secs)}
    sections.append(("nodes", "Nodes: item durations",
                     _table(a.nodes.reset_index(), cols, left=["node_id"], fmt=fmt)
                     + fig("durations")))
    devices = _devices_html(a.rows)
    if devices:
        sections.append(("devices", "Devices: where each item ran", devices))
    sections.append(("throughput", "Throughput",
                     f"<p>{_num(run.get('throughput'))} items per second over the run.</p>"
                     + fig("throughput")))
    path = " &rarr; ".join(_esc(n) for n in a.critical_path) or "&ndash;"
    sections.append(("critical-path", "Critical path and bottleneck",
                     f"<p>Critical path (by node seconds): {path} "
                     f"({_num(a.critical_path_s)} s of op time).</p>" + fig("shares")))
    if len(a.anomalies):
        shown = min(len(a.anomalies), 30)
        an = _table(a.anomalies.head(shown),
                    [("node_id", "node"), ("item_id", "item"), ("rel", "input"),
                     ("worker", "worker"), ("duration_s", "seconds"), ("median_s", "median"),
                     ("ratio", "x median"), ("z", "robust z")],
                    left=["node_id", "rel", "worker"],
                    fmt={"duration_s": _secs, "median_s": _secs})
        body = (f"<p>{len(a.anomalies)} items with a robust z-score above 3.5 within "
                f"their node ({shown} worst listed; all in <code>dagflow report --json</code>)."
                "</p>" + an)
    else:
        body = "<p class='muted'>No item is far outside its node's distribution.</p>"
    sections.append(("anomalies", "Anomalies", body))
    findings = [f"<li><b>{_esc(n)}</b>: {_esc(f['kind'])} (first items "
                f"{_num(f['warmup'])}x the median, end {_num(f['slowdown'])}x the first "
                "half)</li>" for n, f in a.trend_findings.items() if f.get("kind")]
    sections.append(("trend", "Trend",
                     (f"<ul>{''.join(findings)}</ul>" if findings else
                      "<p class='muted'>No warm-up or slow-down.</p>") + fig("trend")))
    res_body = fig("res_cpu") + fig("res_memory") + fig("res_gpu_utilization")
    if not res_body:
        res_body = "<p class='muted'>No resource samples were recorded.</p>"
    if run.get("memory_peak_fraction") is not None:
        res_body = (f"<p>Peak worker memory: {100 * run['memory_peak_fraction']:.0f}% of "
                    "its limit.</p>") + res_body
    sections.append(("resources", "Resources per worker", res_body))
    w = a.waiting
    lines = []
    if w.get("idle_fraction") is not None:
        lines.append(f"Threads were idle {100 * w['idle_fraction']:.0f}% of the run "
                     f"({_num(w['busy_s'])} s of op time in {_num(w['wall_s'])} s on "
                     f"{_num(w['threads'])} threads).")
    for node, frac in w.get("io_bound", {}).items():
        lines.append(f"{_esc(node)} is I/O-bound: {100 * frac:.0f}% of its task time off "
                     "the CPU.")
    for node, frac in w.get("cpu_fraction", {}).items():
        if node not in w.get("io_bound", {}):
            lines.append(f"{_esc(node)}: {100 * frac:.0f}% of its task time on the CPU.")
    if w.get("idle_workers"):
        lines.append("Mostly idle workers (mean CPU under 20% of their threads): "
                     + ", ".join(_esc(x) for x in w["idle_workers"]))
    body = ("<ul>" + "".join(f"<li>{x}</li>" for x in lines) + "</ul>") if lines else \
        "<p class='muted'>No scheduler measurements for this run.</p>"
    sections.append(("waiting", "Where the run waited", body + fig("queue")))
    if len(a.errors):
        body = _table(a.errors, [("node_id", "node"), ("error_class", "class"),
                                 ("failed", "failed items"), ("retried_items", "retried items"),
                                 ("retries", "retries")], left=["node_id", "error_class"])
        body += fig("errors")
    else:
        body = "<p class='muted'>No errors and no retries.</p>"
    sections.append(("errors", "Errors and retries", body))
    if len(a.prediction):
        body = _table(a.prediction, [("node_id", "node"), ("predicted_s", "predicted s"),
                                     ("actual_s", "actual s"), ("ratio", "actual / predicted"),
                                     ("basis", "basis"), ("runs", "earlier runs")],
                      left=["node_id", "basis"]) + fig("prediction")
    else:
        body = "<p class='muted'>No history of earlier runs to predict from.</p>"
    sections.append(("prediction", "Predicted and actual", body))

    contents = (f"<h1>dagflow run report: {_esc(run.get('workflow'))}</h1>"
                f"<p class='muted'>{_esc(run['run_dir'])} &middot; generated "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}</p>"
                + "".join(_section(*s) for s in sections))
    # the page's text goes in as template variables, never as template source
    parts: list[str] = []
    source = ["{% extends 'file.html.jinja' %}{% block postamble %}<style>", _CSS,
              "</style>{% endblock %}{% block contents %}"]
    for i, piece in enumerate(re.split(r"\x00FIG:(\w+)\x00", contents)):
        if i % 2:
            source.append("{{ embed(roots." + piece + ") }}")
        else:
            source.append("{{ parts[" + str(len(parts)) + "] }}")
            parts.append(piece)
    source.append("{% endblock %}")
    template = FILE.environment.from_string("".join(source))
    if not figs:  # file_html needs a model
        from bokeh.models import Div

        figs["empty"] = Div(text="", name="empty")
    for name, f in figs.items():
        f.name = name
    return file_html(list(figs.values()), resources=INLINE,
                     title=f"dagflow report {run['run_id']}", template=template,
                     template_variables={"parts": parts})


def write_report(run_dir: str | os.PathLike[str], output: str | os.PathLike[str] | None = None,
                 *, duration_s: float | None = None,
                 analysis: RunAnalysis | None = None) -> Path:
    """Analyse ``run_dir`` and write the HTML report (default ``<run_dir>/report.html``)."""
    from dagflow.io.atomic import atomic_write

    a = analysis if analysis is not None else analyze(run_dir, duration_s=duration_s)
    target = Path(output) if output is not None else Path(run_dir, REPORT_NAME)
    return atomic_write(target, render_html(a).encode("utf-8"))

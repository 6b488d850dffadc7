"""The run report: one self-contained HTML file (Bokeh, inline resources, no server).

:func:`write_report` analyses a run directory (:func:`dagflow.monitor.analysis.analyze`)
and writes ``report.html`` into it, atomically. The page works offline: BokehJS is
inlined and no figure uses math text (which would fetch MathJax). Sections, each with
an ``id`` (:data:`SECTIONS`): ``summary``, ``recommendations`` (each with its evidence
and its measured effect), ``findings``, ``prediction`` (the plan's prediction beside
what happened), ``comparison`` (this run against the earlier runs of the workflow),
``nodes`` (count, mean, p50, p90, p95, p99, max, std per node, and the cost model the
items were judged by), ``devices``, ``throughput``, ``critical-path`` (with the
bottleneck and each node's share), ``anomalies``, ``trend``, ``resources``,
``waiting`` (where the time went off the CPU, and why), ``errors``.

The report is written at the end of every CLI run, so it stays cheap: tables and bars
are HTML; Bokeh draws only what needs zooming (:data:`FIGURES`: throughput, the trend,
CPU and memory per worker, GPU where sampled), one line per node or worker, at most
:data:`MAX_POINTS` points a line. :func:`structure` says what a report holds (its
sections, figures and Bokeh models) without writing it.
"""

from __future__ import annotations

import html
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dagflow.monitor.analysis import RunAnalysis, analyze

__all__ = ["FIGURES", "REPORT_NAME", "SECTIONS", "render_html", "structure", "write_report"]

REPORT_NAME = "report.html"
#: Most points drawn in a line (longer series are thinned).
MAX_POINTS = 2000
#: The sections of a report, in order.
SECTIONS = ("summary", "recommendations", "findings", "prediction", "comparison", "nodes",
            "devices", "throughput", "critical-path", "anomalies", "trend", "resources",
            "waiting", "errors")
#: The Bokeh figures a report may hold (each only when there is data for it).
FIGURES = ("throughput", "trend", "res_cpu", "res_memory", "res_gpu_utilization")

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
.find { border-left: 4px solid #bbb; padding: .3em .8em; margin: .6em 0; background: #fafafa; }
.find b { display: block; }
.bar { display: inline-block; height: .8em; background: #9ecae1; vertical-align: middle; }
.bar.on { background: #d95f02; } .bar.act { background: #08519c; }
td.bars { text-align: left; min-width: 16em; }
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


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most :data:`MAX_POINTS` points of a line, evenly spaced."""
    if len(x) <= MAX_POINTS:
        return x, y
    keep = np.linspace(0, len(x) - 1, MAX_POINTS).round().astype(int)
    return x[keep], y[keep]


def _figure(name: str, title: str, **options: Any) -> Any:
    from bokeh.plotting import figure

    f = figure(name=name, title=title, width=1000, tools="xpan,xwheel_zoom,reset,save",
               active_scroll=None, **options)
    f.toolbar.logo = None
    f.xaxis.axis_label = "seconds since the first item"
    return f


def _lines(f: Any, series: Mapping[str, tuple[np.ndarray, np.ndarray]],
           colors: Mapping[str, str], scale: float = 1.0) -> None:
    """One line per name, with a legend when there are few."""
    from bokeh.models import Legend

    items = []
    for name, (x, y) in series.items():
        x, y = _thin(np.asarray(x, dtype=float), np.asarray(y, dtype=float) * scale)
        items.append((name[-30:], [f.line(x, y, line_width=2, color=colors[name])]))
    if 1 < len(items) <= 20:
        f.add_layout(Legend(items=items, click_policy="hide"), "right")


def _figures(a: RunAnalysis) -> dict[str, Any]:
    """The report's Bokeh figures, by name (see :data:`FIGURES`): only those with data."""
    figs: dict[str, Any] = {}
    t0 = a.run.get("started") or 0.0

    if len(a.throughput):
        f = _figure("throughput", "Items finished per second", height=240)
        x, y = _thin(a.throughput["t"].to_numpy(dtype=float),
                     a.throughput["items_per_s"].to_numpy(dtype=float))
        f.varea(x=x, y1=0, y2=y, fill_alpha=0.25, color="#2b7bb9")
        f.line(x, y, line_width=2, color="#2b7bb9")
        figs["throughput"] = f

    if len(a.trend):
        names = [str(n) for n in a.trend["node_id"].unique()]
        colors = _palette(names)
        f = _figure("trend", "Each chunk's median time per unit of work, over the run "
                    "(1 = the node's cost model)", height=300, y_axis_type="log")
        _lines(f, {n: (a.trend.loc[a.trend["node_id"] == n, "t"].to_numpy(),
                       np.maximum(a.trend.loc[a.trend["node_id"] == n, "median"]
                                  .to_numpy(dtype=float), 1e-3)) for n in names}, colors)
        f.yaxis.axis_label = "normalised time"
        figs["trend"] = f

    res = a.resources
    if len(res) and res["time"].notna().any():
        workers = sorted(str(w) for w in res["worker"].dropna().unique())
        colors = _palette(workers)
        for metric, title, scale in (("cpu", "CPU per worker (%)", 1.0),
                                     ("memory", "Memory per worker (MiB)", 1 / 2**20),
                                     ("gpu_utilization", "GPU per worker (%)", 1.0)):
            if metric not in res or not res[metric].notna().any():
                continue
            f = _figure(f"res_{metric}", title, height=200)
            series = {}
            for w in workers:
                sub = res[(res["worker"] == w) & res[metric].notna()].sort_values("time")
                if len(sub):
                    series[w] = ((sub["time"] - t0).to_numpy(), sub[metric].to_numpy())
            _lines(f, series, colors, scale)
            figs[f"res_{metric}"] = f
    return figs


def _bars(values: Sequence[tuple[str, float, str]], top: float) -> str:
    """Horizontal HTML bars: ``(label, value, css class)``, scaled to ``top``."""
    out = []
    for label, value, css in values:
        width = 0 if not top or value != value else max(0.0, 14.0 * value / top)
        out.append(f"<span class='bar {css}' style='width:{width:.2f}em' title='{_esc(label)}'>"
                   f"</span> {_esc(label)}")
    return "<br>".join(out)


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


def _pct(x: Any, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "&ndash;"
    return f"{100 * float(x):+.0f}%" if signed else f"{100 * float(x):.0f}%"


def _recommendations_html(a: RunAnalysis) -> str:
    if not a.recommendations:
        return ("<p class='muted'>Nothing to recommend: no measurement of this run shows a "
                "condition one of the checked recommendations fixes (see the findings).</p>")
    return "".join(
        f"<div class='rec'><b>{_esc(r.title)}</b>Evidence: {_esc(r.reason)}.<br>"
        f"Expected effect: {_esc(r.effect)}."
        + (f"<br>Setting: <code>{_esc(r.setting)}</code>" if r.setting else "")
        + "</div>" for r in a.recommendations)


def _findings_html(a: RunAnalysis) -> str:
    if not a.findings:
        return "<p class='muted'>Nothing notable.</p>"
    return "".join(f"<div class='find'><b>{_esc(f.title)}</b>{_esc(f.evidence)}.</div>"
                   for f in a.findings)


def _prediction_html(a: RunAnalysis) -> str:
    p, total = a.prediction, a.prediction_total
    if not len(p):
        return ("<p class='muted'>No prediction: the run was planned without a history of "
                "earlier runs of these nodes.</p>")
    top = float(np.nanmax(np.r_[p["predicted_s"].astype(float), p["actual_s"].astype(float)]))
    rows = []
    for _, r in p.iterrows():
        model = (f"{_secs(r['fixed_s'])} s/item" if r["unit"] == "item" else
                 f"{_secs(r['fixed_s'])} s + {r['per_unit_s']:.3g} s x {_esc(r['unit'])}")
        bars = _bars([(f"predicted {_secs(r['predicted_s'])} s", r["predicted_s"], ""),
                      (f"actual {_secs(r['actual_s'])} s", r["actual_s"], "act")], top)
        rows.append(f"<tr><td class='l'>{_esc(r['node_id'])}</td><td class='bars'>{bars}</td>"
                    f"<td>{_pct(r['error'], signed=True)}</td><td class='l'>{model}</td>"
                    f"<td>{_num(r['items'])}</td><td>{_num(r['actual_items'])}</td>"
                    f"<td>{_num(r['skipped'])}</td><td>{_num(r['runs'])}</td></tr>")
    head = ("<tr><th class='l'>node</th><th class='l'>seconds</th><th>error</th>"
            "<th class='l'>cost model (per item)</th><th>items predicted</th>"
            "<th>items run</th><th>skipped (condition)</th><th>earlier runs</th></tr>")
    lines = []
    for key, label in (("compute", "op time"), ("processing", "processing"),
                       ("duration", "whole run")):
        pred, act = total.get(f"{key}_s"), total.get(f"actual_{key}_s")
        if pred is not None and act is not None:
            lines.append(f"{label}: predicted {_secs(pred)} s, actual {_secs(act)} s "
                         f"({_pct(total.get(f'{key}_error'), signed=True)})")
    summary = f"<p>{'; '.join(lines)}.</p>" if lines else ""
    return (summary + f"<div class='tbl'><table>{head}{''.join(rows)}</table></div>"
            "<p class='muted'>The prediction the run was planned with, as <code>dagflow plan"
            "</code> printed it and the run's summary keeps it: per node, its cost model "
            "(fitted on the earlier runs' items, in the unit that explains them best) "
            "times the items that pass its condition.</p>")


def _comparison_html(a: RunAnalysis) -> str:
    c = a.comparison
    if c is None or not len(c):
        return "<p class='muted'>No earlier run of this workflow to compare with.</p>"
    rows = []
    for _, r in c.iterrows():
        css = " class='bad'" if r["verdict"] == "slower" else ""
        rows.append(f"<tr><td class='l'>{_esc(r['node_id'])}</td><td class='l'{css}>"
                    f"{_esc(r['verdict'])}</td><td>{_pct(r['change'], signed=True)}</td>"
                    f"<td>{_num(r['p_value'])}</td><td>{_num(r['median'])}</td>"
                    f"<td>{_num(r['previous_median'])}</td><td>{_num(r['items'])}</td>"
                    f"<td>{_num(r['previous_items'])}</td><td>{_num(r['runs'])}</td>"
                    f"<td class='l'>{_esc(r['unit'])}</td></tr>")
    head = ("<tr><th class='l'>node</th><th class='l'>verdict</th><th>change</th>"
            "<th>p</th><th>median (this run)</th><th>median (earlier)</th><th>items</th>"
            "<th>earlier items</th><th>earlier runs</th><th class='l'>per</th></tr>")
    return (f"<div class='tbl'><table>{head}{''.join(rows)}</table></div>"
            "<p class='muted'>Each item's time over what the node's cost model (fitted on "
            "the earlier runs) expects for its size, this run against the earlier runs: "
            "Mann-Whitney U test, two-sided; significant at p &lt; 0.01 with a change of "
            "10% or more. Sizes that differ between the runs do not count as a change.</p>")


def _waiting_html(a: RunAnalysis) -> str:
    w = a.waiting
    m = w.get("machine") or {}
    lines = []
    if w.get("idle_fraction") is not None:
        lines.append(f"Threads were idle {_pct(w['idle_fraction'])} of the run "
                     f"({_num(w['busy_s'])} s of op time in {_num(w['wall_s'])} s on "
                     f"{_num(w['threads'])} threads).")
    if m.get("processes"):
        lines.append(
            f"The workers' counters ({m['processes']} processes, {_num(m['measured_s'])} s "
            f"measured): each process used {_num(m.get('cores'))} cores; its threads waited "
            f"{_num(m.get('wait_per_cpu'))} s in the run queue per CPU second; the machine's "
            f"{_num(m.get('cpus'))} CPUs were {_pct(m.get('busy'))} busy (I/O wait "
            f"{_pct(m.get('iowait'))}, steal {_pct(m.get('steal'))}), CPU pressure "
            f"{_pct(m.get('psi_cpu'))}, I/O pressure {_pct(m.get('psi_io'))}, "
            f"{_num(m.get('running'))} other runnable threads; storage read "
            f"{_bytes(m.get('read_bytes'))}, written {_bytes(m.get('write_bytes'))}.")
    body = "<ul>" + "".join(f"<li>{x}</li>" for x in lines) + "</ul>" if lines else ""
    nodes = w.get("nodes") or {}
    if nodes:
        rows = []
        for node, c in nodes.items():
            bars = _bars([(f"on CPU {_pct(c['on_cpu'])}", c["on_cpu"], "on"),
                          (f"waiting for a CPU {_pct(c['waiting_cpu'])}",
                           c["waiting_cpu"] or 0.0, ""),
                          (f"blocked {_pct(c['blocked'])}", c["blocked"] or 0.0, "act")], 1.0)
            rows.append(f"<tr><td class='l'>{_esc(node)}</td><td class='bars'>{bars}</td>"
                        f"<td class='l'>{_esc(c['class'])}</td><td class='l'>{_esc(c['why'])}"
                        "</td></tr>")
        body += ("<div class='tbl'><table><tr><th class='l'>node</th><th class='l'>its time"
                 "</th><th class='l'>class</th><th class='l'>why</th></tr>"
                 + "".join(rows) + "</table></div>")
    return body or "<p class='muted'>No measurements of where the time went.</p>"


def _attempts_html(rows: pd.DataFrame) -> str:
    """Failed items with their error and, where the records keep them, each attempt."""
    if rows is None or not len(rows) or "status" not in rows:
        return ""
    failed = rows[rows["status"] == "failed"]
    if failed.empty:
        return ""
    column = next((c for c in ATTEMPT_COLUMNS if c in failed and failed[c].notna().any()),
                  None)
    shown = failed.head(30)
    body = []
    for _, r in shown.iterrows():
        attempts = ""
        if column is not None and r.get(column) is not None:
            value = r[column]
            entries = list(value) if isinstance(value, list | tuple | np.ndarray) else [value]
            attempts = "<br>".join(_esc(_attempt_text(e)) for e in entries)
        body.append(f"<tr><td class='l'>{_esc(r.get('node_id'))}</td>"
                    f"<td class='l'>{_esc(r.get('rel') or r.get('item_id'))}</td>"
                    f"<td class='l'>{_esc(r.get('error_class'))}</td>"
                    f"<td>{_num(r.get('attempts'))}</td>"
                    f"<td class='l'>{_esc(str(r.get('error_message') or '')[:300])}</td>"
                    + (f"<td class='l'>{attempts}</td>" if column else "") + "</tr>")
    head = ("<tr><th class='l'>node</th><th class='l'>item</th><th class='l'>class</th>"
            "<th>attempts</th><th class='l'>error</th>"
            + ("<th class='l'>each attempt</th>" if column else "") + "</tr>")
    more = f"<p class='muted'>{len(failed) - len(shown)} more failed items in the records.</p>" \
        if len(failed) > len(shown) else ""
    return f"<div class='tbl'><table>{head}{''.join(body)}</table></div>{more}"


#: Record columns that may hold each attempt of a retried item (its error and delay).
ATTEMPT_COLUMNS = ("attempt_log", "attempts_log", "retry_log", "attempt_errors")


def _attempt_text(entry: Any) -> str:
    if isinstance(entry, dict):
        return ", ".join(f"{k}: {v}" for k, v in entry.items() if v is not None)
    return str(entry)


def _sections(a: RunAnalysis, figs: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    run = a.run

    def fig(name: str) -> str:
        return f"\x00FIG:{name}\x00" if name in figs else ""

    sections: list[tuple[str, str, str]] = []
    summary = (
        f"<p>Workflow <b>{_esc(run.get('workflow'))}</b>, run <code>{_esc(run['run_id'])}"
        f"</code>: <b>{_num(run['items'])}</b> items ({_num(run['items_failed'])} failed) in "
        f"<b>{_num(run['wall_s'])} s</b> of processing, {_num(run.get('throughput'))} "
        f"items/s; {_num(run['busy_s'])} s of op time over {_num(run.get('threads'))} "
        f"threads; chunk size {_num(run.get('chunk_size'))}, {_num(run.get('chunks'))} "
        "chunks.</p>")
    if a.bottleneck:
        summary += (f"<p>Bottleneck: <b>{_esc(a.bottleneck['node'])}</b> "
                    f"({_esc(a.bottleneck.get('op'))}): {_esc(a.bottleneck['why'])}.</p>")
    sections.append(("summary", "Summary", summary))
    sections.append(("recommendations", "Recommendations", _recommendations_html(a)))
    sections.append(("findings", "Findings", _findings_html(a)))
    sections.append(("prediction", "Predicted and actual", _prediction_html(a)))
    sections.append(("comparison", "Against earlier runs", _comparison_html(a)))

    cols = [("node_id", "node"), ("count", "items"), ("ok", "ok"), ("failed", "failed"),
            ("skipped", "skipped"), ("mean", "mean s"), ("p50", "p50"), ("p90", "p90"),
            ("p95", "p95"), ("p99", "p99"), ("max", "max"), ("std", "std"),
            ("total_s", "total s"), ("share", "share"), ("throughput", "items/s"),
            ("retries", "retries"), ("unit", "per"), ("fixed_s", "s/item"),
            ("per_unit_s", "s/unit"), ("bytes_in", "read"), ("bytes_out", "written")]
    fmt = {"share": lambda v: _pct(v), "bytes_in": _bytes, "bytes_out": _bytes,
           "unit": lambda v: _esc(v or "&ndash;"), "per_unit_s": lambda v: _num(v, 3),
           **dict.fromkeys(("mean", "p50", "p90", "p95", "p99", "max", "std", "total_s",
                            "fixed_s"), _secs)}
    sections.append(("nodes", "Nodes: item durations",
                     _table(a.nodes.reset_index(), cols, left=["node_id"], fmt=fmt)))
    devices = _devices_html(a.rows)
    sections.append(("devices", "Devices: where each item ran", devices or
                     "<p class='muted'>The records do not say.</p>"))
    sections.append(("throughput", "Throughput",
                     f"<p>{_num(run.get('throughput'))} items per second over the run.</p>"
                     + fig("throughput")))
    stats = a.nodes[a.nodes["count"] > 0]
    on_path = set(a.critical_path)
    shares = _bars([(f"{n}: {_pct(r['share'])} ({_secs(r['total_s'])} s)", r["share"],
                     "on" if n in on_path else "") for n, r in stats.iterrows()],
                   float(stats["share"].max()) if len(stats) else 1.0)
    path = " &rarr; ".join(_esc(n) for n in a.critical_path) or "&ndash;"
    sections.append(("critical-path", "Critical path and bottleneck",
                     f"<p>Critical path (by node seconds, in orange below): {path} "
                     f"({_num(a.critical_path_s)} s of op time).</p><p>{shares}</p>"))
    if len(a.anomalies):
        shown = min(len(a.anomalies), 30)
        an = _table(a.anomalies.head(shown),
                    [("node_id", "node"), ("item_id", "item"), ("rel", "input"),
                     ("worker", "worker"), ("duration_s", "seconds"),
                     ("expected_s", "at its peers' pace"), ("ratio", "x slower"),
                     ("z", "robust z"), ("unit", "per")],
                    left=["node_id", "rel", "worker", "unit"],
                    fmt={"duration_s": _secs, "expected_s": _secs})
        body = (f"<p>{len(a.anomalies)} items took at least 3x longer than their node's "
                "other items for the work they brought (time per unit of the node's cost "
                "model; robust z-score above 3.5). The "
                f"{shown} worst are listed; all in <code>dagflow report --json</code>.</p>"
                + an)
    else:
        body = ("<p class='muted'>No item is far slower than its node's other items for the "
                "work it brought.</p>")
    sections.append(("anomalies", "Anomalies", body))
    trend_lines = []
    for node, f in a.trend_findings.items():
        if f.get("kind"):
            lo, hi = f["ci"]
            trend_lines.append(f"<li><b>{_esc(node)}</b>: {_esc(f['kind'])}, "
                               f"{_pct(f['change'], signed=True)} over the run (95% interval "
                               f"{_pct(lo, signed=True)} to {_pct(hi, signed=True)}, "
                               f"p = {_num(f['p_value'])}, {f['chunks']} chunks)</li>")
        elif not f.get("judged"):
            trend_lines.append(f"<li class='muted'>{_esc(node)}: not judged, {_esc(f['why'])}"
                               "</li>")
    judged = [n for n, f in a.trend_findings.items() if f.get("judged")]
    note = (f"<p class='muted'>No significant trend in {', '.join(map(_esc, judged))} "
            "(Mann-Kendall on chunk medians, p &lt; 0.01, with a change of 25% or more).</p>"
            if judged and not any(f.get("kind") for f in a.trend_findings.values()) else "")
    sections.append(("trend", "Trend",
                     (f"<ul>{''.join(trend_lines)}</ul>" if trend_lines else "") + note
                     + fig("trend")))
    res_body = fig("res_cpu") + fig("res_memory") + fig("res_gpu_utilization")
    if not res_body:
        res_body = "<p class='muted'>No resource samples were recorded.</p>"
    if run.get("memory_peak_fraction") is not None:
        res_body = (f"<p>Peak worker memory: {_pct(run['memory_peak_fraction'])} of "
                    "its limit.</p>") + res_body
    sections.append(("resources", "Resources per worker", res_body))
    sections.append(("waiting", "Where the time went", _waiting_html(a)))
    if len(a.errors):
        body = _table(a.errors, [("node_id", "node"), ("error_class", "class"),
                                 ("failed", "failed items"), ("retried_items", "retried items"),
                                 ("retries", "retries")], left=["node_id", "error_class"])
        body += _attempts_html(a.rows)
    else:
        body = "<p class='muted'>No errors and no retries.</p>"
    sections.append(("errors", "Errors and retries", body))
    return sections


def structure(a: RunAnalysis) -> dict[str, Any]:
    """What the report of ``a`` holds: its ``sections`` (ids, in order), its ``figures``
    (Bokeh, by name) and the Bokeh ``models`` they make (what rendering costs)."""
    from bokeh.document import Document

    figs = _figures(a)
    doc = Document()
    for f in figs.values():
        doc.add_root(f)
    return {"sections": [sid for sid, _, _ in _sections(a, figs)], "figures": list(figs),
            "models": len(doc.models)}


def render_html(a: RunAnalysis) -> str:
    """The report page for an analysis."""
    from bokeh.core.templates import FILE
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    figs = _figures(a)
    run = a.run
    contents = (f"<h1>dagflow run report: {_esc(run.get('workflow'))}</h1>"
                f"<p class='muted'>{_esc(run['run_dir'])} &middot; generated "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}</p>"
                + "".join(_section(*s) for s in _sections(a, figs)))
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

"""Jupyter helpers: a run's live progress, input/output pairs, the report as DataFrames.

What a notebook user reaches for after a run:

=========================  ============================================================
:func:`show_pairs`         a few inputs and their outputs side by side (inline PNGs)
:func:`display_handle`     a live progress bar for ``dagflow.run(..., wait=False)``
                           (what displaying a :class:`~dagflow.runtime.RunHandle` shows)
:func:`handle_html`        the same, as a snapshot of HTML
:func:`report_frames`      the run report's data as pandas DataFrames
=========================  ============================================================

A :class:`~dagflow.workflow.Workflow` draws itself (its ``_repr_html_``) and a
:class:`~dagflow.runtime.RunResult` shows its summary table without any of this module;
lazy large images are :func:`dagflow.io.lazy.open_image`'s.

The live progress bar is HTML updated in place through IPython's display ids, so it
needs neither ipywidgets nor a browser extension, and it keeps updating while other
cells run. This module imports IPython only to display, and nothing here touches a
cluster: it reads the handle's counters and the run directory.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from dagflow.runtime.result import RunResult
    from dagflow.runtime.run import RunHandle

__all__ = ["Pairs", "display_handle", "handle_html", "report_frames", "show_pairs"]

logger = logging.getLogger(__name__)

#: dagflow's page in the Dask dashboard (:data:`dagflow.monitor.dashboard.PAGE`; not
#: imported from there, which would import Bokeh).
DASHBOARD_PAGE = "/individual-dagflow"
#: Seconds between two refreshes of a live progress bar.
REFRESH_S = 0.5


# -- links ---------------------------------------------------------------------------------


def _href(path: str | os.PathLike[str]) -> str:
    """A link to a local file: relative to the notebook's directory when it is below it
    (Jupyter serves those), else a ``file://`` URI."""
    p = Path(path).absolute()
    cwd = Path.cwd()
    return Path(os.path.relpath(p, cwd)).as_posix() if p.is_relative_to(cwd) else p.as_uri()


def dashboard_pages(link: str | None) -> dict[str, str]:
    """The Dask dashboard's status page and dagflow's page, from the dashboard link.

    Examples
    --------
    >>> dashboard_pages("http://127.0.0.1:8787/status")["dagflow"]
    'http://127.0.0.1:8787/individual-dagflow'
    >>> dashboard_pages(None)
    {}
    """
    if not link:
        return {}
    base = link[: -len("/status")] if link.endswith("/status") else link.rstrip("/")
    return {"dashboard": link, "dagflow": base + DASHBOARD_PAGE}


def _links(pairs: Sequence[tuple[str, str]]) -> str:
    return " &middot; ".join(f'<a href="{html.escape(href)}" target="_blank">'
                             f"{html.escape(text)}</a>" for text, href in pairs)


# -- live progress of a RunHandle ----------------------------------------------------------


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, s = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def handle_html(handle: RunHandle) -> str:
    """A snapshot of a background run as HTML: progress bar, counts, rate, links.

    Once the run has finished: its outcome in one line and a link to its report (the
    :class:`RunResult` shows the full summary); when it failed, its error.
    """
    done, failed, total = handle.done_items, handle.failed_items, handle.total_items
    finished = handle.done()
    error = handle.exception() if finished else None
    result = handle.result(timeout=0) if finished and error is None else None
    elapsed = result.duration_s if result is not None else time.time() - handle.started
    if error is not None:
        state, colour = f"stopped by {type(error).__name__}: {error}", "#c0392b"
    elif finished:
        state, colour = f"finished in {_duration(elapsed)}", "#27ae60" if not failed \
            else "#e67e22"
    elif total is None:
        state, colour = "starting", "#2c7be5"
    else:
        state, colour = "running", "#2c7be5"
    if total is None:
        bar = '<progress style="width:24em"></progress>'
        counts = "preparing the batch"
    else:
        value = min(done, total)
        bar = (f'<progress value="{value}" max="{max(total, 1)}" style="width:24em">'
               f"{value}/{total}</progress>")
        counts = f"{done} of {total} items"
        if failed:
            counts += f', <span style="color:#c0392b">{failed} failed</span>'
        if done and not finished:
            rate = done / max(elapsed, 1e-9)
            left = (total - done) / rate if rate > 0 else math.inf
            counts += f", {rate:.1f} items/s"
            if math.isfinite(left):
                counts += f", about {_duration(left)} left"
    title = f"dagflow run <code>{html.escape(handle.run_id)}</code>" if handle.run_id \
        else "dagflow run"
    parts = [
        f'<div class="dagflow-run"><b>{title}</b>: '
        f'<span style="color:{colour}">{html.escape(state)}</span><br>'
        f"{bar} {counts}"
    ]
    if result is not None:
        parts.append(f"<br>{result.succeeded} succeeded, {result.failed} failed "
                     f"({result.quarantined} quarantined), {result.skipped} skipped, "
                     f"{result.already_done} already done"
                     + (f"; stopped: {html.escape(result.stopped)}" if result.stopped else "")
                     + " &mdash; <code>handle.result()</code> for the summary")
    pages = dashboard_pages(handle.dashboard)
    links = []
    if pages and not finished:
        links += [("Dask dashboard", pages["dashboard"]), ("dagflow page", pages["dagflow"])]
    if handle.run_dir is not None:
        report = Path(handle.run_dir) / "report.html"
        if finished and report.exists():
            links.append(("report", _href(report)))
        links.append(("run directory", _href(handle.run_dir)))
    if links:
        parts.append(f"<br>{_links(links)}")
    parts.append("</div>")
    return "".join(parts)


def display_handle(handle: RunHandle, *, refresh: float = REFRESH_S) -> threading.Thread | None:
    """Display a live progress bar for ``handle`` in Jupyter; it updates until the run ends.

    The bar is HTML updated in place (IPython display ids), from a daemon thread, so the
    notebook stays usable.

    Returns
    -------
    threading.Thread or None
        The thread refreshing the display (``None`` when the run had already ended or
        there is no IPython).
    """
    try:
        from IPython.display import HTML, display
    except ImportError:  # called by IPython's display machinery, so rarely without it
        logger.info("%r (IPython is not installed: no live display)", handle)
        return None
    shown = handle_html(handle)
    display_obj = display(HTML(shown), display_id=True)
    if handle.done() or display_obj is None:
        return None

    def refresh_until_done() -> None:
        last = shown
        while True:
            finished = handle.done()
            now = handle_html(handle)
            if now != last:
                try:
                    display_obj.update(HTML(now))
                except Exception as exc:  # the kernel is going away
                    logger.debug("could not refresh the progress display: %s", exc)
                    return
                last = now
            if finished:
                return
            time.sleep(refresh)

    thread = threading.Thread(target=refresh_until_done, daemon=True,
                              name="dagflow-progress")
    thread.start()
    return thread


# -- input/output pairs --------------------------------------------------------------------


def _to_uint8(data: np.ndarray) -> np.ndarray:
    import numpy as np

    if data.dtype == np.uint8:
        return data
    if data.dtype.kind == "f":
        return (np.clip(np.nan_to_num(data), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    if data.dtype.kind in "ui":
        top = float(np.iinfo(data.dtype).max)
        if data.dtype.itemsize > 1 and data.size and data.max() <= 255:
            top = 255.0  # 8-bit values in a wide type
        return (np.clip(data.astype(np.float64), 0, top) * (255.0 / top) + 0.5).astype(np.uint8)
    return np.clip(data, 0, 255).astype(np.uint8)


def thumbnail_png(path: str | os.PathLike[str], size: int = 160) -> tuple[str, tuple[int, int]]:
    """An image file as a small PNG, base64-encoded, and its ``(width, height)``.

    EXIF orientation is applied (as a viewer shows the file); 16-bit and float pixels
    are scaled to 8 bits; more than four channels show the first three.
    """
    from PIL import Image as PILImage

    from dagflow.io import read_image

    image = read_image(path, reduce_to=size)
    width, height = int(image.meta.get("source_width", image.width)), int(
        image.meta.get("source_height", image.height))
    if image.meta.get("source_orientation", 1) in (5, 6, 7, 8):
        width, height = height, width
    data = _to_uint8(image.data)
    channels = data.shape[2]
    if channels > 4:
        data, channels = data[:, :, :3], 3
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    pil = PILImage.fromarray(data[:, :, 0] if channels == 1 else data, mode=mode)
    pil.thumbnail((size, size), PILImage.Resampling.LANCZOS)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii"), (width, height)


@dataclass
class Pairs:
    """Inputs and their outputs, shown side by side in a notebook (:func:`show_pairs`).

    Attributes
    ----------
    node
        The node whose outputs are shown.
    pairs
        ``(input path, output path)`` of each item shown.
    size
        Longest side of the thumbnails, in pixels.
    """

    node: str
    pairs: list[tuple[str, str]] = field(default_factory=list)
    size: int = 160

    def _cell(self, path: str) -> str:
        try:
            data, (w, h) = thumbnail_png(path, self.size)
        except Exception as exc:  # an unreadable file is shown as such, not raised
            return (f'<td style="text-align:center">cannot show {html.escape(Path(path).name)}'
                    f": {html.escape(type(exc).__name__)}: {html.escape(str(exc)[:200])}</td>")
        return (f'<td style="text-align:center;vertical-align:top">'
                f'<img src="data:image/png;base64,{data}" style="max-width:{self.size}px"><br>'
                f'<small>{html.escape(Path(path).name)} ({w}&times;{h})</small></td>')

    def _repr_html_(self) -> str:
        if not self.pairs:
            return f"<p>No outputs of node <b>{html.escape(self.node)}</b> to show.</p>"
        rows = "".join(f"<tr>{self._cell(i)}{self._cell(o)}</tr>" for i, o in self.pairs)
        return (f'<table class="dagflow-pairs"><tr><th>input</th>'
                f"<th>output of <b>{html.escape(self.node)}</b></th></tr>{rows}</table>")

    def __repr__(self) -> str:
        lines = [f"Pairs of node {self.node!r}:"]
        lines += [f"  {i} -> {o}" for i, o in self.pairs]
        return "\n".join(lines)


def _sink_nodes(records: pd.DataFrame) -> list[str]:
    from dagflow.exceptions import UnknownOpError
    from dagflow.ops.registry import get_op

    sinks = []
    for node, op in records[["node_id", "op"]].drop_duplicates().itertuples(index=False):
        try:
            if get_op(op).kind == "sink":
                sinks.append(node)
        except UnknownOpError:
            continue
    return sinks


def show_pairs(result: RunResult | RunHandle, n: int = 4, *, node: str | None = None,
               size: int = 160) -> Pairs:
    """Show ``n`` inputs of a run beside their outputs, as thumbnails.

    Parameters
    ----------
    result
        A finished run (a :class:`RunHandle` is waited for).
    n
        How many items to show (those that succeeded, in item order).
    node
        The sink node whose outputs to show; by default the one that wrote the most.
    size
        Longest side of the thumbnails in pixels.

    Returns
    -------
    Pairs
        Displays as an HTML table with inline PNGs; ``.pairs`` lists the paths.

    Raises
    ------
    ValueError
        ``node`` is not a node of the run that writes files.
    """
    if not hasattr(result, "records"):
        result = result.result()
    records = result.records()
    written = records[(records["status"] == "ok") & records["output_path"].notna()]
    sinks = _sink_nodes(written)
    if node is None:
        if not sinks:
            return Pairs(node="(no node wrote files)", size=size)
        counts = written[written["node_id"].isin(sinks)]["node_id"].value_counts()
        node = str(counts.index[0])
    elif node not in sinks:
        known = ", ".join(sorted(sinks)) or "none"
        raise ValueError(f"node {node!r} wrote no files in run {result.run_id} "
                         f"(nodes that did: {known})")
    rows = written[written["node_id"] == node].sort_values("item_id").head(max(0, n))
    return Pairs(node=node, size=size,
                 pairs=[(str(i), str(o)) for i, o in zip(rows["input_path"],
                                                         rows["output_path"], strict=True)])


# -- the report's data ---------------------------------------------------------------------


def report_frames(run: RunResult | str | os.PathLike[str]) -> dict[str, pd.DataFrame]:
    """The run report's data as pandas DataFrames, by name.

    Parameters
    ----------
    run
        A :class:`RunResult` or a run directory.

    Returns
    -------
    dict of str to pandas.DataFrame
        ``nodes`` (per node: counts, p50/p90/p95/p99, total seconds, share, the cost
        model its items were judged by...), ``items`` (one row per item: its worst
        status, with the error), ``errors``, ``anomalies``, ``throughput``, ``trend``,
        ``resources``, ``queue``, ``prediction`` (per node, predicted and actual
        seconds), ``comparison`` (per node, this run against the workflow's earlier
        runs), ``waiting`` (per node, its time on, waiting for and blocked off the CPU,
        with the class and why), ``recommendations`` (one row each: ``title``,
        ``reason``, ``effect``, ``setting``, ``node``, ``kind``) and ``findings``
        (``title``, ``evidence``, ``kind``, ``node``), as in
        :class:`dagflow.monitor.analysis.RunAnalysis`.
    """
    import pandas as pd

    from dagflow.monitor.analysis import analyze

    run_dir = Path(run.run_dir) if hasattr(run, "run_dir") else Path(run)
    a = analyze(run_dir)
    frames = {
        "nodes": a.nodes,
        "errors": a.errors,
        "anomalies": a.anomalies,
        "throughput": a.throughput,
        "trend": a.trend,
        "resources": a.resources,
        "queue": a.queue,
        "prediction": a.prediction,
        "comparison": a.comparison,
        "waiting": pd.DataFrame.from_dict(a.waiting.get("nodes") or {}, orient="index",
                                          columns=["busy_s", "cpu_s", "cpu_wait_s",
                                                   "blocked_s", "on_cpu", "waiting_cpu",
                                                   "blocked", "class", "why"]),
        "recommendations": pd.DataFrame([r.to_dict() for r in a.recommendations],
                                        columns=["title", "reason", "effect", "setting",
                                                 "node", "kind"]),
        "findings": pd.DataFrame([f.to_dict() for f in a.findings],
                                 columns=["title", "evidence", "kind", "node"]),
    }
    rows = a.rows
    if len(rows) and {"item_id", "status"} <= set(rows.columns):
        rank = {"ok": 0, "skipped": 1, "not_run": 1, "upstream_failed": 2, "failed": 3}
        ranked = rows.assign(_rank=rows["status"].map(rank).fillna(0))
        worst = ranked.sort_values("_rank", kind="stable").groupby("item_id").tail(1)
        cols = [c for c in ("item_id", "input_path", "status", "node_id", "error_class",
                            "error_message") if c in worst.columns]
        frames["items"] = worst[cols].sort_values("item_id").reset_index(drop=True)
    else:
        frames["items"] = pd.DataFrame(columns=["item_id", "input_path", "status", "node_id",
                                                "error_class", "error_message"])
    return frames

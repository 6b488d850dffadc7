"""Notebook helpers: the run handle's live display, the result's table, pairs, frames."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

import dagflow
from dagflow import Node, Param, Workflow, register_op
from dagflow.notebook import (
    DASHBOARD_PAGE,
    Pairs,
    dashboard_pages,
    display_handle,
    handle_html,
    report_frames,
    show_pairs,
    thumbnail_png,
)

THUMBS = Workflow("thumbs", [
    Node("load", "load"),
    Node("small", "resize", {"long_side": 48}, after="load"),
    Node("save", "save", {"format": "png"}, after="small"),
])

_GATE = threading.Event()


@register_op("gate", params=[Param("name", str)], replace=True)
def gate(image, name):
    """Wait for the test to open the gate on the image whose path contains ``name``."""
    if name in image.meta["path"]:
        _GATE.wait(30)
    return image


def test_dashboard_pages_and_the_monitor_page_agree():
    from dagflow.monitor.dashboard import PAGE

    assert DASHBOARD_PAGE == PAGE
    pages = dashboard_pages("http://127.0.0.1:8787/status")
    assert pages == {"dashboard": "http://127.0.0.1:8787/status",
                     "dagflow": "http://127.0.0.1:8787/individual-dagflow"}
    assert dashboard_pages("https://host/proxy/8787/")["dagflow"] == \
        "https://host/proxy/8787/individual-dagflow"
    assert dashboard_pages(None) == {}


def test_handle_shows_progress_while_running_and_the_summary_after(photos, tmp_path, client):
    _GATE.clear()
    wf = Workflow("gated", [Node("load", "load"),
                            Node("gate", "gate", {"name": "img011"}, after="load"),
                            Node("save", "save", {"format": "png"}, after="gate")])
    handle = dagflow.run(wf, photos, tmp_path / "out", client=client, wait=False,
                         chunk_size=1)
    try:
        deadline = time.monotonic() + 30
        while handle.done_items < 11 and time.monotonic() < deadline:
            time.sleep(0.02)
        running = handle._repr_html_()
        assert handle.total_items == 12 and handle.run_id and handle.run_dir.is_dir()
        assert not handle.done() and handle.exception() is None
        assert "running" in running and 'max="12"' in running and "11 of 12 items" in running
        assert "Dask dashboard" in running or handle.dashboard is None
        assert "run directory" in running and "<table" not in running
    finally:
        _GATE.set()
    result = handle.result(timeout=60)
    finished = handle_html(handle)
    assert "finished in" in finished and 'value="12"' in finished
    assert "12 succeeded, 0 failed (0 quarantined)" in finished and "handle.result()" in finished
    assert "Dask dashboard" not in finished  # the cluster may be gone
    if (result.run_dir / "report.html").exists():
        assert ">report</a>" in finished
    assert handle.exception() is None


def test_handle_html_before_the_batch_is_known_and_after_an_error(tmp_path):
    from dagflow.runtime.run import RunHandle

    release = threading.Event()

    def target(handle):
        release.wait(10)
        raise RuntimeError("the scheduler went away")

    handle = RunHandle(target)
    assert "starting" in handle_html(handle) and "preparing the batch" in handle_html(handle)
    release.set()
    with pytest.raises(RuntimeError):
        handle.result(timeout=10)
    text = handle_html(handle)
    assert "stopped by RuntimeError: the scheduler went away" in text
    assert isinstance(handle.exception(), RuntimeError)


def test_display_handle_updates_in_place_until_the_run_ends(monkeypatch):
    pytest.importorskip("IPython")
    import IPython.display

    from dagflow.runtime.run import RunHandle

    shown: list[str] = []
    updates: list[str] = []

    class FakeDisplay:
        def update(self, obj):
            updates.append(obj.data)

    def fake_display(obj, display_id=False):
        assert display_id is True
        shown.append(obj.data)
        return FakeDisplay()

    monkeypatch.setattr(IPython.display, "display", fake_display)
    step = threading.Event()
    result_ready = threading.Event()

    def target(handle):
        handle.total_items = 3
        step.wait(10)
        handle._on_progress(2, 1)
        result_ready.wait(10)
        raise KeyboardInterrupt  # an interrupted run

    handle = RunHandle(target)
    thread = display_handle(handle, refresh=0.01)
    assert thread is not None and len(shown) == 1
    step.set()
    deadline = time.monotonic() + 10
    while not any("2 of 3 items" in u for u in updates) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert any("1 failed" in u for u in updates)
    result_ready.set()
    thread.join(10)
    assert not thread.is_alive()
    assert "stopped by KeyboardInterrupt" in updates[-1]
    # a finished run displays once, with no thread
    assert display_handle(handle) is None and len(shown) == 2


def test_ipython_display_of_a_handle_uses_the_live_display(monkeypatch):
    from dagflow.runtime.run import RunHandle

    calls = []
    monkeypatch.setattr("dagflow.notebook.display_handle", lambda h: calls.append(h))
    handle = RunHandle(lambda h: None)
    handle._thread.join()
    handle._ipython_display_()
    assert calls == [handle]


def test_result_html_has_percentiles_failures_and_links(photos_with_bad, tmp_path, client):
    result = dagflow.run(THUMBS, photos_with_bad, tmp_path / "out", client=client)
    text = result._repr_html_()
    assert "<th>p50</th><th>p99</th>" in text
    percentiles = result._node_percentiles()
    assert set(percentiles) == {"load", "small", "save"}
    assert all(0 <= p50 <= p99 for p50, p99 in percentiles.values())
    assert " ms</td>" in text or " s</td>" in text
    assert "Failed items:" in text and "broken.jpg" in text and "empty.png" in text
    assert "bad_input, empty_file]" in text  # the reason follows the class
    assert "(2 quarantined)" in text
    run_dir = Path(result.run_dir)
    assert f'href="{run_dir.absolute().as_uri()}"' in text
    if (run_dir / "report.html").exists():
        assert ">report</a>" in text
    assert ">quarantine</a>" in text


def test_result_html_without_records_still_renders(tmp_path):
    from dagflow.runtime.result import RunResult

    r = RunResult(run_id="r1", run_dir=tmp_path / "nowhere", output_dir=tmp_path, workflow="w",
                  nodes={"load": {"ok": 1}}, errors=["aggregate 'x' failed"],
                  stopped="breaker open")
    text = r._repr_html_()
    assert "<td>load</td><td>1</td>" in text and "STOPPED: breaker open" in text
    assert r._node_percentiles() == {}


def test_show_pairs_shows_inputs_beside_outputs(photos_with_bad, tmp_path, client):
    result = dagflow.run(THUMBS, photos_with_bad, tmp_path / "out", client=client)
    pairs = show_pairs(result, n=3, size=64)
    assert isinstance(pairs, Pairs) and pairs.node == "save" and len(pairs.pairs) == 3
    for src, out in pairs.pairs:
        assert Path(src).parent.parts[-1] in ("in", "sub") and Path(out).suffix == ".png"
        assert Path(out).exists()
    text = pairs._repr_html_()
    assert text.count("data:image/png;base64,") == 6 and "output of <b>save</b>" in text
    assert "save" in repr(pairs) and " -> " in repr(pairs)
    assert len(show_pairs(result, n=50).pairs) == 12  # only items that succeeded
    with pytest.raises(ValueError, match="nodes that did: save"):
        show_pairs(result, node="small")
    # a RunHandle is waited for
    handle = dagflow.run(THUMBS, photos_with_bad, tmp_path / "out2", client=client, wait=False)
    assert len(show_pairs(handle, n=2).pairs) == 2


def test_show_pairs_with_nothing_written_and_an_unreadable_output(tmp_path, photos, client):
    wf = Workflow("no_sink", [Node("load", "load"), Node("stats", "stats", after="load")])
    result = dagflow.run(wf, photos, tmp_path / "out", client=client)
    empty = show_pairs(result)
    assert empty.pairs == [] and "No outputs" in empty._repr_html_()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    cell = Pairs("save", [(str(broken), str(broken))])._repr_html_()
    assert "cannot show broken.png" in cell


@pytest.mark.parametrize("dtype,channels", [(np.uint16, 3), (np.uint8, 1), (np.uint8, 4),
                                            (np.uint16, 1)])
def test_thumbnails_of_wide_and_odd_images(tmp_path, dtype, channels):
    from dagflow.testing import photo_like

    pixels = photo_like(90, 120, channels=channels, dtype=dtype)
    path = tmp_path / f"x{channels}.png"
    if dtype == np.uint16 and channels == 3:
        import tifffile

        path = tmp_path / "x.tif"
        tifffile.imwrite(path, pixels)
    else:
        PILImage.fromarray(pixels[:, :, 0] if channels == 1 else pixels).save(path)
    data, (w, h) = thumbnail_png(path, size=40)
    assert (w, h) == (120, 90)
    import base64
    import io

    thumb = PILImage.open(io.BytesIO(base64.b64decode(data)))
    assert max(thumb.size) == 40
    if dtype == np.uint16 and channels == 3:  # scaled to 8 bits, not clipped
        arr = np.asarray(thumb)
        assert arr.max() > 128


def test_report_frames(photos_with_bad, tmp_path, client):
    result = dagflow.run(THUMBS, photos_with_bad, tmp_path / "out", client=client)
    frames = report_frames(result)
    assert {"nodes", "items", "errors", "anomalies", "throughput", "recommendations",
            "findings", "resources", "queue", "trend", "prediction", "comparison",
            "waiting"} <= set(frames)
    nodes = frames["nodes"]
    assert {"p50", "p99"} <= set(nodes.columns) and {"load", "small", "save"} <= set(nodes.index)
    items = frames["items"]
    assert len(items) == 14 and (items["status"] == "failed").sum() == 2
    assert list(frames["recommendations"].columns) == ["title", "reason", "effect", "setting",
                                                       "node", "kind"]
    assert list(frames["findings"].columns) == ["title", "evidence", "kind", "node"]
    waiting = frames["waiting"]  # where each node's time went, from the workers' counters
    assert {"load", "small", "save"} <= set(waiting.index)
    assert (waiting["on_cpu"].between(0, 1)).all() and waiting["class"].notna().all()
    # a run directory works as well
    assert len(report_frames(result.run_dir)["items"]) == 14


def test_workflow_picture_cuts_long_text_without_breaking_the_markup():
    import xml.etree.ElementTree as ET

    from dagflow.workflow.render import workflow_svg

    when = "width >= 2048 and channels >= 3 and format == 'jpeg'"
    wf = Workflow("w", [Node("load", "load"),
                        Node("big_ones", "unsharp", {"sigma": 2.0}, after="load", when=when)])
    svg = workflow_svg(wf)
    root = ET.fromstring(svg)  # well-formed: no entity cut in half
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "big_ones: unsharp" in texts and any((t or "").endswith("…") for t in texts)
    titles = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")]
    assert any(when in t for t in titles)  # the whole condition in the tooltip
    assert when in str(wf) and svg in wf._repr_html_()

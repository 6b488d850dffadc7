"""The dashboard page in a real headless Chromium, against a live cluster.

Chromium comes from Debian's packages (``scripts/ensure-chromium.sh``, run by
``make test``). Two looks at the page:

* ``--dump-dom`` with a virtual time budget: the page Dask serves (navigation bar,
  Bokeh's root element, the session script). That dump cannot show the plots: a Bokeh
  server page pulls its document over a websocket, which virtual time does not wait
  for, and draws inside shadow roots, which the dump leaves out.
* the DevTools protocol (the same Chromium, driven over its debugging websocket): the
  page is loaded, the document arrives, and the test waits until every figure is
  drawn, then reads the DOM including shadow roots and asserts the plots are there.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tempfile
import time

import pytest

pytest.importorskip("bokeh")

from dagflow.monitor.dashboard import PAGE

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
FIGURES = {"dagflow-progress", "dagflow-throughput", "dagflow-errors", "dagflow-queue",
           "dagflow-durations", "dagflow-cpu", "dagflow-memory", "dagflow-gpu",
           "dagflow-chunks"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: "
                       "apt-get install chromium; `make test` runs scripts/ensure-chromium.sh)"),
]


@pytest.fixture
def dashboard(photos, tmp_path):
    """A live cluster after a dagflow run; yields the page's URL."""
    from distributed import Client, LocalCluster

    import dagflow

    workflow = ("name: browser\nnodes:\n  - {id: load, op: load}\n"
                "  - {id: small, op: resize, after: [load], params: {long_side: 32}}\n")
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as c:
        dagflow.run(workflow, photos, tmp_path / "out", client=c)
        port = c.scheduler_info()["services"]["dashboard"]
        yield f"http://127.0.0.1:{port}{PAGE}"


def test_dump_dom_serves_the_page(dashboard, tmp_path):
    out = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=5000", "--dump-dom", dashboard],
        capture_output=True, text=True, timeout=120)
    dom = out.stdout
    # the template's title, or the document's once BokehJS has embedded it (timing)
    assert re.search(r"<title>(Dask Diagnostic UI|Dask: dagflow)</title>", dom), \
        out.stderr[-2000:]
    assert re.search(r'<div id="[^"]+" data-root-id="[^"]+"', dom)
    assert 'href="individual-dagflow"' in dom  # listed in the dashboard's page menu
    assert "Bokeh.embed.embed_items" in dom


async def _cdp_render(url: str, profile: str, timeout: float = 60.0) -> dict:
    """Load ``url`` in headless Chromium over the DevTools protocol; wait for the plots."""
    from tornado.httpclient import AsyncHTTPClient
    from tornado.websocket import websocket_connect

    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
        "about:blank", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        port = None
        while port is None:
            line = await asyncio.wait_for(proc.stderr.readline(), deadline - time.monotonic())
            assert line, "chromium exited before opening its debugging port"
            m = re.search(rb"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            port = int(m.group(1)) if m else None
        http = AsyncHTTPClient()
        targets = json.loads((await http.fetch(f"http://127.0.0.1:{port}/json/list")).body)
        page = next(t for t in targets if t["type"] == "page")
        ws = await websocket_connect(page["webSocketDebuggerUrl"], max_message_size=1 << 28)
        ids = iter(range(1, 1 << 30))

        async def call(method: str, **params) -> dict:
            i = next(ids)
            await ws.write_message(json.dumps({"id": i, "method": method, "params": params}))
            while True:
                msg = json.loads(await asyncio.wait_for(ws.read_message(),
                                                        deadline - time.monotonic()))
                if msg.get("id") == i:
                    assert "error" not in msg, msg
                    return msg["result"]

        await call("Page.navigate", url=url)
        marker = None
        while time.monotonic() < deadline:
            r = await call("Runtime.evaluate", returnByValue=True, expression=(
                "(() => { const m = document.getElementById('dagflow-rendered');"
                " return m ? {figures: m.dataset.figures, canvases: +m.dataset.canvases}"
                " : null })()"))
            marker = r["result"].get("value")
            if marker and marker["canvases"]:
                break
            await asyncio.sleep(0.2)
        doc = await call("DOM.getDocument", depth=-1, pierce=True)
        ws.close()
        return {"marker": marker, "dom": doc["root"]}
    finally:
        proc.terminate()
        await proc.wait()


def _walk(node: dict):
    yield node
    for key in ("children", "shadowRoots"):
        for child in node.get(key, ()):
            yield from _walk(child)
    if "contentDocument" in node:
        yield from _walk(node["contentDocument"])


def test_plots_are_drawn_in_a_headless_browser(dashboard):
    with tempfile.TemporaryDirectory() as profile:
        seen = asyncio.run(_cdp_render(dashboard, profile))
    marker = seen["marker"]
    assert marker is not None, "the page never finished drawing"
    assert set(marker["figures"].split()) == FIGURES
    nodes = list(_walk(seen["dom"]))
    canvases = [n for n in nodes if n.get("nodeName") == "CANVAS"]
    assert len(canvases) >= len(FIGURES) - 1  # the GPU figure is hidden without a GPU
    classes = " ".join(" ".join(n.get("attributes", [])) for n in nodes)
    assert "bk-Figure" in classes or "bk-Plot" in classes

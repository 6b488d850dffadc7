"""Shared fixtures: small generated images and an in-process cluster.

Test clusters listen on free ports only: ``dashboard_address="127.0.0.1:0"``. Not
``dashboard_address=None``: a scheduler serves its HTTP routes without the dashboard, on
port 8787 (of every interface, for an in-process cluster). A test whose clusters ask for
port 8787 fails, on every machine, not only where something else holds the port.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage


def write_photos(directory: Path, n: int, *, seed: int = 0, size=(96, 64)) -> list[Path]:
    """``n`` small textured JPEGs (and a PNG every fifth), some in a sub-directory."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = size[0] + 8 * (i % 4), size[1] + 4 * (i % 3)
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 3) % 256], axis=-1)
        noise = rng.integers(0, 40, size=(h, w, 3))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        sub = directory / ("sub" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / (f"img{i:03d}.png" if i % 5 == 4 else f"img{i:03d}.jpg")
        PILImage.fromarray(pixels).save(path, quality=92)
        paths.append(path)
    return paths


@pytest.fixture
def make_photos():
    """The photo writer, for tests that need more or larger images."""
    return write_photos


@pytest.fixture
def photos(tmp_path) -> Path:
    """A directory of 12 small valid images."""
    directory = tmp_path / "in"
    write_photos(directory, 12)
    return directory


@pytest.fixture
def photos_with_bad(photos) -> Path:
    """The same images plus two corrupt files."""
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (photos / "empty.png").write_bytes(b"")
    return photos


@pytest.fixture(scope="module")
def client():
    """An in-process cluster (threads), shared by a test module."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as c:
        yield c


#: Dask's default dashboard port, which no test may ask for.
DASHBOARD_PORT = 8787
#: Every server of this process that asked for DASHBOARD_PORT since the last test ended.
_FIXED_PORT_REQUESTS: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def _watch_dashboard_ports():
    """Note every Dask server of this process that asks for port 8787 for its HTTP routes.

    The original ``start_http_server`` still runs: this only records the request. Dask
    falls back to a random port when 8787 is taken, with a warning, so the mistake shows
    only on machines where something else holds 8787: recording the request shows it
    everywhere. (A warnings filter cannot: clusters start in their own event-loop threads,
    whose ``catch_warnings`` blocks replace the filters pytest sets for a test.)
    """
    from distributed.node import ServerNode
    from distributed.utils import clean_dashboard_address

    start_http_server = ServerNode.start_http_server

    def recording(self, routes, dashboard_address, default_port=0, **kwargs):
        asked = clean_dashboard_address(dashboard_address or default_port)
        if any(a["port"] == DASHBOARD_PORT for a in asked):
            _FIXED_PORT_REQUESTS.append(
                f"{type(self).__name__} with dashboard_address={dashboard_address!r}")
        return start_http_server(self, routes, dashboard_address, default_port, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ServerNode, "start_http_server", recording)
        yield


@pytest.fixture(autouse=True)
def _no_fixed_dashboard_port():
    """Fail a test whose clusters (or fixtures' clusters) asked for port 8787."""
    yield
    asked, _FIXED_PORT_REQUESTS[:] = list(_FIXED_PORT_REQUESTS), []
    assert not asked, (
        f"asked for the fixed port {DASHBOARD_PORT}: {asked}; start test clusters with "
        "dashboard_address='127.0.0.1:0' (None still binds 8787 for the HTTP routes)")


@pytest.fixture(autouse=True)
def _no_html_report(request):
    """Skip the end-of-run HTML report (about a second a run) except where a test asks.

    The report has its own tests (tests/test_report.py), which switch it back on.
    """
    import dask

    with dask.config.set({"dagflow.monitor.report": False}):
        yield
    # a client closed out of order can leave Dask's default scheduler pointing at it:
    # don't let that leak into the next test's plain dask computations
    from distributed import default_client

    try:
        default_client()
    except ValueError:
        if dask.config.get("scheduler", None) == "dask.distributed":
            dask.config.config.pop("scheduler", None)


@pytest.fixture(autouse=True)
def _dask_defaults_kept():
    """Keep every registered Dask default in the configuration after a test.

    ``distributed.utils_test.gen_cluster`` resets the configuration to a copy taken when
    ``distributed.utils_test`` was first imported, which drops the defaults of packages
    imported since (dask-jobqueue's ``jobqueue`` section: a later Slurm test then failed
    with ``KeyError: 'jobqueue'``). Defaults fill only what is missing.
    """
    import dask

    yield
    for defaults in dask.config.defaults:
        dask.config.update(dask.config.config, defaults, priority="old")

"""Shared fixtures: small generated images and an in-process cluster."""

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
                      dashboard_address=None) as cluster, \
            Client(cluster) as c:
        yield c


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

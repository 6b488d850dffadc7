"""Runs from a store to a store: ``dagflow run`` and ``dagflow.run`` with ``s3://``
inputs and output, against moto's S3 server on 127.0.0.1 (``_s3.py``).

Workers list, read and write the objects themselves; the run's state (records, events,
quarantine, summary) is uploaded under ``<output>/_dagflow/``; a second run resumes from
it, checking each output's size and ETag; the output's lock is an object made by a
conditional write.
"""

from __future__ import annotations

import io

import dask
import numpy as np
import pytest
from _s3 import KEY, SECRET, s3_fixture, s3_server_fixture  # noqa: F401 - fixtures
from PIL import Image as PILImage

import dagflow
from dagflow import Node, Workflow

THUMBS = Workflow("thumbs", [
    Node("load", "load"),
    Node("small", "resize", {"long_side": 32}, after="load"),
    Node("save", "save", {"format": "png"}, after="small"),
])


def jpeg(seed: int, size=(48, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def store(s3):
    """The bucket, with six photos under ``in/`` (two in ``in/sub/``) and a broken one,
    and dagflow's storage options pointing at it."""
    for i in range(6):
        s3.put(f"in/{'sub/' if i % 3 == 0 else ''}img{i}.jpg", jpeg(i))
    s3.put("in/broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    with dask.config.set({"dagflow.storage.options": {"s3": s3.options}}):
        yield s3


def test_run_from_a_store_to_a_store_and_resume(store, client):
    out = store.url("out")
    result = dagflow.run(THUMBS, store.url("in/"), out, client=client, progress=False)
    assert (result.items, result.succeeded, result.failed) == (7, 6, 1)
    print(store.keys())
    again = dagflow.run(THUMBS, store.url("in/"), out, client=client, progress=False)
    assert again.executed == 0, again

"""Workers freeze their startup objects out of full garbage collections; the client never."""

from __future__ import annotations

import gc

import dask
import pytest
from distributed import Client, LocalCluster

import dagflow
from dagflow import Node, Workflow
from dagflow.runtime.capacity import prepare_cluster


def _gc_state() -> tuple[int, int]:
    return gc.get_freeze_count(), len(gc.get_objects())


def _oldest_generation() -> int:
    """How many objects a full collection walks besides the younger generations'."""
    gc.collect()
    return len(gc.get_objects(generation=2))


LOAD_SAVE = Workflow("t", [Node("load", "load"), Node("save", "save", after="load")])


@pytest.mark.slow
def test_worker_processes_freeze_once_and_only_when_configured(tmp_path, photos):
    wf = LOAD_SAVE
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0",
                      host="127.0.0.1") as cluster, Client(cluster) as c:
        before = next(iter(c.run(_oldest_generation).values()))
        with dask.config.set({"dagflow.runtime.worker-gc-freeze": False}):
            prepare_cluster(c, wf)
        assert [n for n, _ in c.run(_gc_state).values()] == [0]

        dagflow.run(wf, photos, tmp_path / "out", client=c, progress=False)
        [(frozen, tracked)] = c.run(_gc_state).values()
        # dagflow's, Dask's and numpy's objects: out of every later collection
        assert frozen > 50_000 and tracked < frozen / 5
        assert next(iter(c.run(_oldest_generation).values())) < before / 5

        dagflow.run(wf, photos, tmp_path / "out2", client=c, progress=False)
        [(again, _)] = c.run(_gc_state).values()
        # once per process: a later run freezes nothing more (frozen objects still die)
        assert again <= frozen


def test_an_in_process_cluster_never_freezes_the_clients_objects(tmp_path, photos, client):
    assert gc.get_freeze_count() == 0
    result = dagflow.run(LOAD_SAVE, photos, tmp_path / "out", client=client, progress=False)
    assert result.succeeded > 0
    assert gc.get_freeze_count() == 0

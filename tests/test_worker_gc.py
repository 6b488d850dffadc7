"""Workers freeze their startup objects out of full garbage collections; the client never."""

from __future__ import annotations

import gc

import dask
from distributed import Client, LocalCluster

import dagflow
from dagflow import Node, Workflow
from dagflow.runtime.capacity import prepare_cluster


def _gc_state() -> tuple[int, int]:
    return gc.get_freeze_count(), len(gc.get_objects())


def _full_collection_ms() -> float:
    import time

    t0 = time.perf_counter()
    gc.collect()
    return (time.perf_counter() - t0) * 1e3


def test_worker_processes_freeze_once_and_only_when_configured(tmp_path, photos):
    wf = Workflow("t", [Node("load", "load"), Node("save", "save", after="load")])
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as c:
        before = next(iter(c.run(_full_collection_ms).values()))
        with dask.config.set({"dagflow.runtime.worker-gc-freeze": False}):
            prepare_cluster(c, wf)
        assert [n for n, _ in c.run(_gc_state).values()] == [0]

        dagflow.run(wf, photos, tmp_path / "out", client=c, progress=False)
        [(frozen, tracked)] = c.run(_gc_state).values()
        # dagflow's, Dask's and numpy's objects: out of every later collection
        assert frozen > 50_000 and tracked < frozen / 5
        assert next(iter(c.run(_full_collection_ms).values())) < before

        dagflow.run(wf, photos, tmp_path / "out2", client=c, progress=False)
        [(again, _)] = c.run(_gc_state).values()
        # once per process: a later run freezes nothing more (frozen objects still die)
        assert again <= frozen


def test_an_in_process_cluster_never_freezes_the_clients_objects(tmp_path, photos, client):
    assert gc.get_freeze_count() == 0
    wf = Workflow("t", [Node("load", "load"), Node("save", "save", after="load")])
    result = dagflow.run(wf, photos, tmp_path / "out", client=client, progress=False)
    assert result.succeeded > 0
    assert gc.get_freeze_count() == 0

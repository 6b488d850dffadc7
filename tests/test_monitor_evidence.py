"""Evidence before advice, from real measurements: a sleep-bound, a CPU-bound and a
GIL-bound op run on a real (in-process) cluster; each recommendation fires only where
the workers' counters show the condition it fixes, on a run large enough to judge."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import dagflow
from dagflow import Image, Node, Param, Workflow, register_op
from dagflow.monitor.advice import advise
from dagflow.monitor.analysis import analyze
from dagflow.monitor.evidence import Machine, classify, intervals, summarize
from dagflow.monitor.sampling import COUNTERS, host_counters

_DATA = np.random.default_rng(0).random(100_000)


@register_op("ev_nap", params=[Param("seconds", float, 0.04)], replace=True)
def nap(image: Image, seconds: float = 0.04) -> Image:
    """Waits, as a read from remote storage does: off the CPU, the CPU free."""
    time.sleep(seconds)
    return image


@register_op("ev_crunch", params=[Param("sorts", int, 40)], replace=True)
def crunch(image: Image, sorts: int = 40) -> Image:
    """CPU work that releases the GIL (numpy sorts)."""
    for _ in range(sorts):
        np.sort(_DATA)
    return image


@register_op("ev_python", params=[Param("loops", int, 400_000)], replace=True)
def python_loop(image: Image, loops: int = 400_000) -> Image:
    """CPU work that holds the GIL (a Python loop)."""
    total = 0
    for i in range(loops):
        total += i * i
    return image


#: Every kind measured as a gain: what fires then depends on the evidence alone.
GAINS = {k: {"change": -0.3, "baseline_s": 10.0, "applied_s": 7.0, "baseline": "a",
             "applied": "b", "workload": "w", "how": "h"}
         for k in ("larger-chunks", "smaller-chunks", "more-threads", "gpu")}


def run_op(client, tmp_path, op: str, n: int = 64, **options):
    from conftest import write_photos

    photos = tmp_path / f"in-{n}"
    if not photos.exists():
        write_photos(photos, n, size=(40, 30))
    wf = Workflow(f"ev-{op}", [Node("load", "load"), Node("work", op, after="load"),
                               Node("save", "save", {"format": "png"}, after="work")])
    result = dagflow.run(wf, photos, tmp_path / f"out-{op}-{n}-{time.time_ns()}",
                         client=client, progress=False, **options)
    assert result.succeeded == n
    return analyze(result.run_dir)


def judged(a):
    """``a``'s facts as a run long enough to judge: the evidence is the run's own, the
    guard on its length (which depends on the machine's speed) is lifted."""
    import dataclasses

    return dataclasses.replace(a.facts, processing_s=max(a.facts.processing_s, 60.0))


def kinds(a, effects=GAINS) -> set[str]:
    """The recommendation kinds that fire on ``a``'s run (every kind measured as a gain)."""
    recs, _ = advise(judged(a), effects=effects)
    return {r.kind for r in recs}


def test_counters_are_read_and_written_with_each_chunk(client, tmp_path):
    c = host_counters()
    assert set(c) == set(COUNTERS) and c["counters_pid"] == os.getpid()
    if sys.platform == "linux":
        assert c["proc_wait_s"] is not None and c["host_total_s"] > 0
    a = run_op(client, tmp_path, "ev_nap", n=12, chunk_size=3)
    iv = intervals(a.rows)
    # four chunks, four intervals: the first from the reading the run took as it started
    assert len(iv) == 4
    assert (iv["dt"] > 0).all() and (iv["d_proc_cpu_s"] >= 0).all()
    assert iv["dt"].sum() <= a.run["wall_s"] + 1.0
    one = run_op(client, tmp_path, "ev_nap", n=6, chunk_size=6)  # a single chunk
    assert len(intervals(one.rows)) == 1 and one.waiting["machine"]["processes"] == 1


def test_a_sleep_bound_node_is_blocked_and_gets_more_threads(client, tmp_path):
    a = run_op(client, tmp_path, "ev_nap", chunk_size=4)
    c = a.waiting["nodes"]["work"]
    assert c["class"] == "wait", c
    assert c["on_cpu"] < 0.2 and c["blocked"] > 0.5
    recs, _ = advise(judged(a), effects=GAINS)
    more = [r for r in recs if r.kind == "more-threads"]
    assert len(more) == 1 and more[0].node == "work"
    assert "--threads-per-worker 4" in more[0].setting  # 2 threads per worker, doubled
    assert "blocked" in more[0].reason and more[0].evidence["blocked"] > 0.5
    assert "runs took 30% less time" in more[0].effect  # the measured effect, promised
    # without a measured gain, no promise: a finding that says why
    recs, finds = advise(judged(a), effects={})
    assert not recs
    assert any(f.kind == "unproven-more-threads" and "not been measured" in f.evidence
               for f in finds)


def test_a_cpu_bound_node_gets_no_more_threads(client, tmp_path):
    a = run_op(client, tmp_path, "ev_crunch", chunk_size=4)
    c = a.waiting["nodes"]["work"]
    assert c["class"] in ("cpu", "cpu-contention"), c
    assert "more-threads" not in kinds(a)


def test_a_gil_bound_node_gets_no_more_threads(client, tmp_path):
    a = run_op(client, tmp_path, "ev_python", chunk_size=4)
    c = a.waiting["nodes"]["work"]
    assert c["class"] in ("lock", "cpu", "cpu-contention"), c
    assert "more-threads" not in kinds(a)


@pytest.mark.slow
def test_cpu_contention_is_not_taken_for_io(client, tmp_path):
    """CPU hogs beside the run: its CPU-bound node waits for a CPU; the report says the
    machine was busy and recommends no threads (today: "more I/O threads")."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range((os.cpu_count() or 2) + 1)]
    try:
        a = run_op(client, tmp_path, "ev_crunch", n=32, chunk_size=4)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    c = a.waiting["nodes"]["work"]
    assert c["class"] == "cpu-contention", c
    assert c["waiting_cpu"] > 0.3
    assert "more-threads" not in kinds(a)
    _, finds = advise(judged(a), effects=GAINS)
    assert any(f.kind == "cpu-contention" for f in finds)


def test_a_two_item_run_is_too_small_to_judge(client, tmp_path):
    """Today: "chunk size 1, up to 47 % shorter" for two items."""
    a = run_op(client, tmp_path, "ev_nap", n=2, chunk_size=2)
    assert {r.kind for r in advise(a.facts, effects=GAINS)[0]} == set()
    assert kinds(a) == set()  # however long it took: two items are too few


def test_chunking_advice_needs_its_evidence():
    """Larger chunks only where threads idled between short tasks; smaller only where
    too few chunks left threads idle while CPUs were free."""
    import pandas as pd

    from dagflow.monitor.advice import RunFacts

    stats = pd.DataFrame({"count": [400.0], "share": [1.0], "total_s": [4.0]},
                         index=pd.Index(["work"], name="node_id"))

    def facts(**kw):
        base = dict(stats=stats, nodes={"work": {"op": "x"}}, items=400, chunk_size=1,
                    chunks=400, threads=2, workers=1, processing_s=4.0, busy_s=4.0,
                    idle_fraction=0.5, machine=Machine(), classes={})
        return RunFacts(**{**base, **kw})

    assert kinds_of(facts()) == {"larger-chunks"}
    assert kinds_of(facts(idle_fraction=0.05)) == set()  # threads were busy: no overhead
    free = Machine(wait_per_cpu=0.05, psi_cpu=0.05, processes=1)
    taken = Machine(wait_per_cpu=2.0, psi_cpu=0.9, processes=1)
    few = {"chunk_size": 200, "chunks": 2, "busy_s": 4.0}
    assert kinds_of(facts(**few, machine=free)) == {"smaller-chunks"}
    # the CPUs taken by other work: idle threads had no CPU to run on (measured: slower)
    assert kinds_of(facts(**few, machine=taken)) == set()
    assert kinds_of(facts(**few)) == set()  # not measured: not judged
    assert kinds_of(facts(**{**few, "processing_s": 1.0}, machine=free)) == set()  # too short
    assert kinds_of(facts(items=2, chunk_size=2, chunks=1)) == set()  # too few items


def test_more_threads_needs_a_node_blocked_well_beyond_its_cpu_wait():
    import pandas as pd

    from dagflow.monitor.advice import RunFacts

    stats = pd.DataFrame({"count": [400.0], "share": [1.0], "total_s": [8.0]},
                         index=pd.Index(["save"], name="node_id"))

    def facts(on_cpu, waiting, blocked, cls="wait"):
        c = {"on_cpu": on_cpu, "waiting_cpu": waiting, "blocked": blocked, "class": cls,
             "why": "w"}
        return RunFacts(stats=stats, nodes={"save": {"op": "save"}}, items=400,
                        chunk_size=16, chunks=25, threads=2, workers=1, processing_s=8.0,
                        busy_s=8.0, idle_fraction=0.0, machine=Machine(wait_per_cpu=0.1),
                        classes={"save": c})

    assert kinds_of(facts(0.05, 0.02, 0.93)) == {"more-threads"}
    # the busy demo's PNG save: half blocked, a third waiting for a CPU
    assert kinds_of(facts(0.18, 0.32, 0.50)) == set()
    assert kinds_of(facts(0.05, 0.02, 0.93, cls="io")) == set()


def kinds_of(facts) -> set[str]:
    return {r.kind for r in advise(facts, effects=GAINS)[0]}


def test_classify_splits_time_by_the_counters():
    import pandas as pd

    ran = pd.DataFrame({"node_id": ["a"] * 4 + ["b"] * 4,
                        "duration_s": [1.0] * 8, "cpu_s": [0.9] * 4 + [0.2] * 4})
    idle = Machine(wait_per_cpu=0.02, psi_io=0.01, demand=0.3, cores=0.3)
    busy = Machine(wait_per_cpu=4.0, psi_io=0.01, demand=3.0, cores=0.5)
    assert classify(ran, idle, threads_per_worker=2)["b"]["class"] == "wait"
    assert classify(ran, busy, threads_per_worker=2)["b"]["class"] == "cpu-contention"
    assert classify(ran, idle, threads_per_worker=2)["a"]["class"] == "cpu"
    storage = Machine(wait_per_cpu=0.02, psi_io=0.6, demand=0.3)
    assert classify(ran, storage, threads_per_worker=2)["b"]["class"] == "io"
    gil = Machine(wait_per_cpu=0.05, psi_io=0.0, demand=1.0, cores=0.95)
    assert classify(ran, gil, threads_per_worker=4)["b"]["class"] == "lock"
    unmeasured = classify(ran, Machine(), threads_per_worker=2)["b"]
    assert unmeasured["class"] == "off-cpu" and unmeasured["blocked"] is None
    assert summarize(intervals(ran)).processes == 0  # no counters: nothing claimed


"""Recovery: retries, timeouts, poison items, killed workers and drivers, breakers, resume."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask
import pyarrow.dataset as ds
import pytest
from _processes import DaskProcesses
from distributed import Client, LocalCluster

import dagflow
from dagflow import Node, Param, TransientError, Workflow, register_op
from dagflow.recovery.breaker import BreakerSettings, CircuitBreaker
from dagflow.recovery.checkpoint import load_done, read_records, record_parts
from dagflow.recovery.policy import RetryPolicy, call_with_policy, classify
from dagflow.recovery.status import run_status

_ATTEMPTS: dict[str, int] = {}
_LOCK = threading.Lock()


@register_op("flaky", params=[Param("failures", int, 2)], replace=True)
def flaky(image, failures):
    """Fail transiently ``failures`` times per image, then pass it through."""
    key = image.meta["path"]
    with _LOCK:
        _ATTEMPTS[key] = _ATTEMPTS.get(key, 0) + 1
        n = _ATTEMPTS[key]
    if n <= failures:
        raise TransientError(f"storage hiccup {n}")
    return image


@register_op("picky", params=[Param("name", str)], replace=True)
def picky(image, name):
    """Raise a permanent error for the image whose path contains ``name``."""
    if name in image.meta["path"]:
        raise dagflow.BadInputError("not_allowed", f"{name} is refused")
    return image


@register_op("hang", params=[Param("name", str), Param("seconds", float, 30.0)], replace=True)
def hang(image, name, seconds):
    """Sleep a long time on the image whose path contains ``name``."""
    if name in image.meta["path"]:
        time.sleep(seconds)
    return image


@register_op("poison", params=[Param("name", str), Param("how", str, "exit")], replace=True)
def poison(image, name, how):
    """Kill the worker process on the image whose path contains ``name``: ``exit``
    (``os._exit``), ``segfault`` (a read at address 0), or ``memory`` (3 GB, far above
    a worker's limit: its nanny kills it)."""
    if name in image.meta["path"]:
        if how == "exit":
            os._exit(1)
        elif how == "segfault":
            import ctypes

            ctypes.string_at(0)
        elif how == "memory":
            import numpy as np

            hog = np.ones(3 * 2**30 // 8)
            return image.replace(image.data + int(hog[0] - 1))
    return image


@register_op("torn_save", kind="sink", params=[Param("victim", str)], replace=True)
def torn_save(image, dest, victim):
    """Save as PNG; the worker dies half-way through writing the image named ``victim``
    (its temporary file written, not yet renamed into place)."""
    from dagflow.io import write_image
    from dagflow.io.atomic import atomic_path

    if victim in image.meta["path"]:
        with atomic_path(dest + ".png") as tmp:
            tmp.write_bytes(b"\x89PNG half of it")
            os._exit(1)
    return write_image(image, dest + ".png")


@register_op("bad_sink", kind="sink", params=[Param("victim", str)], replace=True)
def bad_sink(image, dest, victim):
    """A sink that returns no path for the image named ``victim``: the task's own code,
    outside the per-item guard, fails on it."""
    return 42 if victim in image.meta["path"] else dest


_REACHED: list[str] = []


@register_op("unreachable", params=[], replace=True)
def unreachable(image):
    """A storage service that is down: every call fails with a transient error."""
    with _LOCK:
        _REACHED.append(image.meta["path"])
    raise TransientError("service unavailable")


@register_op("disk", kind="sink", params=[Param("marker", str)], replace=True)
def disk(image, dest, marker):
    """A sink whose storage is 'full' while ``marker`` exists."""
    if os.path.exists(marker):
        raise OSError(errno.ENOSPC, "No space left on device", dest)
    from dagflow.io import write_image

    return write_image(image, dest + ".png")


def records(result) -> list[dict]:
    return ds.dataset(result.run_dir / "records").to_table().to_pylist()


def test_retry_policy_backoff_and_classification():
    policy = RetryPolicy(attempts=4, delay=0.1, multiplier=2, max_delay=0.3, jitter=0.0)
    assert [policy.backoff(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.3, 0.3]
    jittered = RetryPolicy(delay=1.0, jitter=0.25)
    assert all(0.75 <= jittered.backoff(1) <= 1.25 for _ in range(50))
    assert classify(OSError(errno.EIO, "io")) == "transient"
    assert classify(ConnectionResetError()) == "transient"
    assert classify(dagflow.OversizeError("big")) == "bad_input"
    assert classify(ValueError("x"), RetryPolicy(transient=(ValueError,))) == "transient"
    assert classify(KeyError("x"), RetryPolicy(transient=("KeyError",))) == "transient"
    slept: list[float] = []
    calls = iter([TransientError("a"), TransientError("b"), "done"])

    def fn():
        value = next(calls)
        if isinstance(value, Exception):
            raise value
        return value

    outcome = call_with_policy(fn, RetryPolicy(attempts=3, delay=0.5, jitter=0), sleep=slept.append)
    assert outcome.value == "done" and outcome.attempts == 3 and slept == [0.5, 1.0]
    outcome = call_with_policy(lambda: 1 / 0, RetryPolicy(attempts=5), sleep=slept.append)
    assert outcome.error_class == "bug" and outcome.attempts == 1


def test_watched_loop_abandons_only_the_item_past_its_deadline():
    from dagflow.recovery.watch import run_watched

    release = threading.Event()
    committed, timed_out, threads = [], [], set()

    def step(item, restart):
        threads.add(threading.get_ident())
        if item == "hang":
            release.wait(10)
            return "late"  # discarded: its thread was abandoned
        if item == "slow-retries":
            for _ in range(3):  # three attempts of 0.2 s each, under a 0.3 s deadline
                restart()
                time.sleep(0.2)
        return item.upper()

    start = time.monotonic()
    run_watched(["a", "hang", "slow-retries", "b"], step,
                lambda item, out: committed.append((item, out)),
                lambda item, elapsed: timed_out.append((item, round(elapsed, 1))), 0.3)
    assert time.monotonic() - start < 3
    release.set()
    time.sleep(0.1)
    assert committed == [("a", "A"), ("slow-retries", "SLOW-RETRIES"), ("b", "B")]
    assert [t[0] for t in timed_out] == ["hang"] and timed_out[0][1] >= 0.3
    assert len(threads) == 2  # one thread for the whole loop, a fresh one after the hang
    assert threading.get_ident() not in threads

    def broken(item, restart):
        raise RuntimeError("a bug in the loop itself")

    with pytest.raises(RuntimeError, match="a bug in the loop"):
        run_watched([1], broken, lambda *a: None, lambda *a: None, 1.0)
    calls = []
    run_watched([1, 2], lambda x, r: x, lambda x, out: calls.append(threading.get_ident()),
                lambda *a: None, None)
    assert calls == [threading.get_ident()] * 2  # no deadline: the calling thread


def test_flaky_succeeds_after_retries_permanent_tried_once_hang_times_out(photos, tmp_path,
                                                                          client):
    _ATTEMPTS.clear()
    wf = Workflow("r", [
        Node("load", "load"),
        Node("flaky", "flaky", {"failures": 2}, after="load",
             retry={"attempts": 3, "delay": 0.01, "jitter": 0}),
        Node("picky", "picky", {"name": "img004"}, after="flaky"),
        Node("hang", "hang", {"name": "img007"}, after="picky", timeout=0.5),
    ])
    start = time.monotonic()
    result = dagflow.run(wf, photos, tmp_path / "out", client=client, progress=False)
    assert time.monotonic() - start < 25  # the hung item did not hang the run
    rows = {(Path(r["input_path"]).stem, r["node_id"]): r for r in records(result)}
    assert all(rows[(f"img{i:03d}", "flaky")]["attempts"] == 3 for i in range(12))
    assert all(rows[(f"img{i:03d}", "flaky")]["status"] == "ok" for i in range(12))
    refused = rows[("img004", "picky")]
    assert (refused["status"], refused["error_class"], refused["attempts"]) == (
        "failed", "bad_input", 1)
    assert refused["reason"] == "not_allowed"
    hung = rows[("img007", "hang")]
    assert (hung["status"], hung["error_class"]) == ("failed", "timeout")
    assert result.succeeded == 10 and result.failed == 2


def test_transient_errors_that_persist_fail_after_the_attempts_each_one_kept(photos, tmp_path,
                                                                            client):
    """Every attempt of a retried item is in its record (error, and the delay before the
    next attempt), and ``dagflow status`` shows them for the failed items."""
    from click.testing import CliRunner

    from dagflow.cli import main

    _ATTEMPTS.clear()
    wf = Workflow("r", [Node("load", "load"),
                        Node("flaky", "flaky", {"failures": 99}, after="load",
                             retry={"attempts": 3, "delay": 0.01, "jitter": 0})])
    with dask.config.set({"dagflow.breaker.failures": 100}):  # every item reaches it
        result = dagflow.run(wf, photos, tmp_path / "out", client=client, progress=False)
    flaky_rows = [r for r in records(result) if r["node_id"] == "flaky"]
    assert len(flaky_rows) == 12
    for r in flaky_rows:
        assert (r["status"], r["error_class"], r["attempts"]) == ("failed", "transient", 3)
        n = r["attempt_log"][0]["error"].rsplit(" ", 1)[1]  # the image's own count
        assert [a["error"] for a in r["attempt_log"]] == [
            f"TransientError: storage hiccup {int(n) + k}" for k in range(3)]
        assert [a["delay_s"] for a in r["attempt_log"]] == [0.01, 0.02, None]
    assert all(f["attempt_log"] for f in result.failures)
    shown = CliRunner().invoke(main, ["status", str(result.run_dir)])
    assert shown.exit_code == 0, shown.output
    assert "attempt 1: TransientError: storage hiccup" in shown.output
    assert "then 0.01 s" in shown.output and "attempt 3:" in shown.output


def test_breaker_opens_on_a_failing_output_target_and_a_later_run_finishes(tmp_path, client,
                                                                          make_photos):
    make_photos(tmp_path / "in", 40)
    marker = tmp_path / "disk-full"
    marker.touch()
    wf = Workflow("b", [Node("load", "load"),
                        Node("store", "disk", {"marker": str(marker)}, after="load")])
    with dask.config.set({"dagflow.breaker.failures": 3, "dagflow.breaker.cooldown": 0.2,
                          "dagflow.runtime.window": 2}):
        stopped = dagflow.run(wf, tmp_path / "in", tmp_path / "out", client=client,
                              progress=False, chunk_size=4)
    assert stopped.exit_code == dagflow.runtime.EXIT_BREAKER
    assert "store" in stopped.stopped and "No space left" in stopped.stopped
    assert stopped.not_run > 0 and stopped.failed < 40
    events = (stopped.run_dir / "events.jsonl").read_text()
    assert '"breaker"' in events and '"run_stopped"' in events
    marker.unlink()
    finished = dagflow.run(wf, tmp_path / "in", tmp_path / "out", client=client, progress=False,
                           chunk_size=4)
    assert finished.exit_code == 0
    assert finished.executed + finished.already_done == 40
    assert finished.succeeded == finished.executed
    assert len(list((tmp_path / "out").rglob("*.png"))) == 40


def test_once_a_breaker_opens_no_further_item_reaches_its_node(tmp_path, client, make_photos):
    """Every chunk is already submitted when the breaker opens: the workers are told, and
    the chunks in flight send no further item to the node; ``dagflow status`` agrees with
    the summary (not run, exit code 3)."""
    from click.testing import CliRunner

    from dagflow.cli import main

    make_photos(tmp_path / "in", 60, size=(24, 16))
    _REACHED.clear()
    wf = Workflow("b", [Node("load", "load"),
                        Node("remote", "unreachable", after="load", retry={"attempts": 1})])
    with dask.config.set({"dagflow.breaker.failures": 5, "dagflow.breaker.cooldown": 0.2}):
        result = dagflow.run(wf, tmp_path / "in", tmp_path / "out", client=client,
                             progress=False, chunk_size=2)
    assert result.exit_code == dagflow.runtime.EXIT_BREAKER
    # five failures opened it, the probe failed; the chunks in flight when the workers
    # were told may each have sent one more item
    threads = sum(client.nthreads().values())
    assert len(_REACHED) <= 5 + 1 + threads, len(_REACHED)
    assert result.failed == len(set(_REACHED)) and result.not_run == 60 - result.failed
    not_run = [r for r in records(result) if r["node_id"] == "remote"
               and r["status"] == "not_run"]
    assert not_run and all(r["error_class"] == "breaker" for r in not_run)
    status = run_status(result.run_dir)
    assert (status.state, status.exit_code) == ("finished", 3)
    assert (status.done, status.failed, status.not_run, status.pending) == (
        0, result.failed, result.not_run, 0)
    assert "circuit breaker open for node 'remote'" in status.stopped
    shown = CliRunner().invoke(main, ["status", str(result.run_dir)])
    assert "finished, exit code 3" in shown.output and f"not run {result.not_run}" in shown.output


def test_a_task_failing_outside_the_item_guard_blames_its_node_for_one_item(photos, tmp_path,
                                                                           client):
    """A failure outside the per-item guard fails the chunk's task as a whole: the chunk
    is split down to the item, recorded failed at the node whose task raised."""
    wf = Workflow("g", [Node("load", "load"), Node("small", "resize", {"long_side": 16},
                                                   after="load"),
                        Node("out", "bad_sink", {"victim": "img007"}, after="small")])
    result = dagflow.run(wf, photos, tmp_path / "out", client=client, progress=False,
                         chunk_size=4)
    failed = [r for r in records(result) if r["status"] == "failed"]
    assert [(Path(r["input_path"]).stem, r["node_id"], r["error_class"]) for r in failed] == [
        ("img007", "out", "bug")]
    assert "NodeTaskError" in failed[0]["error_type"] and "TypeError" in failed[0][
        "error_message"]
    assert result.succeeded == 11


def test_breaker_state_machine():
    now = [0.0]
    b = CircuitBreaker("n", BreakerSettings(failures=2, window=5, cooldown=3), clock=lambda: now[0])
    b.failure("x")
    now[0] = 10  # outside the window: the first failure no longer counts
    b.failure("y")
    assert b.state == "closed"
    b.failure("z")
    assert b.state == "open" and not b.ready_to_probe()
    now[0] = 13.5
    assert b.ready_to_probe() and b.state == "half-open"
    b.success()
    assert b.state == "closed"
    b.failure("a"), b.failure("b")
    now[0] = 20
    b.ready_to_probe()
    b.failure("c")
    assert b.state == "open" and list(b.last_errors)[-1] == "c"


def test_planted_symlink_in_the_output_is_never_written_through(photos, tmp_path, client):
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (out / "img001.png").symlink_to(target)
    (out / "sub").symlink_to(tmp_path)  # a planted directory link
    wf = Workflow("s", [Node("load", "load"),
                        Node("save", "save", {"format": "png"}, after="load")])
    result = dagflow.run(wf, photos, out, client=client, progress=False)
    assert target.read_text() == "keep me"
    assert not (tmp_path / "img000.png").exists()  # nothing landed through the linked dir
    unsafe = [r for r in records(result) if r["status"] == "failed"]
    assert unsafe and all(r["error_class"] == "bad_input" for r in unsafe)


POISON = Workflow("p", [Node("load", "load"),
                        Node("poison", "poison", {"name": "img005"}, after="load"),
                        Node("save", "save", {"format": "png"}, after="poison")])


def _poisoned(how: str) -> Workflow:
    nodes = [n if n.id != "poison" else Node("poison", "poison",
                                              {"name": "img005", "how": how}, after="load")
             for n in POISON.nodes]
    return Workflow("p", nodes)


def _check_poison_run(result, out: Path, items: int, error_class: str) -> None:
    """The poison item alone is recorded, failed at the node that killed its worker;
    every other item succeeded; two worker deaths at most (in its chunk, then alone)."""
    rows = records(result)
    failed = [r for r in rows if r["status"] in ("failed", "upstream_failed")]
    assert {(Path(r["input_path"]).stem, r["node_id"], r["status"]) for r in failed} == {
        ("img005", "poison", "failed"), ("img005", "save", "upstream_failed")}
    (blamed,) = [r for r in failed if r["status"] == "failed"]
    assert blamed["error_class"] == error_class, blamed
    assert len(blamed["attempt_log"]) >= 2  # died in its chunk, and again alone
    assert blamed["attempt_log"][-1]["error"].endswith("this item, alone")
    assert result.succeeded == items - 1 and result.failed == 1
    assert len(list(out.rglob("*.png"))) == items - 1
    events = (result.run_dir / "events.jsonl").read_text().splitlines()
    # every death is in the log: the item's chunk, then the item alone (the memory kill
    # may be seen once if the nanny's restart races the second); never a death per item
    deaths = sum('"event": "worker_died"' in e for e in events)
    assert 1 <= deaths <= 3, deaths


@pytest.mark.slow
@pytest.mark.parametrize("how,error_class", [("exit", "lost_worker"),
                                             ("segfault", "lost_worker"),
                                             ("memory", "resource")])
def test_poison_item_ends_the_run_recorded_alone_on_the_embedded_cluster(
        tmp_path, make_photos, how, error_class):
    """A worker killed by one item (an exit, a segfault, its nanny for memory): the run
    ends, that item alone is recorded at the node that was running, the rest succeed."""
    make_photos(tmp_path / "in", 24)
    spawn = {*dask.config.get("distributed.nanny.pre-spawn-environ"),
             *dask.config.get("dagflow.cluster.worker-env")}
    environ = {k: os.environ.get(k) for k in spawn}
    result = dagflow.run(_poisoned(how), tmp_path / "in", tmp_path / "out", progress=False,
                         local_options={"n_workers": 2, "threads_per_worker": 1,
                                        "memory_limit": "1GiB"})
    _check_poison_run(result, tmp_path / "out", 24, error_class)
    # the nannies that restarted the workers left no spawn environment in this process
    assert {k: os.environ.get(k) for k in spawn} == environ


@pytest.mark.slow
def test_a_worker_killed_mid_write_leaves_no_temporary_file_once_the_run_ends(tmp_path,
                                                                            make_photos):
    make_photos(tmp_path / "in", 8)
    out = tmp_path / "out"
    wf = Workflow("t", [Node("load", "load"),
                        Node("save", "torn_save", {"victim": "img005"}, after="load")])
    result = dagflow.run(wf, tmp_path / "in", out, progress=False,
                         local_options={"n_workers": 2, "threads_per_worker": 1})
    (blamed,) = [r for r in records(result) if r["status"] == "failed"]
    assert (Path(blamed["input_path"]).stem, blamed["node_id"], blamed["error_class"]) == (
        "img005", "save", "lost_worker")
    from dagflow.io.atomic import find_temporaries

    assert find_temporaries(out) == []
    assert not [i for i in run_status(result.run_dir).inconsistencies if "temporary" in i]
    assert len(list(out.rglob("*.png"))) == 7


@pytest.mark.slow
def test_poison_item_ends_the_run_on_dask_scheduler_and_nanny_workers(tmp_path, make_photos):
    """The same on a real ``dask scheduler`` with ``dask worker`` processes, each under its
    nanny: the run hears of each death from the scheduler's events."""
    make_photos(tmp_path / "in", 24)
    here = str(Path(__file__).parent)
    with DaskProcesses(tmp_path / "cluster", env={"PYTHONPATH": here}) as procs:
        address = procs.start_scheduler()
        for name in ("w1", "w2"):
            procs.start_worker(name, "--nanny")
        procs.wait_for_workers(2)
        result = dagflow.run(POISON, tmp_path / "in", tmp_path / "out", cluster=address,
                             progress=False)
    _check_poison_run(result, tmp_path / "out", 24, "lost_worker")


def _threads_and_pid() -> tuple[int, int]:
    return threading.active_count(), os.getpid()


@pytest.mark.slow
def test_a_worker_holding_threads_of_timed_out_items_is_replaced(tmp_path, make_photos):
    """Timed-out items leave their threads running: once the chunk is recorded, their
    worker is replaced by its nanny, so a batch with hung items does not pile them up."""
    make_photos(tmp_path / "in", 8)
    wf = Workflow("t", [Node("load", "load"),
                        Node("hang", "hang", {"name": "img001", "seconds": 120}, after="load",
                             timeout=0.5)])
    with LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as c:
        (before,) = c.run(_threads_and_pid).values()
        start = time.monotonic()
        result = dagflow.run(wf, tmp_path / "in", tmp_path / "out", client=c, progress=False,
                             chunk_size=4)
        assert time.monotonic() - start < 60  # the hung item did not hold the run
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            after = list(c.run(_threads_and_pid).values())
            if after and after[0][1] != before[1]:
                break
            time.sleep(0.2)
        threads, pid = after[0]
    rows = {(Path(r["input_path"]).stem, r["node_id"]): r for r in records(result)}
    assert rows[("img001", "hang")]["error_class"] == "timeout"
    assert result.failed == 1 and result.succeeded == 7
    assert pid != before[1] and threads <= before[0]  # a fresh worker, no thread left
    events = (result.run_dir / "events.jsonl").read_text()
    assert '"worker_replaced"' in events


@pytest.mark.slow
def test_worker_killed_mid_batch_every_image_processed_once(tmp_path, make_photos):
    make_photos(tmp_path / "in", 40, size=(320, 240))
    wf = Workflow("k", [Node("load", "load"), Node("m", "median", {"size": 5}, after="load"),
                        Node("save", "save", {"format": "png"}, after="m")])
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as c:
        handle = dagflow.run(wf, tmp_path / "in", tmp_path / "out", client=c, wait=False,
                             chunk_size=3)
        while handle.done_items < 6:
            time.sleep(0.05)
        victim = sorted(c.nthreads())[0]
        with pytest.raises(OSError):  # the worker dies before it can answer
            c.run(os._exit, 1, workers=[victim])
        result = handle.result(timeout=120)
    assert result.failed == 0 and result.succeeded == 40
    rows = records(result)
    per_key = {}
    for r in rows:
        per_key.setdefault((r["input_path"], r["node_id"]), []).append(r["status"])
    assert len(per_key) == 40 * 3 and all(v == ["ok"] for v in per_key.values())
    assert len(list((tmp_path / "out").rglob("*.png"))) == 40


DRIVER_WORKFLOW = """
name: kill
nodes:
  - {id: load, op: load}
  - {id: m, op: median, after: [load], params: {size: 5}}
  - {id: save, op: save, after: [m], params: {format: png}}
"""


def _final_state(out: Path) -> dict:
    cp = load_done(out / "_dagflow")
    files = {p.relative_to(out).as_posix(): p.read_bytes()
             for p in out.rglob("*.png") if "_dagflow" not in p.parts}
    return {"done": len(cp.done), "failed": dict(cp.failed), "files": files}


@pytest.mark.slow
def test_driver_killed_after_a_records_part_resumes_to_the_same_result(tmp_path, make_photos,
                                                                       client):
    """The driver and its embedded cluster die at once (a node crash) right after taking
    in a given records part (``DAGFLOW_FAULT=after-part:...``), twice at two places;
    the same command then finishes, with every output once, as a run never
    killed would have."""
    make_photos(tmp_path / "in", 24, size=(320, 240))
    wf_path = tmp_path / "wf.yaml"
    wf_path.write_text(DRIVER_WORKFLOW)
    dagflow_bin = str(Path(sys.executable).parent / "dagflow")
    env = {**os.environ, "DASK_DAGFLOW__CLUSTER__N_WORKERS": "2",
           "DASK_DAGFLOW__CLUSTER__THREADS_PER_WORKER": "1"}

    def cli(out: Path, crash_after: str | None = None) -> subprocess.CompletedProcess:
        args = [dagflow_bin, "run", str(wf_path), "-i", str(tmp_path / "in"), "-o", str(out),
                "--json", "--chunk-size", "2"]
        fault = {"DAGFLOW_FAULT": f"after-part:{crash_after}"} if crash_after else {}
        return subprocess.run(args, capture_output=True, text=True, env={**env, **fault},
                              timeout=300, start_new_session=True)

    reference = tmp_path / "reference"
    assert dagflow.run(wf_path, tmp_path / "in", reference, client=client, progress=False,
                       chunk_size=2).exit_code == 0
    expected = _final_state(reference)

    out = tmp_path / "out"
    for part in ("part-0000003.parquet", "part-0000000.parquet"):
        crashed = cli(out, crash_after=part)
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        latest = sorted((out / "_dagflow" / "runs").iterdir())[-1]
        assert run_status(latest).state == "running or died"
        assert (latest / "records" / part).exists()
    import json

    second = cli(out)
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert summary["executed"] + summary["already_done"] == 24
    assert summary["already_done"] >= 4 + 1  # at least each crashed run's parts
    assert _final_state(out) == expected
    third = dagflow.run(wf_path, tmp_path / "in", out, client=client, progress=False)
    assert (third.executed, third.already_done) == (0, 24)


@pytest.mark.slow
@pytest.mark.parametrize("signum,code,said", [
    (signal.SIGINT, 130, "interrupted"),
    (signal.SIGTERM, 143, "terminated (SIGTERM)"),
])
def test_ctrl_c_or_sigterm_stops_the_run_quietly_and_the_same_command_resumes(
        tmp_path, make_photos, signum, code, said):
    """Ctrl-C signals the terminal's whole process group, the embedded cluster's worker
    processes too, and batch systems end a job with SIGTERM to all its processes: the
    driver stops the run, records it, and says how to go on, even when the signal lands
    where Python drops exceptions; the workers print no traceback; what finished is
    kept."""
    import json

    make_photos(tmp_path / "in", 12, size=(320, 240))
    wf_path = tmp_path / "wf.yaml"
    wf_path.write_text(DRIVER_WORKFLOW)
    out = tmp_path / "out"
    args = [str(Path(sys.executable).parent / "dagflow"), "run", str(wf_path), "-i",
            str(tmp_path / "in"), "-o", str(out), "--json", "--chunk-size", "1"]
    env = {**os.environ, "DASK_DAGFLOW__CLUSTER__N_WORKERS": "2",
           "DASK_DAGFLOW__CLUSTER__THREADS_PER_WORKER": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    events = out / "_dagflow" / "runs"
    while time.monotonic() < deadline and not any(
            "chunk_finished" in p.read_text() for p in events.glob("*/events.jsonl")):
        time.sleep(0.05)
    os.killpg(proc.pid, signum)  # the whole group, as a terminal or a batch system does
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert f"{said}: what finished is recorded; the same command resumes" in stderr
    # no worker's KeyboardInterrupt, no stop signal dropped in a gc callback (Dask's own
    # shutdown messages from the workers may remain)
    assert "KeyboardInterrupt" not in stderr and "Terminated" not in stderr
    log = next(events.glob("*/events.jsonl")).read_text()
    assert '"event": "run_interrupted"' in log
    if signum == signal.SIGTERM:
        return  # resuming is the same from here
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["already_done"] >= 1 and summary["executed"] + summary["already_done"] == 12


WRITER = """
import sys
from dagflow.recovery.checkpoint import write_records
rows = [dict(run_id="r", item_id=i, item_key="k%d" % i, input_path="/x/%d.jpg" % i, rel="%d" % i,
             node_id="n", node_key="nk", op="o", status="ok", attempts=1, duration_s=0.1,
             error_message="m" * 200) for i in range(20000)]
for n in range(10):
    write_records(sys.argv[1] + "/runs/r%03d/records/part-%07d.parquet" % (n % 3, n), rows)
"""


@pytest.mark.parametrize("torn", [0, 4])
def test_checkpoint_writer_killed_mid_write_leaves_a_readable_checkpoint(tmp_path, torn):
    """A process killed while it writes a records part (its content written, not yet
    renamed into place: ``DAGFLOW_FAULT=in-part:...``) leaves the parts before it whole,
    that part absent, and only a temporary file behind."""
    from dagflow.io.atomic import find_temporaries

    state = tmp_path / "_dagflow"
    state.mkdir()
    name = f"part-{torn:07d}.parquet"
    proc = subprocess.run([sys.executable, "-c", WRITER, str(state)],
                          env={**os.environ, "DAGFLOW_FAULT": f"in-part:{name}"})
    assert proc.returncode == -signal.SIGKILL
    table, bad = read_records(record_parts(state))
    assert bad == [] and table.num_rows == torn * 20000
    assert sorted(p.name for p in record_parts(state)) == [f"part-{n:07d}.parquet"
                                                           for n in range(torn)]
    (leftover,) = find_temporaries(state)
    assert leftover.name.startswith(f".{name}.")
    assert load_done(state).corrupt_parts == []


def test_status_reconstructs_the_run_and_flags_inconsistencies(photos, tmp_path, client):
    out = tmp_path / "out"
    wf = Workflow("s", [Node("load", "load"),
                        Node("save", "save", {"format": "png"}, after="load")])
    result = dagflow.run(wf, photos, out, client=client, progress=False)
    status = run_status(result.run_dir)
    assert (status.state, status.done, status.failed, status.pending) == ("finished", 12, 0, 0)
    assert status.inconsistencies == []
    (out / "img001.png").unlink()
    (out / "stray.png").write_bytes(b"x")
    (out / ".img002.png.0a1b2c3d4e5f.tmp").write_bytes(b"torn")
    # a run that died: its log has no end
    events = result.run_dir / "events.jsonl"
    events.write_text("".join(line + "\n" for line in events.read_text().splitlines()
                              if "run_finished" not in line) + '{"t": 1, "event": "chunk_fin')
    status = run_status(result.run_dir)
    assert status.state == "running or died"
    text = "\n".join(status.inconsistencies)
    assert status.outputs_changed == [(str(out / "img001.png"), "missing")]
    assert "output without a record" in text and "stray.png" in text
    assert "temporary file left behind" in text
    from click.testing import CliRunner

    from dagflow.cli import main

    shown = CliRunner().invoke(main, ["status", str(result.run_dir), "--json"])
    assert shown.exit_code == 0 and '"running or died"' in shown.output
    # the output directory names its latest run; a directory that is neither is refused
    # (its grandparent would otherwise be searched for leftovers)
    later = dagflow.run(wf, photos, out, client=client, progress=False)
    assert run_status(out).run_id == later.run_id != result.run_id
    by_output = CliRunner().invoke(main, ["status", str(out)])
    assert by_output.exit_code == 0 and later.run_id in by_output.output
    refused = CliRunner().invoke(main, ["status", str(photos)])
    assert refused.exit_code == 2 and "neither a run directory" in refused.output
    assert "inconsistency" not in refused.output


def test_the_whole_bad_input_corpus_through_a_run(tmp_path, client):
    """Every hostile file ends in success or a named, recorded bad-input error."""
    from dagflow.testing import make_bad_corpus

    corpus = make_bad_corpus(tmp_path / "bad")
    # one name in several formats (truncated.gif, truncated.tif): one PNG each
    wf = Workflow("bad", [Node("load", "load"),
                          Node("small", "resize", {"long_side": 64}, after="load"),
                          Node("save", "save", {"format": "png", "name": "{rel}_{ext}"},
                               after="small")])
    start = time.monotonic()
    result = dagflow.run(wf, tmp_path / "bad", tmp_path / "out", client=client, progress=False)
    assert time.monotonic() - start < 120
    assert result.items == len(corpus)
    by_name = {}
    for r in records(result):
        if r["node_id"] == "load":
            by_name[Path(r["input_path"]).relative_to(tmp_path / "bad").as_posix()] = r
    assert set(by_name) == set(corpus)
    for name, expectation in corpus.items():
        r = by_name[name]
        outcome = "ok" if r["status"] == "ok" else r["reason"]
        if r["status"] != "ok":
            assert r["error_class"] == "bad_input", (name, r)
        assert outcome in expectation.outcomes, (name, outcome, expectation)
    # outputs exist exactly for the items that loaded
    saved = {Path(r["input_path"]).name for r in records(result)
             if r["node_id"] == "save" and r["status"] == "ok"}
    assert len(saved) == sum(1 for r in by_name.values() if r["status"] == "ok")


def test_closing_the_client_mid_run_is_an_interruption_not_failures(tmp_path, make_photos):
    make_photos(tmp_path / "in", 30, size=(320, 240))
    wf = Workflow("c", [Node("load", "load"), Node("m", "median", {"size": 5}, after="load"),
                        Node("save", "save", {"format": "png"}, after="m")])
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address="127.0.0.1:0") as cluster:
        c = Client(cluster)
        handle = dagflow.run(wf, tmp_path / "in", tmp_path / "out", client=c, wait=False,
                             chunk_size=2)
        while handle.done_items < 4:
            time.sleep(0.02)
        c.close()
        with pytest.raises(BaseException):  # noqa: B017 (whatever the client raises)
            handle.result(timeout=60)
    table, _ = read_records(record_parts(tmp_path / "out" / "_dagflow"))
    assert "failed" not in set(table.column("status").to_pylist())
    run_dir = sorted((tmp_path / "out" / "_dagflow" / "runs").iterdir())[-1]
    assert run_status(run_dir).state == "interrupted"
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as c:
        resumed = dagflow.run(wf, tmp_path / "in", tmp_path / "out", client=c, progress=False)
    assert resumed.failed == 0 and resumed.already_done >= 4
    assert resumed.executed + resumed.already_done == 30


@pytest.mark.parametrize("n", [1, 2, 5])
def test_parts_keep_every_value_whether_a_column_repeats_one_or_not(tmp_path, n):
    """A column of one repeated value is written without converting each copy; what is
    read back is the same either way (strings, nulls, booleans, numbers, mixed)."""
    import pyarrow.parquet as pq

    from dagflow.monitor.store import PART_SCHEMA
    from dagflow.recovery.checkpoint import write_part

    columns = {
        "run_id": ["r1"] * n, "item_id": list(range(n)), "node_id": ["load"] * n,
        "status": ["ok"] * (n - 1) + ["failed"], "error_class": [None] * n,
        "reason": [None] * (n - 1) + ["oversize"], "attempts": [1] * n,
        "duration_s": [0.5] * n, "width": [None] + [640] * (n - 1),
        "degraded": [True] * n, "megapixels": [0.3] * n,
    }
    path = write_part(tmp_path / "part-0000000.parquet", columns, PART_SCHEMA)
    table = pq.read_table(path)
    assert table.column_names == [f.name for f in PART_SCHEMA if f.name in columns]
    assert table.to_pydict() == columns
    assert table.schema.field("degraded").type == PART_SCHEMA.field("degraded").type
    # a part written with zstd by an earlier version reads the same beside it
    older = tmp_path / "part-0000001.parquet"
    pq.write_table(table, older, compression="zstd", use_dictionary=False,
                   write_statistics=False)
    both, bad = read_records([path, older])
    assert bad == [] and both.num_rows == 2 * n
    assert both.column("reason").to_pylist() == 2 * columns["reason"]


def test_an_empty_checkpoint_is_read_without_pandas(tmp_path):
    """A first run reads an output that holds no records: an empty table, built without
    the pandas import (~0.6 s) that pyarrow's ``Schema.empty_table`` makes."""
    code = ("import sys, dagflow\n"
            "from dagflow.recovery.checkpoint import load_done\n"
            "from dagflow.monitor.store import read_parts, PART_SCHEMA\n"
            f"cp = load_done({str(tmp_path)!r})\n"
            "empty = read_parts([], PART_SCHEMA)\n"
            "print(len(cp.done), empty.num_rows, empty.schema == PART_SCHEMA,"
            " 'pandas' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["0", "0", "True", "False"]

"""Samples of CPU, memory and GPU use, on the scheduler and in the worker process, and
the counters that say where a worker's time went off the CPU.

On the scheduler, :func:`worker_sample` reads what each worker's heartbeat already
carries (its ``SystemMonitor``: process CPU and memory from psutil, GPU utilisation and
memory from NVML where the worker has a GPU), so monitoring adds no work on workers.
In a task, :func:`process_sample` measures the current process with psutil (a
dependency of distributed) and, if ``pynvml`` is importable and a GPU is visible, the
GPU through distributed's NVML wrapper.

:func:`host_counters` reads, in the worker process, cumulative counters that tell why
threads were off the CPU: the process's CPU seconds, the seconds its threads waited in
the run queue for a CPU (``/proc/<pid>/task/*/schedstat``), the bytes it read and wrote
on storage (``/proc/self/io``), and the machine's CPU time by state (busy, I/O wait,
steal: ``/proc/stat``), runnable threads (``procs_running``) and pressure stall time
(``/proc/pressure/cpu``, ``/proc/pressure/io``). Differences between two readings of the
same process are what happened in between (:mod:`dagflow.monitor.evidence`). Where a
file is missing (not Linux, an old kernel) its counters are ``None``.

No Dask state is changed here; nothing here imports Bokeh.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from typing import Any

__all__ = ["COUNTERS", "gpu_sample", "host_counters", "interval_counters", "mark_baseline",
           "process_sample", "worker_sample"]

logger = logging.getLogger(__name__)


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def worker_sample(ws: Any) -> dict[str, Any]:
    """CPU %, memory and GPU use of a worker, from its last heartbeat.

    Parameters
    ----------
    ws
        A scheduler's ``WorkerState``.

    Returns
    -------
    dict
        ``cpu`` (percent of one core, as psutil reports it), ``memory`` (bytes, process
        RSS), ``memory_limit`` (bytes or ``None``), ``gpu_utilization`` (percent or
        ``None``), ``gpu_memory`` (bytes or ``None``), ``nthreads``, ``executing``
        (tasks running now).
    """
    m = getattr(ws, "metrics", None) or {}
    gpu = m.get("gpu") if isinstance(m.get("gpu"), dict) else {}
    gpu_util = m.get("gpu_utilization", gpu.get("utilization"))
    gpu_mem = m.get("gpu_memory_used", gpu.get("memory-used"))
    processing = getattr(ws, "processing", ())
    return {
        "cpu": _number(m.get("cpu")),
        "memory": _number(m.get("memory")),
        "memory_limit": _number(getattr(ws, "memory_limit", None)) or None,
        "gpu_utilization": _number(gpu_util),
        "gpu_memory": _number(gpu_mem),
        "nthreads": int(getattr(ws, "nthreads", 0) or 0),
        "executing": len(processing) if processing is not None else 0,
    }


@functools.cache
def _process() -> Any:
    import psutil

    proc = psutil.Process()
    proc.cpu_percent(interval=None)  # the first call only starts the measurement
    return proc


@functools.cache
def _has_gpu() -> bool:
    try:
        import pynvml  # noqa: F401
    except ImportError:
        return False
    try:
        from distributed.diagnostics import nvml

        return nvml.device_get_count() > 0
    except Exception:
        return False


def gpu_sample() -> dict[str, float] | None:
    """GPU utilisation (percent) and memory used (bytes) of this process's GPU, if any."""
    if not _has_gpu():
        return None
    try:
        from distributed.diagnostics import nvml

        rt = nvml.real_time()
    except Exception:
        logger.debug("NVML sampling failed", exc_info=True)
        return None
    return {"gpu_utilization": _number(rt.get("utilization")),
            "gpu_memory": _number(rt.get("memory-used"))}


def process_sample() -> dict[str, Any]:
    """CPU % (since the previous call) and RSS of this process, and its GPU if any."""
    out: dict[str, Any] = {"time": time.time(), "cpu": None, "memory": None,
                           "gpu_utilization": None, "gpu_memory": None}
    try:
        proc = _process()
        out["cpu"] = proc.cpu_percent(interval=None)
        out["memory"] = float(proc.memory_info().rss)
    except Exception:
        logger.debug("psutil sampling failed", exc_info=True)
    gpu = gpu_sample()
    if gpu:
        out.update(gpu)
    return out


#: What :func:`host_counters` returns, in order (cumulative unless said otherwise).
COUNTERS = (
    "counters_time",      # time.time() of the reading
    "counters_pid",       # the process read
    "proc_cpu_s",         # its CPU seconds, user + system, all threads
    "proc_wait_s",        # seconds its threads waited in the run queue for a CPU
    "busy_cpu_s",         # CPU seconds of its threads that were runnable half the time
    "busy_wait_s",        # ... and their seconds in the run queue
    "proc_read_bytes",    # bytes it made the storage read
    "proc_write_bytes",   # bytes it sent to the storage
    "host_cpus",          # CPUs this process may run on (not cumulative)
    "host_busy_s",        # the machine's CPU seconds: user, nice, system, irq, softirq
    "host_iowait_s",      # ... idle waiting for I/O
    "host_steal_s",       # ... taken by the hypervisor
    "host_total_s",       # ... all states
    "host_running",       # runnable threads on the machine now (not cumulative)
    "host_psi_cpu_s",     # seconds some runnable task waited for a CPU (PSI "some")
    "host_psi_io_s",      # seconds some task waited for I/O (PSI "some")
)

_TICK = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _psi_some(path: str) -> float | None:
    data = _read(path)
    if not data:
        return None
    for line in data.split(b"\n"):
        if line.startswith(b"some"):
            for field in line.split():
                if field.startswith(b"total="):
                    return int(field[6:]) / 1e6
    return None


#: The threads' schedstat at this process's previous reading: tid -> (cpu, wait) in ns.
_THREADS: dict[str, tuple[int, int]] = {}
#: Cumulative CPU and run-queue seconds of the threads that were runnable at least half
#: of the time between two readings (the threads running ops), since the first reading.
_RUNNABLE = [0.0, 0.0]
_LAST_READING = [0.0]


def _thread_times() -> dict[str, tuple[int, int]] | None:
    """Each thread's CPU and run-queue nanoseconds (schedstat's first two fields)."""
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    out = {}
    for tid in tids:
        data = _read(f"/proc/self/task/{tid}/schedstat")
        if data:
            parts = data.split()
            if len(parts) >= 2:
                out[tid] = (int(parts[0]), int(parts[1]))
    return out or None


def _run_queue(now: float) -> tuple[float | None, float | None, float | None]:
    """All threads' run-queue seconds, and the cumulative CPU and run-queue seconds of
    the threads that wanted a CPU at least half of the time since the previous reading.

    A thread that runs an op for most of an interval is one of those; the event loop's
    and the idle threads are not. Their run-queue wait per CPU second says how long an
    op waits for a CPU, which the process's total would understate (threads that wake
    briefly are scheduled first).
    """
    threads = _thread_times()
    if threads is None:
        return None, None, None
    total_wait = sum(w for _, w in threads.values()) / 1e9
    dt = now - _LAST_READING[0] if _LAST_READING[0] else 0.0
    if dt > 0:
        for tid, (cpu, wait) in threads.items():
            before = _THREADS.get(tid)
            if before is None:
                continue
            d_cpu, d_wait = (cpu - before[0]) / 1e9, (wait - before[1]) / 1e9
            if d_cpu + d_wait >= 0.5 * dt:
                _RUNNABLE[0] += d_cpu
                _RUNNABLE[1] += d_wait
    _THREADS.clear()
    _THREADS.update(threads)
    _LAST_READING[0] = now
    return total_wait, _RUNNABLE[0], _RUNNABLE[1]


def host_counters() -> dict[str, float | int | None]:
    """This process's and this machine's counters now (see :data:`COUNTERS`).

    About 0.1 ms (most of it the threads' schedstat); called once per chunk (by
    :func:`interval_counters`).
    """
    out: dict[str, float | int | None] = dict.fromkeys(COUNTERS)
    out["counters_time"] = time.time()
    out["counters_pid"] = os.getpid()
    out["proc_cpu_s"] = time.process_time()
    out["proc_wait_s"], out["busy_cpu_s"], out["busy_wait_s"] = \
        _run_queue(float(out["counters_time"]))
    io = _read("/proc/self/io")
    if io:
        for line in io.split(b"\n"):
            if line.startswith(b"read_bytes:"):
                out["proc_read_bytes"] = int(line.split()[1])
            elif line.startswith(b"write_bytes:"):
                out["proc_write_bytes"] = int(line.split()[1])
    try:
        out["host_cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        out["host_cpus"] = os.cpu_count()
    stat = _read("/proc/stat")
    if stat:
        for line in stat.split(b"\n"):
            if line.startswith(b"cpu "):
                # user nice system idle iowait irq softirq steal guest guest_nice
                v = [int(x) / _TICK for x in line.split()[1:]]
                v += [0.0] * (8 - len(v))
                out["host_busy_s"] = v[0] + v[1] + v[2] + v[5] + v[6]
                out["host_iowait_s"] = v[4]
                out["host_steal_s"] = v[7]
                out["host_total_s"] = sum(v[:8])
            elif line.startswith(b"procs_running"):
                out["host_running"] = int(line.split()[1])
    out["host_psi_cpu_s"] = _psi_some("/proc/pressure/cpu")
    out["host_psi_io_s"] = _psi_some("/proc/pressure/io")
    return out


#: This process's previous reading: where the next interval starts.
_PREVIOUS: list[dict[str, float | int | None] | None] = [None]
_READING = threading.Lock()


def mark_baseline() -> bool:
    """Take a reading that the next interval starts from (a run calls it on every worker
    as it starts, so that a process's first chunk has an interval too)."""
    with _READING:
        _PREVIOUS[0] = host_counters()
    return True


def interval_counters() -> tuple[dict[str, float | int | None] | None,
                                 dict[str, float | int | None]]:
    """This process's previous reading (``None`` before any) and a reading now, which
    becomes the previous one: what happened in between is theirs to tell."""
    with _READING:
        now = host_counters()
        before, _PREVIOUS[0] = _PREVIOUS[0], now
    return before, now

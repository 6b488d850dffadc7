"""Samples of CPU, memory and GPU use, on the scheduler and in the worker process.

On the scheduler, :func:`worker_sample` reads what each worker's heartbeat already
carries (its ``SystemMonitor``: process CPU and memory from psutil, GPU utilisation and
memory from NVML where the worker has a GPU), so monitoring adds no work on workers.
In a task, :func:`process_sample` measures the current process with psutil (a
dependency of distributed) and, if ``pynvml`` is importable and a GPU is visible, the
GPU through distributed's NVML wrapper.

No Dask state is changed here; nothing here imports Bokeh.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

__all__ = ["gpu_sample", "process_sample", "worker_sample"]

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

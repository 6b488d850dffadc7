"""The only layer that talks to a live cluster: connecting, running, results."""

from dagflow.runtime.cluster import connect, start_cuda_cluster, start_local_cluster
from dagflow.runtime.plan import BatchPlan, plan
from dagflow.runtime.result import (
    EXIT_BREAKER,
    EXIT_FAILED_ITEMS,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_STORAGE,
    RunResult,
)
from dagflow.runtime.run import RunHandle, run
from dagflow.runtime.selection import load_workflow, select_items

__all__ = [
    "EXIT_BREAKER",
    "EXIT_FAILED_ITEMS",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_STORAGE",
    "BatchPlan",
    "RunHandle",
    "RunResult",
    "connect",
    "load_workflow",
    "plan",
    "run",
    "select_items",
    "start_cuda_cluster",
    "start_local_cluster",
]

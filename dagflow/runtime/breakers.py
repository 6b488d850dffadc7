"""Telling the workers which nodes' circuit breakers are open.

The run's breakers live on its client (:mod:`dagflow.runtime.loop`); the tasks that must
stop sending items to a broken node run on the workers, some of them already started.
:class:`OpenBreakers` is a worker plugin that sets, in every worker process, the nodes
of a run that no item may reach (:func:`dagflow.recovery.breaker.open_nodes`, read by
the item loop before each item). Registered again under the same name whenever the set
changes, it reaches every current worker at once and every worker that joins later (a
restarted one included); emptied and removed when the run ends. A node that is no longer
open also has its count of consecutive failures in the process reset, so that the probe
of a half-open breaker gets through. The set is changed in
place, never replaced: a task holding it sees a breaker open mid-chunk.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from dagflow.recovery.breaker import consecutive_failures, open_nodes

__all__ = ["OpenBreakers", "plugin_name"]


def plugin_name(run_id: str) -> str:
    return f"dagflow-breakers-{run_id}"


class OpenBreakers(WorkerPlugin):
    """Worker plugin: the open nodes of run ``run_id`` are ``nodes``."""

    idempotent = False

    def __init__(self, run_id: str, nodes: Iterable[str]) -> None:
        self.run_id = run_id
        self.nodes = frozenset(nodes)
        self.name = plugin_name(run_id)

    def setup(self, worker: Any) -> None:
        current = open_nodes(self.run_id)
        for node in current - self.nodes:  # half-open or closed: items may pass again
            consecutive_failures(self.run_id, node)[0] = 0
        current.update(self.nodes)
        current.intersection_update(self.nodes)

"""What a worker's death means for a run: which item it was on, and its verdict.

A worker that dies (a segfault in a decoder, ``os._exit``, its nanny killing it for
memory) is heard of three ways, whichever comes first: the scheduler's ``remove-worker``
event (on the ``all`` topic, with the tasks it was running), a task Dask ran again that
finds its in-flight cell still set (:class:`~dagflow.recovery.inflight.ItemSuspected`),
and Dask giving up on a task (``KilledWorker``). Each tells the run loop which item was
running where (the cells of :mod:`dagflow.recovery.inflight`); the loop takes the item
out of its chunk, runs it alone at the end, and convicts it only if it kills a worker
then. The nanny's ``worker-restart-memory`` event says which deaths were for memory.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from dagflow.compile import NodeTask, RunContext, layer_name
from dagflow.recovery.events import EventLog
from dagflow.recovery.inflight import ItemSuspected, read_cell
from dagflow.runtime.loop import Conviction, RunLoop

__all__ = ["MEMORY_WORD_S", "Deaths"]

#: Seconds a conviction waits for the nanny's word that it killed the worker for memory
#: (its event and the worker's removal reach the client by different ways).
MEMORY_WORD_S = 0.5

#: ``record(item, node, error_class, error_type, message, attempts=, log=, worker=)``:
#: records an item failed at ``node`` (:meth:`dagflow.runtime.runner.Runner.record_item`).
Recorder = Callable[..., None]


class Deaths:
    """The worker deaths of one run (see the module docstring).

    Parameters
    ----------
    ctx, tasks, token
        The run, its nodes and the token in its layer names.
    loop
        The run loop, which decides what a death changes.
    events
        The run's event log.
    record
        Records a convicted item.
    """

    def __init__(self, ctx: RunContext, tasks: Mapping[str, NodeTask], token: str,
                 loop: RunLoop, events: EventLog, record: Recorder) -> None:
        self.ctx, self.tasks, self.loop, self.events = ctx, tasks, loop, events
        self.record = record
        self.node_of = {layer_name(nid, token): nid for nid in tasks}
        self.by_position = {t.position: nid for nid, t in tasks.items()}
        self.stride = max(1, ctx.nodes)
        #: Workers their nanny killed for memory, with their last memory use.
        self.memory_killed: dict[str, int] = {}
        #: Workers lost unexpectedly during the run.
        self.count = 0

    @contextlib.contextmanager
    def heard(self, client: Any, outcomes: queue.SimpleQueue) -> Iterator[None]:
        """While the block runs, put ``("death", (worker, keys))`` on ``outcomes`` for
        every worker that leaves unexpectedly, and note the ones killed for memory."""
        def removed(event: tuple[float, Any]) -> None:
            msg = event[1]
            if isinstance(msg, dict) and msg.get("action") == "remove-worker" \
                    and not msg.get("expected"):
                outcomes.put(("death", (msg.get("worker"),
                                        list(msg.get("processing-tasks") or ()))))

        def memory(event: tuple[float, Any]) -> None:
            msg = event[1]
            if isinstance(msg, dict) and msg.get("worker"):
                self.memory_killed[msg["worker"]] = int(msg.get("rss") or 0)

        topics = {"all": removed, "worker-restart-memory": memory}
        for topic, handler in topics.items():
            client.subscribe_topic(topic, handler)
        try:
            yield
        finally:
            for topic in topics:
                with contextlib.suppress(Exception):
                    client.unsubscribe_topic(topic)

    def _cell(self, index: int, node: str) -> int | None:
        return read_cell(self.ctx.run_dir, index * self.stride + self.tasks[node].position)

    def worker_died(self, worker: str | None, keys: list[Any]) -> None:
        """A worker left unexpectedly while running the tasks ``keys``."""
        if not worker:
            return
        self.count += 1
        running = []
        for key in keys:
            if not (isinstance(key, list | tuple) and len(key) == 2):
                continue
            node, index = self.node_of.get(key[0]), key[1]
            if node is None or index not in self.loop.running:
                continue  # another layer (the commit), another run, a chunk given up
            item = self._cell(index, node)
            if item is not None or index in self.loop.alone:
                running.append((index, item, node))
        self.events.emit("worker_died", worker=worker, running=running)
        for index, item, node in running:
            # the item running alone dies with its worker, whichever cell it left
            self.lost(index, item, node, worker)

    def killed(self, index: int, exc: Exception) -> bool:
        """Dask gave up on chunk ``index``'s task (``KilledWorker``): its workers kept
        dying under it. Returns whether the item is known (else the caller splits the
        chunk)."""
        worker = getattr(getattr(exc, "last_worker", None), "address", None) or "a worker"
        task = getattr(exc, "task", None)
        node = self.node_of.get(task[0]) if isinstance(task, tuple) else None
        item = self._cell(index, node) if node is not None else None
        chunk = self.loop.running.get(index)
        if chunk is not None and item is None and len(chunk) == 1:
            item = chunk.items[0]["item_id"]
        if item is None:
            return False
        self.lost(index, item, node, worker)
        return True

    def suspected(self, index: int, exc: ItemSuspected) -> None:
        """Chunk ``index``'s task, run again after its worker died, refused the item."""
        self.lost(index, exc.item_id, self.by_position.get(exc.position), "a worker")

    def lost(self, index: int, item_id: int | None, node: str | None, worker: str) -> None:
        """Chunk ``index`` was on ``item_id`` at ``node`` when ``worker`` died."""
        chunk = self.loop.running.get(index)
        if chunk is None:
            return
        alone = index in self.loop.alone
        where = f"running node {node!r}" if node else "running"
        company = "alone" if alone else f"in chunk {index} of {len(chunk)} items"
        memory = worker in self.memory_killed
        how = "was killed by its nanny for exceeding its memory limit" if memory else "died"
        why = f"KilledWorker: worker {worker} {how} {where} this item, {company}"
        conviction = self.loop.worker_lost(index, item_id, node, why=why, memory=memory)
        if index not in self.loop.running and not alone:
            self.events.emit("suspect", item=item_id, chunk=index, node=node, worker=worker)
        if conviction is not None:
            self._convict(conviction, worker)

    def _convict(self, conviction: Conviction, worker: str) -> None:
        """Record an item that killed its worker while it ran alone."""
        deadline = time.monotonic() + MEMORY_WORD_S
        while worker not in self.memory_killed and time.monotonic() < deadline:
            time.sleep(0.05)  # the nanny's event may trail the worker's removal
        memory = worker in self.memory_killed
        suspect = conviction.suspect
        node = conviction.node or next(iter(self.tasks))
        if memory:
            suspect.log[-1]["error"] = suspect.log[-1]["error"].replace(
                " died ", " was killed by its nanny for exceeding its memory limit ")
            message = (f"the worker running node {node!r} on this item, alone, was killed by "
                       f"its nanny for exceeding its memory limit (it used "
                       f"{self.memory_killed[worker]:,} bytes)")
        else:
            message = (f"the worker running node {node!r} on this item, alone, died "
                       f"({len(suspect.log)} worker(s) lost with it): a crash in the op "
                       "or what it calls (a segfault, an exit)")
        error_class = "resource" if memory else "lost_worker"
        self.events.emit("convicted", item=suspect.item["item_id"], node=node,
                         error_class=error_class)
        self.record(suspect.item, node, error_class, "KilledWorker", message,
                    attempts=len(suspect.log), log=suspect.log, worker=worker)

"""The run loop: which chunks go to the cluster when, and what each outcome changes.

:class:`RunLoop` holds a run's chunks and decides, without touching a cluster:

* the submission window (:meth:`~RunLoop.next_graphs`): at most ``window`` chunks in
  flight; the first submission gives every worker thread two chunks, and one more each
  in graphs of their own right behind them (``reserve``); more follow as chunks finish,
  in graphs of at most ``graph_items`` items;
* chunk splitting (:meth:`~RunLoop.failed`): a chunk whose task failed as a whole (an
  error that is no item's own) is split in two and resubmitted, down to single items;
* suspect items (:meth:`~RunLoop.worker_lost`): an item that was running when its worker
  died is taken out of its chunk, whose other items go on at once, and is tried again
  alone once everything else has finished. Only an item whose worker dies while it runs
  alone is convicted (a :class:`Conviction`: ``lost_worker``, or ``resource`` when the
  worker's nanny killed it for its memory); one that succeeds alone was innocent;
* the circuit breakers (:meth:`~RunLoop.finished`): a chunk's failures feed its nodes'
  breakers. Once one opens, nothing more is submitted; the caller tells the workers, and
  the chunks in flight send no further item to that node (those items come back
  ``not_run`` and are held). When nothing is left in flight and the cool-down is over,
  one item probes the node: a success closes the breaker and the held items run again, a
  failure stops the run;
* cancellation: a chunk the loop takes apart or gives up leaves :attr:`~RunLoop.running`,
  and the caller cancels every submitted chunk that is no longer there.

The caller (:class:`dagflow.runtime.run.Runner`) compiles, submits and cancels on the
cluster, and feeds completions, failures and worker deaths in; the tests drive the loop
with made-up ones. This module imports no Dask.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dagflow.compile import Chunk
from dagflow.recovery.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    CircuitBreaker,
    counts_against_breaker,
)

__all__ = ["Conviction", "RunLoop", "Suspect"]

Item = Mapping[str, Any]


@dataclass
class Suspect:
    """An item that was running when its worker died.

    Attributes
    ----------
    item
        The item.
    node
        The node it was at, when known.
    log
        One entry per worker death it was part of (the record's ``attempt_log``).
    alone
        How many times its worker died while it ran alone.
    """

    item: Item
    node: str | None
    log: list[dict[str, Any]] = field(default_factory=list)
    alone: int = 0


@dataclass(frozen=True)
class Conviction:
    """A suspect whose worker died while it ran alone: recorded failed at ``node``;
    ``memory`` when the worker's nanny killed it for exceeding its memory limit."""

    suspect: Suspect
    node: str | None
    memory: bool


class RunLoop:
    """A run's chunks, and what to submit next (see the module docstring).

    Parameters
    ----------
    chunks
        The run's chunks, in the order to submit them.
    breakers
        One circuit breaker per node id.
    window
        Most chunks in flight at once.
    first
        Chunks in the first submission (two per worker thread).
    reserve
        Chunks submitted right after the first ones, in graphs of their own (one per
        worker thread). A thread runs its two first chunks side by side (it takes one's
        next task while the scheduler sends it the other's), so they end together, no
        earlier than the first chunk to come back, which sends the rest: without a
        chunk in reserve every thread then waits while the rest is built, sent and
        scheduled (0.07-0.17 s on a busy 2-core machine). In graphs of their own, they
        do not delay the first tasks.
    graph_items
        Most items in one submitted graph.
    alone_tries
        Worker deaths of a suspect running alone before it is convicted (0: convicted
        at once, never run alone).
    clock
        Seconds, for the breakers' cool-down.
    """

    #: Probes in a row that never reached their node before the run stops.
    MAX_INCONCLUSIVE = 3

    def __init__(self, chunks: Sequence[Chunk], breakers: Mapping[str, CircuitBreaker], *,
                 window: int = 2000, first: int = 2, reserve: int = 0,
                 graph_items: int = 16384, alone_tries: int = 1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pending: collections.deque[Chunk] = collections.deque(chunks)
        #: Submitted chunks not finished yet, by index.
        self.running: dict[int, Chunk] = {}
        self.suspects: collections.deque[Suspect] = collections.deque()
        #: The suspect running alone, by its chunk's index.
        self.alone: dict[int, Suspect] = {}
        #: Items a breaker held back, in groups, to run once it has closed.
        self.held: list[tuple[Item, ...]] = []
        self.breakers = dict(breakers)
        #: Breakers whose state changed since the caller last took them (to tell the
        #: workers, the event log and the dashboard).
        self.changed: list[CircuitBreaker] = []
        #: The breaker that stopped the run.
        self.stopped: CircuitBreaker | None = None
        #: The workers' counts of consecutive failures are to be reset (the caller tells
        #: them, as it tells them of :attr:`changed` breakers).
        self.recount = False
        self.window = max(1, int(window))
        self.batch = max(1, min(256, self.window // 4))
        self.first = max(1, min(self.window, int(first)))
        self.reserve = max(0, min(self.window - self.first, int(reserve)))
        self.graph_items = max(1, int(graph_items))
        self.alone_tries = max(0, int(alone_tries))
        self.clock = clock
        self.next_index = max((c.index for c in chunks), default=-1) + 1
        self._probe: int | None = None
        self._inconclusive = 0
        self._started = False
        self._outcomes = False  # an outcome came in since the last submission

    # ------------------------------------------------------------------ indices, state

    def new_index(self) -> int:
        """A chunk index no chunk of this run has had (for a chunk made on the way)."""
        index, self.next_index = self.next_index, self.next_index + 1
        return index

    def _chunk(self, items: Sequence[Item]) -> Chunk:
        return Chunk(self.new_index(), tuple(items))

    def open_breakers(self) -> list[CircuitBreaker]:
        return [b for b in self.breakers.values() if b.state != CLOSED]

    def done(self) -> bool:
        """Nothing in flight and nothing left that this run will still submit.

        A breaker still open then (it opened on the run's last items, nothing is left to
        probe it with) stops the run: :attr:`stopped` is set.
        """
        if self.running:
            return False
        if self.stopped is not None:
            return True
        if self.pending or self.suspects or self.held:
            return False
        broken = self.open_breakers()
        if broken:
            self.stopped = broken[0]
        return True

    def not_run(self) -> list[Item]:
        """The items this run did not get to (held back, never submitted, suspects not
        tried alone): the next run runs them."""
        out = [item for chunk in self.pending for item in chunk.items]
        out.extend(item for group in self.held for item in group)
        out.extend(s.item for s in self.suspects)
        return out

    # ------------------------------------------------------------------ the window

    def next_graphs(self) -> list[list[Chunk]]:
        """The chunks to submit now, grouped into graphs (marked running)."""
        if self.stopped is not None or self.alone:
            return []
        if self.open_breakers():
            return self._next_probe()
        if self.held:
            # the workers held them back (a node failing on a worker, with the client's
            # breaker closed): they run again, and the workers count afresh
            self.pending.extendleft(self._chunk(g) for g in reversed(self.held))
            self.held.clear()
            self.recount = True
        reserve: list[Chunk] = []
        if not self._started:
            self._started = True
            chunks = self._take(self.first)
            reserve = self._take(self.reserve)  # in graphs of their own, after these
        elif self._outcomes and self.pending and \
                self.window - len(self.running) >= min(self.batch, len(self.pending)):
            # more only once chunks have come back: the first graphs reach the workers
            # before the next are even built
            chunks = self._take(min(self.batch, self.window - len(self.running)))
        else:
            chunks = []
        self._outcomes = False
        if not chunks and not self.running and not self.pending and self.suspects:
            suspect = self.suspects.popleft()  # alone: a worker death is then its own
            chunk = self._chunk([suspect.item])
            self.alone[chunk.index] = suspect
            chunks = [chunk]
        for chunk in (*chunks, *reserve):
            self.running[chunk.index] = chunk
        return self._graphs(chunks) + self._graphs(reserve)

    def _take(self, n: int) -> list[Chunk]:
        return [self.pending.popleft() for _ in range(min(n, len(self.pending)))]

    def _graphs(self, chunks: list[Chunk]) -> list[list[Chunk]]:
        graphs: list[list[Chunk]] = []
        items = 0
        for chunk in chunks:
            if not graphs or items + len(chunk) > self.graph_items:
                graphs.append([])
                items = 0
            graphs[-1].append(chunk)
            items += len(chunk)
        return graphs

    # ------------------------------------------------------------------ outcomes

    def finished(self, index: int, summary: Any) -> Chunk | None:
        """Chunk ``index`` finished with ``summary`` (a
        :class:`~dagflow.execute.ChunkSummary`); returns the chunk (``None`` for one the
        loop had already given up)."""
        chunk = self.running.pop(index, None)
        if chunk is None:
            return None
        self._outcomes = True
        self.alone.pop(index, None)  # it ran alone without killing its worker: innocent
        self._feed_breakers(summary, probe=index == self._probe)
        if index == self._probe:
            self._probe = None
        held = {iid for iid, status in summary.item_status.items() if status == "not_run"}
        if held:
            self.held.append(tuple(i for i in chunk.items if i["item_id"] in held))
        return chunk

    def failed(self, index: int) -> Chunk | None:
        """Chunk ``index``'s task failed as a whole, not by an item's own error: a chunk
        of several items is split in two and resubmitted first (``None`` returned); a
        single item is returned, for the caller to record as failed."""
        chunk = self.running.pop(index, None)
        if chunk is None:
            return None
        self._outcomes = True
        self.alone.pop(index, None)
        if index == self._probe:
            self._probe = None  # the breaker is still half-open: another item probes
        if len(chunk) == 1:
            return chunk
        half = len(chunk) // 2
        self.pending.appendleft(self._chunk(chunk.items[half:]))
        self.pending.appendleft(self._chunk(chunk.items[:half]))
        return None

    def worker_lost(self, index: int, item_id: int | None, node: str | None, *,
                    why: str, memory: bool = False) -> Conviction | None:
        """The worker running chunk ``index`` died while the chunk was on ``item_id`` at
        ``node`` (``None``: not known).

        A chunk running alone convicts its suspect (after ``alone_tries`` such deaths).
        Any other chunk is taken apart: the item becomes a suspect, the others go on as a
        new chunk, submitted first. With the item unknown nothing changes (Dask tries the
        task again; if the worker dies too often, :meth:`failed` splits the chunk).
        ``why`` describes the death for the suspect's log.
        """
        chunk = self.running.get(index)
        if chunk is None:
            return None
        if index == self._probe:
            self._probe = None
        self._outcomes = True
        entry = {"error": why, "delay_s": None}
        suspect = self.alone.get(index)
        if suspect is not None:
            del self.alone[index], self.running[index]
            suspect.alone += 1
            suspect.log.append(entry)
            suspect.node = node or suspect.node
            if suspect.alone >= self.alone_tries:
                return Conviction(suspect, suspect.node, memory)
            self.suspects.appendleft(suspect)
            return None
        position = next((k for k, i in enumerate(chunk.items) if i["item_id"] == item_id),
                        None) if item_id is not None else None
        if position is None:
            return None
        del self.running[index]
        rest = chunk.items[:position] + chunk.items[position + 1:]
        if rest:
            self.pending.appendleft(self._chunk(rest))
        suspect = Suspect(chunk.items[position], node, [entry])
        if self.alone_tries == 0:
            return Conviction(suspect, node, memory)
        self.suspects.append(suspect)
        return None

    # ------------------------------------------------------------------ breakers

    def _move(self, breaker: CircuitBreaker, transition: Callable[[], Any]) -> None:
        before = breaker.state
        transition()
        if breaker.state != before:
            self.changed.append(breaker)

    def _feed_breakers(self, summary: Any, *, probe: bool) -> None:
        for record in summary.failures:
            if counts_against_breaker(record.error_class):
                breaker = self.breakers.get(record.node_id)
                if breaker is None:
                    continue
                was = breaker.state
                self._move(breaker, lambda b=breaker, r=record: b.failure(
                    f"{r.error_type}: {r.error_message}"[:300]))
                if was == HALF_OPEN and breaker.state == OPEN:
                    self.stopped = breaker  # the probe failed: the node stays broken
        for (node, status), n in summary.counts.items():
            breaker = self.breakers.get(node)
            if breaker is not None and status == "ok" and n and breaker.state == HALF_OPEN:
                self._move(breaker, breaker.success)
        if probe:
            # a probe that never reached its node (it failed upstream) proves nothing:
            # the breaker opens again, and the next item probes at once (a few times)
            inconclusive = [b for b in self.breakers.values() if b.state == HALF_OPEN]
            for b in inconclusive:
                self._move(b, b.probe_inconclusive)
            self._inconclusive = self._inconclusive + 1 if inconclusive else 0
            if self._inconclusive >= self.MAX_INCONCLUSIVE:
                self.stopped = inconclusive[0]

    def seconds_to_probe(self) -> float | None:
        """Seconds until an open breaker may be probed (``None``: none is waiting)."""
        if self.stopped is not None or self.running:
            return None
        waiting = [b for b in self.breakers.values() if b.state == OPEN]
        return max(b.seconds_to_probe() for b in waiting) if waiting else None

    def _next_probe(self) -> list[list[Chunk]]:
        """With a breaker open: nothing until the chunks in flight are done and the
        cool-down is over, then one item alone, the probe."""
        if self.running:
            return []
        if self.held:  # held back by the breaker: they run once it has closed
            self.pending.extendleft(self._chunk(g) for g in reversed(self.held))
            self.held.clear()
        if not self.pending:
            self.stopped = self.open_breakers()[0]  # nothing left to probe with
            return []
        waiting = [b for b in self.breakers.values() if b.state == OPEN]
        if any(b.seconds_to_probe() > 0 for b in waiting):
            return []
        for b in waiting:
            self._move(b, b.ready_to_probe)
        taken = self.pending.popleft()
        probe = self._chunk(taken.items[:1])
        if len(taken) > 1:
            self.pending.appendleft(self._chunk(taken.items[1:]))
        self._probe = probe.index
        self.running[probe.index] = probe
        return [[probe]]

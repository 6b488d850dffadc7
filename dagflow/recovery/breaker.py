"""Circuit breakers: stop grinding a batch against a failing node or output target.

A :class:`CircuitBreaker` is *closed* while things work; after ``failures`` failures
within ``window`` seconds it *opens* and no more items are sent to its node; after
``cooldown`` seconds it is *half-open*: one probe is let through, and a success closes
it again while a failure opens it for good in this run. Bad inputs do not count: one
corrupt image says nothing about the health of a node, a full disk does.

The runtime keeps one breaker per node on the client. Its failures reach it as chunks
finish, a while after they happened, so each worker process also stops a node after
``failures`` consecutive failures of its own (:func:`consecutive_failures`), without
waiting for the client: a dead storage target costs a few attempts per worker, not a
million. Once the client's breaker of a node opens, every worker is told
(:func:`open_nodes`, set by the run loop's worker plugin): no further item reaches that
node, in the tasks already running as in those still queued.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "BreakerSettings", "CircuitBreaker",
           "consecutive_failures", "counts_against_breaker", "open_nodes"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"

#: In a worker process: per run id, the nodes whose breaker is open on the run's client.
_OPEN_NODES: dict[str, set[str]] = {}


#: In a worker process: per run id and node, its consecutive failures in this process.
_CONSECUTIVE: dict[tuple[str, str], list[int]] = {}


def consecutive_failures(run_id: str, node: str) -> list[int]:
    """This process's count of consecutive failures of ``node`` in run ``run_id``: a
    one-element list that every task of the node in this process shares and updates."""
    count = _CONSECUTIVE.get((run_id, node))
    if count is None:
        count = _CONSECUTIVE.setdefault((run_id, node), [0])
    return count


def open_nodes(run_id: str) -> set[str]:
    """The nodes of run ``run_id`` that no item may reach (a set changed in place, so
    that a task holding it sees a breaker open mid-chunk)."""
    nodes = _OPEN_NODES.get(run_id)
    if nodes is None:
        nodes = _OPEN_NODES.setdefault(run_id, set())
    return nodes


def counts_against_breaker(error_class: str | None) -> bool:
    """Whether a failure of this class says something about the node's health."""
    return error_class not in (None, "bad_input")


@dataclass(frozen=True)
class BreakerSettings:
    """When a breaker opens and how long it waits before probing."""

    failures: int = 10
    window: float = 60.0
    cooldown: float = 10.0

    @classmethod
    def from_config(cls, values: dict | None) -> BreakerSettings:
        values = values or {}
        return cls(failures=int(values.get("failures", 10)),
                   window=float(values.get("window", 60.0)),
                   cooldown=float(values.get("cooldown", 10.0)))


@dataclass
class CircuitBreaker:
    """The breaker of one node (or output target).

    Examples
    --------
    >>> b = CircuitBreaker("save", BreakerSettings(failures=2, window=10, cooldown=5),
    ...                    clock=iter(range(100)).__next__)
    >>> b.failure("disk full"); b.state
    'closed'
    >>> b.failure("disk full"); b.state
    'open'
    """

    name: str
    settings: BreakerSettings = field(default_factory=BreakerSettings)
    clock: Callable[[], float] = time.monotonic
    state: str = CLOSED
    opened_at: float = 0.0
    last_errors: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=5))
    transitions: list[tuple[str, str]] = field(default_factory=list)
    _failures: collections.deque[float] = field(default_factory=collections.deque)

    def _move(self, state: str, why: str) -> None:
        if state != self.state:
            self.transitions.append((state, why))
            self.state = state

    def failure(self, message: str = "") -> None:
        """One failure of this node."""
        now = self.clock()
        if message:
            self.last_errors.append(message)
        if self.state == HALF_OPEN:
            self.opened_at = now
            self._move(OPEN, "the probe failed")
            return
        self._failures.append(now)
        while self._failures and now - self._failures[0] > self.settings.window:
            self._failures.popleft()
        if self.state == CLOSED and len(self._failures) >= self.settings.failures:
            self.opened_at = now
            self._move(OPEN, f"{len(self._failures)} failures within "
                             f"{self.settings.window:g} s")

    def success(self) -> None:
        """One success of this node: a half-open breaker closes."""
        if self.state == HALF_OPEN:
            self._failures.clear()
            self._move(CLOSED, "the probe succeeded")

    def probe_inconclusive(self) -> None:
        """The probe never reached the node (it failed upstream): open again, ready to
        let the next item probe at once."""
        if self.state == HALF_OPEN:
            self._move(OPEN, "the probe did not reach the node")

    def ready_to_probe(self) -> bool:
        """An open breaker whose cool-down is over turns half-open and allows one probe."""
        if self.state == OPEN and self.clock() - self.opened_at >= self.settings.cooldown:
            self._move(HALF_OPEN, "cool-down over")
        return self.state == HALF_OPEN

    def seconds_to_probe(self) -> float:
        return max(0.0, self.opened_at + self.settings.cooldown - self.clock())

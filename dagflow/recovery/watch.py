"""Per-item deadlines over a loop of items, at no cost per item.

A hung op cannot be interrupted from Python (it may be stuck in a decoder's C code), so
a deadline can only be kept by not waiting for it. :func:`run_watched` runs the loop over
a chunk's items in one helper thread while the calling thread (the Dask task's) sleeps
until the current item's deadline. An item that overruns is abandoned with its thread:
the caller records its timeout and goes on with the next item in a fresh helper thread;
whatever the abandoned thread produces later is discarded. The abandoned threads still
running when the loop ends are returned: the caller decides what becomes of a process
that holds them (dagflow replaces the worker, :mod:`dagflow.recovery.recycle`).

One hand-over per chunk instead of one per item: handing every call to another thread and
back cost about 90 microseconds of CPU per item (two thread switches and the GIL passing
twice), more than a no-op item's own work.

This module runs inside tasks on workers; it imports no Dask.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["run_watched"]

T = TypeVar("T")
R = TypeVar("R")


def _no_restart() -> None:
    return None


class _Watch:
    """The loop's shared state: which item is running since when, and which thread owns it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.finished = threading.Event()
        self.index = 0
        self.since = time.monotonic()
        self.generation = 0
        self.error: BaseException | None = None

    def restart(self, generation: int) -> None:
        """A new attempt at the current item: its deadline starts again."""
        with self.lock:
            if self.generation == generation:
                self.since = time.monotonic()


def run_watched(
    items: Sequence[T],
    step: Callable[[T, Callable[[], None]], R],
    commit: Callable[[T, R], None],
    on_timeout: Callable[[T, float], None],
    timeout: float | None,
) -> list[threading.Thread]:
    """``commit(item, step(item, restart))`` for each item in order, each within ``timeout``.

    Parameters
    ----------
    items
        The items, in order.
    step
        The work for one item; must not change shared state (a step that overruns keeps
        running in its abandoned thread). It gets ``restart``, to call before each new
        attempt: the deadline then counts from that moment.
    commit
        Applies a step's result; called under the loop's lock, never for an abandoned step.
    on_timeout
        Called instead of ``commit`` (under the same lock) for an item whose step ran past
        ``timeout`` seconds, with the seconds it had run.
    timeout
        Seconds per item (per attempt, with ``restart``); ``None`` runs the loop in the
        calling thread with no deadline.

    Returns
    -------
    list of threading.Thread
        The threads of items that overran their deadline and were still running when
        the loop ended (empty when none overran).

    Raises
    ------
    BaseException
        Whatever ``step`` or ``commit`` raised (they are expected to record an item's
        errors themselves).

    Examples
    --------
    >>> out = []
    >>> run_watched([1, 2, 3], lambda x, restart: x * 10, lambda x, r: out.append(r),
    ...             lambda x, s: out.append("timeout"), timeout=5.0)
    []
    >>> out
    [10, 20, 30]
    """
    if timeout is None:
        for item in items:
            commit(item, step(item, _no_restart))
        return []
    if not items:
        return []
    watch = _Watch()
    threads: list[threading.Thread] = []
    abandoned: list[threading.Thread] = []
    context = contextvars.copy_context()  # ops may ask for their worker (a context var)

    def loop(generation: int, start: int) -> None:
        restart = lambda: watch.restart(generation)  # noqa: E731
        try:
            for i in range(start, len(items)):
                result = step(items[i], restart)
                with watch.lock:
                    if watch.generation != generation:
                        return
                    commit(items[i], result)
                    watch.index, watch.since = i + 1, time.monotonic()
                    if i + 1 == len(items):
                        watch.finished.set()
        except BaseException as exc:  # handed to the calling thread
            with watch.lock:
                if watch.generation == generation:
                    watch.error = exc
                    watch.finished.set()

    def spawn(generation: int, start: int) -> None:
        thread = threading.Thread(target=context.copy().run, args=(loop, generation, start),
                                  name="dagflow-items", daemon=True)
        threads.append(thread)
        thread.start()

    spawn(0, 0)
    while True:
        with watch.lock:
            remaining = watch.since + timeout - time.monotonic()
        if remaining > 0 and not watch.finished.wait(remaining):
            continue
        with watch.lock:
            if watch.finished.is_set():
                break
            elapsed = time.monotonic() - watch.since
            if elapsed < timeout:  # the item finished just now: a new deadline
                continue
            index = watch.index
            watch.generation += 1  # the running thread is abandoned
            abandoned.append(threads[-1])
            on_timeout(items[index], elapsed)
            watch.index, watch.since = index + 1, time.monotonic()
            if index + 1 == len(items):
                break
            generation = watch.generation
        spawn(generation, index + 1)
    if watch.error is not None:
        raise watch.error
    return [t for t in abandoned if t.is_alive()]

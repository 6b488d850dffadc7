"""Error classification, retry with backoff, and per-item timeouts.

Dask re-runs a failed task at once, whatever failed; dagflow decides per item and per
error. :func:`classify` maps an exception to its class (``bad_input``, ``transient``,
``timeout``, ``resource``, ``bug``); :func:`call_with_policy` runs one op call with the
node's :class:`RetryPolicy`: transient errors are retried with exponential backoff and
jitter, everything else is tried once, and a per-item timeout keeps a hung item from
hanging its task.

This module runs inside tasks on workers; it imports no Dask.
"""

from __future__ import annotations

import errno
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dagflow.exceptions import ItemError, ItemTimeoutError, TransientError

__all__ = ["ERROR_CLASSES", "Outcome", "RetryPolicy", "call_with_policy", "classify"]

ERROR_CLASSES = ("transient", "bad_input", "resource", "lost_worker", "timeout", "bug")

_TRANSIENT_ERRNOS = {
    errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
    errno.ECONNABORTED, errno.EPIPE, errno.ESTALE, errno.EHOSTUNREACH, errno.ENETUNREACH,
    errno.EBUSY, errno.EINTR,
}


@dataclass(frozen=True)
class RetryPolicy:
    """How a node retries an item.

    Parameters
    ----------
    attempts
        Tries in all (1 = no retry).
    delay
        Seconds before the first retry.
    multiplier
        Each further delay is the previous one times this.
    max_delay
        Cap on one delay.
    jitter
        Relative randomisation of each delay (0.25 = +/-25%), so that retries of many
        items do not hit a recovering service at the same instant.
    transient
        Extra exception types (or their qualified names) to treat as transient.
    """

    attempts: int = 3
    delay: float = 0.2
    multiplier: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.25
    transient: tuple[type[BaseException] | str, ...] = ()

    @classmethod
    def from_config(cls, overrides: Mapping[str, Any] | None,
                    defaults: Mapping[str, Any]) -> RetryPolicy:
        """Build from the configured defaults and a node's ``retry`` overrides."""
        merged = {**defaults, **(overrides or {})}
        on = merged.get("on") or ()
        return cls(
            attempts=int(merged.get("attempts", 3)),
            delay=float(merged.get("delay", 0.2)),
            multiplier=float(merged.get("multiplier", 2.0)),
            max_delay=float(merged.get("max-delay", 30.0)),
            jitter=float(merged.get("jitter", 0.25)),
            transient=tuple([on] if isinstance(on, str | type) else on),
        )

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based)."""
        base = min(self.delay * self.multiplier ** (attempt - 1), self.max_delay)
        spread = base * self.jitter
        return max(0.0, base + (rng or random).uniform(-spread, spread))

    def is_marked_transient(self, exc: BaseException) -> bool:
        for t in self.transient:
            if isinstance(t, str):
                names = {f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__}
                names |= {c.__qualname__ for c in type(exc).__mro__}
                if t in names:
                    return True
            elif isinstance(exc, t):
                return True
        return False


def classify(exc: BaseException, policy: RetryPolicy | None = None) -> str:
    """The error class of ``exc``: one of :data:`ERROR_CLASSES`.

    Examples
    --------
    >>> classify(TimeoutError()), classify(MemoryError()), classify(KeyError("x"))
    ('timeout', 'resource', 'bug')
    """
    if policy is not None and policy.is_marked_transient(exc):
        return "transient"
    if isinstance(exc, ItemError):
        return exc.error_class
    if isinstance(exc, MemoryError):
        return "resource"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionError):
        return "transient"
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return "transient"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "resource"  # a full disk or quota: the storage target, not the image
    if "OutOfMemory" in type(exc).__name__:  # cupy's and other allocators' OOM errors
        return "resource"
    return "bug"


@dataclass
class Outcome:
    """The result of one op call for one item."""

    value: Any = None
    error: BaseException | None = None
    error_class: str | None = None
    attempts: int = 1
    duration_s: float = 0.0
    #: CPU time of the thread that ran the op: far below ``duration_s`` means waiting (I/O).
    cpu_s: float = 0.0


class _ItemThread(threading.Thread):
    """Runs op calls, one at a time, for one calling thread (a worker's task thread).

    Handing a call over and back costs two lock releases, about a third of a
    ``ThreadPoolExecutor`` round trip with its future. A call that times out leaves its
    thread behind (it cannot be interrupted); the thread ends when the call returns. An
    idle thread ends within a second of the thread it served.
    """

    def __init__(self) -> None:
        super().__init__(name="dagflow-item", daemon=True)
        self.owner = threading.current_thread()
        self.go = threading.Lock()
        self.go.acquire()
        self.done = threading.Lock()
        self.done.acquire()
        self.fn: Callable[[], Any] | None = None
        self.result: tuple[Any, BaseException | None] = (None, None)
        self.abandoned = False
        self.start()

    def run(self) -> None:
        while True:
            if not self.go.acquire(timeout=1.0):
                if self.owner.is_alive():
                    continue
                return
            fn, self.fn = self.fn, None
            try:
                self.result = (fn(), None)  # type: ignore[misc]
            except BaseException as exc:  # handed to the caller, as a future would
                self.result = (None, exc)
            if self.abandoned:
                return
            self.done.release()


_ITEM_THREADS = threading.local()


def _call_once(fn: Callable[[], Any], timeout: float | None) -> Any:
    if timeout is None:
        return fn()
    runner: _ItemThread | None = getattr(_ITEM_THREADS, "runner", None)
    if runner is None:
        runner = _ITEM_THREADS.runner = _ItemThread()
    runner.fn = fn
    runner.go.release()
    if not runner.done.acquire(timeout=timeout):
        # The thread cannot be interrupted; it is abandoned and the batch goes on.
        runner.abandoned = True
        _ITEM_THREADS.runner = None
        raise ItemTimeoutError(f"no result after {timeout:g} s") from None
    (value, error), runner.result = runner.result, (None, None)
    if error is not None:
        raise error
    return value


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and the CPU time its thread spent on it (kept on an exception as ``cpu_s``)."""
    start = time.thread_time()
    try:
        return fn(), time.thread_time() - start
    except BaseException as exc:
        exc.cpu_s = time.thread_time() - start  # type: ignore[attr-defined]
        raise


def call_with_policy(
    fn: Callable[[], Any],
    policy: RetryPolicy,
    *,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Call ``fn`` for one item under ``policy``; never raises for an item's error.

    Transient errors (by :func:`classify`) are retried up to ``policy.attempts`` times
    with backoff; bad input, timeouts, bugs and resource errors are tried once here
    (resource errors are handled by the caller, e.g. by falling back to the CPU).
    """
    start = time.perf_counter()
    attempt = 0
    cpu = 0.0
    while True:
        attempt += 1
        try:
            value, used = _call_once(lambda: _timed(fn), timeout)
            return Outcome(value=value, attempts=attempt, duration_s=time.perf_counter() - start,
                           cpu_s=cpu + used)
        except Exception as exc:
            cpu += getattr(exc, "cpu_s", 0.0)
            error_class = classify(exc, policy)
            if error_class != "transient" or attempt >= policy.attempts:
                return Outcome(error=exc, error_class=error_class, attempts=attempt,
                               duration_s=time.perf_counter() - start, cpu_s=cpu)
            sleep(policy.backoff(attempt))


def as_transient(exc: BaseException) -> TransientError:
    """Wrap ``exc`` as a :class:`TransientError` (for ops that know a failure is temporary)."""
    err = TransientError(str(exc))
    err.__cause__ = exc
    return err

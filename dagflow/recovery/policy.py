"""Error classification, retry with backoff, and per-item timeouts.

Dask re-runs a failed task at once, whatever failed; dagflow decides per item and per
error. :func:`classify` maps an exception to its class (``bad_input``, ``transient``,
``timeout``, ``resource``, ``bug``); :func:`call_with_policy` runs one op call with the
node's :class:`RetryPolicy`: transient errors are retried with exponential backoff and
jitter, everything else is tried once, and a per-item timeout keeps a hung item from
hanging its task (:mod:`dagflow.recovery.watch`).

This module runs inside tasks on workers; it imports no Dask.
"""

from __future__ import annotations

import errno
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dagflow.exceptions import ItemError, ItemTimeoutError, TransientError
from dagflow.recovery.watch import run_watched

__all__ = ["ERROR_CLASSES", "Outcome", "RetryPolicy", "call_with_policy", "classify",
           "retry_after"]

ERROR_CLASSES = ("transient", "bad_input", "resource", "lost_worker", "timeout", "bug")

#: The storage refuses the write: full, over quota, read-only, not allowed.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}

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
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
        return "resource"  # a full, read-only or forbidden storage target, not the image
    if "OutOfMemory" in type(exc).__name__:  # cupy's and other allocators' OOM errors
        return "resource"
    return "bug"


@dataclass(slots=True)
class Outcome:
    """The result of one op call for one item."""

    value: Any = None
    error: BaseException | None = None
    error_class: str | None = None
    attempts: int = 1
    duration_s: float = 0.0
    #: CPU time of the thread that ran the op: far below ``duration_s`` means waiting (I/O).
    cpu_s: float = 0.0
    #: Each failed attempt of an item tried more than once: ``{"error", "delay_s"}``
    #: (the record's ``attempt_log``); ``None`` for an item tried once.
    log: list[dict[str, Any]] | None = None


def call_with_policy(
    fn: Callable[[], Any],
    policy: RetryPolicy,
    *,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    restart: Callable[[], None] | None = None,
) -> Outcome:
    """Call ``fn`` for one item under ``policy``; never raises for an item's error.

    Transient errors (by :func:`classify`) are retried up to ``policy.attempts`` times
    with backoff; bad input, timeouts, bugs and resource errors are tried once here
    (resource errors are handled by the caller, e.g. by falling back to the CPU).

    Parameters
    ----------
    fn
        The op call for the item.
    policy
        The node's retry policy.
    timeout
        Seconds per attempt, kept by running the call in a helper thread
        (:func:`~dagflow.recovery.watch.run_watched`). A loop over many items passes
        ``restart`` instead and watches the whole loop once.
    sleep
        How to wait between attempts.
    restart
        Called before each retry: a watched loop restarts the item's deadline (its first
        attempt's deadline started when the loop reached the item).
    """
    if timeout is not None:
        outcome: list[Outcome] = []

        def timed_out(_: Any, elapsed: float) -> None:
            error = ItemTimeoutError(f"no result after {timeout:g} s")
            outcome.append(Outcome(error=error, error_class="timeout", duration_s=elapsed))

        run_watched([fn], lambda f, again: call_with_policy(f, policy, sleep=sleep,
                                                            restart=again),
                    lambda _, out: outcome.append(out), timed_out, timeout)
        return outcome[0]
    # called once per item and node: the clocks are read inline, the happy path builds
    # nothing but its Outcome (the item loop inlines this first attempt: see execute._step)
    start = time.perf_counter()
    begun = time.thread_time()
    try:
        value = fn()
    except Exception as exc:
        return retry_after(exc, fn, policy, start, time.thread_time() - begun,
                           sleep=sleep, restart=restart)
    cpu = time.thread_time() - begun
    return Outcome(value, None, None, 1, time.perf_counter() - start, cpu)


def retry_after(
    exc: Exception,
    fn: Callable[[], Any],
    policy: RetryPolicy,
    start: float,
    cpu: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    restart: Callable[[], None] | None = None,
) -> Outcome:
    """What :func:`call_with_policy` does once a first attempt, begun at ``start``
    (:func:`time.perf_counter`) and having used ``cpu`` seconds, raised ``exc``: retry it
    if it is transient, else (or when the attempts run out) the failed :class:`Outcome`."""
    wall, thread_cpu = time.perf_counter, time.thread_time
    attempt = 1
    log: list[dict[str, Any]] = []
    while True:
        error_class = classify(exc, policy)
        if error_class != "transient" or attempt >= policy.attempts:
            if log:  # tried more than once: every attempt is kept
                log.append({"error": _describe(exc), "delay_s": None})
            return Outcome(error=exc, error_class=error_class, attempts=attempt,
                           duration_s=wall() - start, cpu_s=cpu, log=log or None)
        delay = policy.backoff(attempt)
        log.append({"error": _describe(exc), "delay_s": round(delay, 6)})
        sleep(delay)
        attempt += 1
        if restart is not None:  # a new attempt: its deadline counts from now
            restart()
        begun = thread_cpu()
        try:
            value = fn()
        except Exception as next_exc:
            cpu += thread_cpu() - begun
            exc = next_exc
        else:
            cpu += thread_cpu() - begun
            return Outcome(value, None, None, attempt, wall() - start, cpu, log)


def _describe(exc: BaseException) -> str:
    """An attempt's error for the record: ``Type: message``, at most 500 characters."""
    return f"{type(exc).__name__}: {exc}"[:500]


def as_transient(exc: BaseException) -> TransientError:
    """Wrap ``exc`` as a :class:`TransientError` (for ops that know a failure is temporary)."""
    err = TransientError(str(exc))
    err.__cause__ = exc
    return err

"""How dagflow's processes take signals.

* The process that drives a run (``dagflow run``, a submitted run's driver) takes SIGTERM,
  the way batch systems and Kubernetes end a job, as it takes Ctrl-C
  (:func:`sigterm_as_interrupt`): the run records its interruption and closes its
  cluster instead of vanishing mid-write (what finished is recorded either way; the same
  command resumes the rest). The command line also silences Dask's shutdown chatter
  once stopped.
* The embedded cluster's worker processes ignore SIGINT (:func:`dask_setup`, a
  ``distributed`` preload that :func:`~dagflow.runtime.cluster.start_local_cluster`
  adds): Ctrl-C in a terminal signals the whole foreground process group, and the driver,
  which stops the run and closes them, is the one to handle it; the workers need not each
  print a ``KeyboardInterrupt`` traceback.
"""

from __future__ import annotations

import _thread
import contextlib
import functools
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["SHUTDOWN_LOGGERS", "Terminated", "dask_setup", "sigterm_as_interrupt", "stopping"]


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: stops what runs as Ctrl-C does (``except KeyboardInterrupt``)."""


#: Loggers whose messages while a stopped run closes its cluster are only noise: a
#: future cancelled mid-wait, a task's result never retrieved, workers lost on the way.
SHUTDOWN_LOGGERS = ("distributed", "tornado", "asyncio")


#: Set once the exception a stop signal raised has reached code that stops (a run's
#: cleanup, the command's exit); until then the signal is raised again.
_acknowledged = threading.Event()
#: Seconds between raising a stop signal and raising it again, unacknowledged.
AGAIN_AFTER_S = 2.0


def stopping() -> None:
    """Acknowledge that a stop signal's exception arrived where it stops the work."""
    _acknowledged.set()


def _again_unless_acknowledged(signum: int) -> None:
    # Python drops an exception raised in a garbage-collection callback or a __del__
    # method ("Exception ignored in ..."): a signal that lands there would be lost
    if not _acknowledged.wait(AGAIN_AFTER_S):
        if hasattr(signal, "pthread_kill"):  # a real signal also ends a blocking wait
            signal.pthread_kill(threading.main_thread().ident, signum)
        else:
            _thread.interrupt_main(signum)


def _stop(error: type[KeyboardInterrupt], quiet: bool) -> Any:
    def handler(signum: int, frame: Any) -> None:
        if quiet:
            for name in SHUTDOWN_LOGGERS:
                logging.getLogger(name).setLevel(logging.CRITICAL)
        _acknowledged.clear()
        threading.Thread(target=_again_unless_acknowledged, args=(signum,), daemon=True,
                         name="dagflow-stop-signal").start()
        raise error()

    return handler


@contextlib.contextmanager
def sigterm_as_interrupt(*, quiet: bool = False) -> Iterator[None]:
    """Within this block, SIGTERM raises :class:`Terminated` in the main thread.

    Parameters
    ----------
    quiet
        Also take SIGINT, and on either signal silence :data:`SHUTDOWN_LOGGERS` for the
        rest of the process before raising (for a command that exits once stopped).

    The exception is raised again every :data:`AGAIN_AFTER_S` seconds until
    :func:`stopping` acknowledges it (Python drops one raised inside a garbage-collection
    callback). The previous handlers are restored after (the block may run inside a
    larger program). Outside the main thread, where handlers cannot be set, it does
    nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _stop(Terminated, quiet))}
    if quiet:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, _stop(KeyboardInterrupt, True))
    unraisable = sys.unraisablehook
    sys.unraisablehook = functools.partial(_drop_stops, unraisable)
    try:
        yield
    except KeyboardInterrupt:
        stopping()
        raise
    finally:
        sys.unraisablehook = unraisable
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _drop_stops(hook: Any, unraisable: Any) -> None:
    """``sys.unraisablehook`` without the stop signals it would print: they are raised
    again (:func:`_again_unless_acknowledged`)."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        hook(unraisable)


def dask_setup(worker: Any) -> None:
    """Ignore SIGINT in this worker process (its event loop runs in the main thread)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)

"""How dagflow's processes take signals.

* The process that drives a run (``dagflow run``, a submitted run's driver) takes SIGTERM,
  the way batch systems and Kubernetes end a job, as it takes Ctrl-C
  (:func:`sigterm_as_interrupt`): the run records its interruption and closes its
  cluster instead of vanishing mid-write (what finished is recorded either way; the same
  command resumes the rest).
* The embedded cluster's worker processes ignore SIGINT (:func:`dask_setup`, a
  ``distributed`` preload that :func:`~dagflow.runtime.cluster.start_local_cluster`
  adds): Ctrl-C in a terminal signals the whole foreground process group, and the driver,
  which stops the run and closes them, is the one to handle it; the workers need not each
  print a ``KeyboardInterrupt`` traceback.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["Terminated", "dask_setup", "sigterm_as_interrupt"]


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: stops what runs as Ctrl-C does (``except KeyboardInterrupt``)."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated("SIGTERM")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within this block, SIGTERM raises :class:`Terminated` in the main thread.

    The previous handler is restored after (the block may run inside a larger program).
    Outside the main thread, where handlers cannot be set, it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def dask_setup(worker: Any) -> None:
    """Ignore SIGINT in this worker process (its event loop runs in the main thread)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)

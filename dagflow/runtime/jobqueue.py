"""Batch-system clusters (dask-jobqueue): the first worker job is checked, not retried.

dask-jobqueue submits worker jobs (``sbatch``, ``qsub``, ``bsub``...) from its scaling
loop. When a submission fails (the command is not installed, the partition or the
account is unknown, the memory asked for exists on no node) it logs the error and
submits again a few seconds later, for ever: a run would wait for workers that never
come. So every dask-jobqueue cluster that dagflow starts gets a job class whose
submissions report to a :class:`SubmissionWatch`; the first worker job is submitted when
the cluster starts, and if the batch system refuses it the cluster is closed and
:class:`~dagflow.exceptions.ClusterStartError` says what the batch system said. Once
one job was accepted the setup is right, and later submissions are dask-jobqueue's to
retry. (An adaptive cluster may cancel that first job while it has no work yet, and
submit again when the work comes.)

This module imports neither dask_jobqueue (the job class comes from the profile's
cluster class) nor the rest of the runtime.
"""

from __future__ import annotations

import logging
import re
import shlex
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from distributed.core import Status

from dagflow.exceptions import ClusterStartError

__all__ = ["FIRST_SUBMISSION_TIMEOUT", "SubmissionWatch", "job_class", "quiet_failed_submission",
           "submission_command", "submit_first_job"]

logger = logging.getLogger(__name__)

#: Seconds to wait for the batch system to answer the first submission; a busy
#: controller that answers later is not an error (the run waits for its workers).
FIRST_SUBMISSION_TIMEOUT = 60.0


class SubmissionWatch(logging.Filter):
    """What became of the first worker job a cluster submitted.

    Also a logging filter: the failed submission, which dagflow reports itself, is kept
    out of the event loop's log (tornado logs the exception of the scaling task that
    dask-jobqueue starts and never awaits).

    Parameters
    ----------
    command
        The submission command (``sbatch``, ``qsub``...), named in messages.
    """

    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command
        self.job_id: str | None = None
        self.error: BaseException | None = None
        self._answered = threading.Event()

    def submitted(self, job_id: str | None) -> None:
        """A job was accepted (called in the cluster's event loop)."""
        if not self._answered.is_set():
            self.job_id = job_id
            self._answered.set()

    def failed(self, error: BaseException) -> None:
        """A submission failed (called in the cluster's event loop)."""
        if not self._answered.is_set():
            self.error = error
            self._answered.set()

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop the record of the failed submission (reported by dagflow instead)."""
        return self.error is None or not (record.exc_info and record.exc_info[1] is self.error)

    def wait(self, timeout: float) -> bool:
        """Wait for the first answer; whether there was one within ``timeout`` seconds."""
        return self._answered.wait(timeout)

    def message(self) -> str:
        """The failure in one line: what the batch system said (its lines joined by ';')."""
        error = self.error
        missing = (f"{self.command!r} was not found on PATH: is this a login node of the "
                   "batch system, with its commands installed?")
        if isinstance(error, FileNotFoundError):
            return missing
        # dask-jobqueue's RuntimeError: "...Exit code: N\nCommand:...stdout:\n...stderr:\n..."
        text = str(error)
        output = re.search(r"\nstdout:\n(.*)\nstderr:\n(.*)", text, re.S)
        code = re.search(r"Exit code: (-?\d+)", text)
        said = (output.group(2).strip() or output.group(1).strip()) if output else text.strip()
        if code and code.group(1) == "127" and not said:  # through a shell: not found
            return missing
        status = f" (exit code {code.group(1)})" if code else ""
        lines = "; ".join(line.strip() for line in said.splitlines() if line.strip())
        return f"{self.command}{status} said: {lines or 'nothing'}"


def job_class(job_cls: type, watch: SubmissionWatch) -> type:
    """``job_cls`` (a dask-jobqueue job class) reporting its submissions to ``watch``."""

    class WatchedJob(job_cls):  # type: ignore[misc,valid-type]
        async def start(self) -> None:
            try:
                await super().start()
            except Exception as exc:
                watch.failed(exc)
                self.status = Status.failed  # so that closing the cluster accepts it
                raise
            watch.submitted(getattr(self, "job_id", None))

    WatchedJob.__name__ = WatchedJob.__qualname__ = job_cls.__name__
    WatchedJob.__module__ = job_cls.__module__
    return WatchedJob


def submission_command(job_cls: type) -> str:
    """The batch system's submission command of a dask-jobqueue job class (``sbatch``)."""
    command = getattr(job_cls, "submit_command", None) or "the submission command"
    return shlex.split(command)[0] if command.strip() else command


#: Where the event loop logs the exception of a task nobody awaited.
_LOOP_LOGGERS = ("tornado.application", "asyncio")


@contextmanager
def quiet_failed_submission(watch: SubmissionWatch) -> Iterator[None]:
    """Keep the first failed submission out of the event loop's log while the cluster
    lives (it is logged when the scaling task is released, at any moment)."""
    loggers = [logging.getLogger(name) for name in _LOOP_LOGGERS]
    for log in loggers:
        log.addFilter(watch)
    try:
        yield
    finally:
        for log in loggers:
            log.removeFilter(watch)


def submit_first_job(cluster: Any, watch: SubmissionWatch, *, where: str,
                     timeout: float | None = None) -> None:
    """Submit one worker job and wait for the batch system's answer.

    Parameters
    ----------
    cluster
        A dask-jobqueue cluster whose job class reports to ``watch``.
    where
        What the cluster is, for the message (the profile's name and file).
    timeout
        Seconds to wait for an answer (default :data:`FIRST_SUBMISSION_TIMEOUT`); without
        one the run goes on and waits for its workers (a warning says so).

    Raises
    ------
    ClusterStartError
        The batch system refused the job, or its command is missing.
    """
    timeout = FIRST_SUBMISSION_TIMEOUT if timeout is None else timeout
    cluster.scale(jobs=1)
    if not watch.wait(timeout):
        logger.warning("%s: %s has not answered within %g s; the run waits for its "
                       "workers", where, watch.command, timeout)
        return
    if watch.error is not None:
        raise ClusterStartError(f"{where}: the first worker job could not be submitted: "
                                f"{watch.message()}")
    logger.info("%s: worker job %s submitted", where, watch.job_id)

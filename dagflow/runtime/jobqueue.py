"""Batch-system clusters (dask-jobqueue): the first worker job is checked, not retried,
and worker jobs are watched until their workers connect.

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

A job the batch system accepted can still fail to give a worker: a bad option on the
worker command, a prologue that fails, no Python environment on the compute node. Its
job runs and ends, and the run would wait for ever. So, for Slurm, PBS and LSF, the
jobs report to :class:`WorkerJobs` too, which asks the batch system every few seconds
(:mod:`dagflow.runtime.batchjobs`) about the jobs whose workers have not connected:

- a job that *ended* without its worker connecting, or that has *run* for
  ``dagflow.cluster.worker-connect-timeout`` seconds without it, stops the run while no
  worker is connected (every task of the cluster's scheduler is cancelled, and
  :class:`~dagflow.exceptions.ClusterStartError` names the job, its state and exit
  code, and the last lines of its error log); while other workers serve the run it is a
  warning;
- a job *queued* is no error (it may wait hours): the run says that it waits, for which
  jobs and why (the scheduler's reason), once and then every few minutes.

Jobs that the cluster itself cancelled (scaling down) are left alone. This module
imports neither dask_jobqueue (the job class comes from the profile's cluster class)
nor the rest of the runtime.
"""

from __future__ import annotations

import logging
import re
import shlex
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from distributed.core import Status
from distributed.diagnostics.plugin import SchedulerPlugin

from dagflow import config
from dagflow.exceptions import ClusterStartError
from dagflow.runtime.batchjobs import (
    ENDED,
    QUEUED,
    RUNNING,
    BatchSystem,
    JobState,
    for_job_class,
    job_logs,
    log_tail,
    query,
)

__all__ = ["FIRST_SUBMISSION_TIMEOUT", "QUEUE_REPORT_INTERVAL", "SubmissionWatch", "WorkerJobs",
           "job_class", "quiet_failed_submission", "submission_command", "submit_first_job",
           "worker_jobs"]

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


def job_class(job_cls: type, watch: SubmissionWatch, jobs: WorkerJobs | None = None) -> type:
    """``job_cls`` (a dask-jobqueue job class) reporting its submissions to ``watch``, and
    each job it submits and cancels to ``jobs``."""

    class WatchedJob(job_cls):  # type: ignore[misc,valid-type]
        async def start(self) -> None:
            try:
                await super().start()
            except Exception as exc:
                watch.failed(exc)
                self.status = Status.failed  # so that closing the cluster accepts it
                raise
            job_id = getattr(self, "job_id", None)
            watch.submitted(job_id)
            if jobs is not None and job_id:
                jobs.submitted(str(job_id), str(self.name),
                               getattr(self, "log_directory", None))

        async def close(self) -> None:
            job_id = getattr(self, "job_id", None)
            if jobs is not None and job_id:
                jobs.closed(str(job_id))  # the cluster's own doing, not a failure
            await super().close()

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


#: Seconds between two "the run waits for queued jobs" messages.
QUEUE_REPORT_INTERVAL = 300.0
#: The longest wait between two looks while every job watched is queued (the interval
#: doubles from ``dagflow.cluster.job-poll-interval`` up to this).
MAX_POLL_INTERVAL = 60.0


@dataclass
class _Job:
    """A submitted worker job, as :class:`WorkerJobs` follows it."""

    job_id: str
    name: str  # dask-jobqueue's worker name: its workers are `name` or `name-<i>`
    submitted: float
    log_directory: str | None = None
    state: JobState | None = None  # the last answer about it
    running_since: float | None = None
    connected: bool = False
    closed: bool = False
    failed: bool = False

    def runs(self, worker_name: str) -> bool:
        """Whether ``worker_name`` is one of this job's workers."""
        return worker_name == self.name or worker_name.startswith(f"{self.name}-")


@dataclass
class Review:
    """What one look at the jobs found: new failures, the jobs still queued, and how many
    others run (or are not known yet)."""

    failures: list[str] = field(default_factory=list)
    queued: list[JobState] = field(default_factory=list)
    running: int = 0


class WorkerJobs:
    """The worker jobs of one dask-jobqueue cluster, until their workers connect.

    Told of every job submitted and cancelled by the cluster's job class
    (:func:`job_class`), and of every worker that joins or leaves by a scheduler plugin;
    :meth:`watching` asks the batch system about the jobs whose workers have not
    connected, every ``dagflow.cluster.job-poll-interval`` seconds, and stops the run when
    one has failed to give a worker while none serves the run.

    Parameters
    ----------
    system
        The batch system the jobs are in.
    where
        What the cluster is, for messages (the profile's name and file).
    connect_timeout, poll_interval
        Default to ``dagflow.cluster.worker-connect-timeout`` and
        ``dagflow.cluster.job-poll-interval`` (seconds).
    """

    def __init__(self, system: BatchSystem, *, where: str, connect_timeout: float | None = None,
                 poll_interval: float | None = None) -> None:
        self.system = system
        self.where = where
        self.connect_timeout = float(config.resolve(connect_timeout,
                                                    "cluster.worker-connect-timeout"))
        self.poll_interval = float(config.resolve(poll_interval, "cluster.job-poll-interval"))
        #: Why the run was stopped (one line), once it was.
        self.failure: str | None = None
        self._jobs: dict[str, _Job] = {}
        self._joined: set[str] = set()  # every worker name that ever connected
        self._workers: set[str] = set()  # the addresses of the workers connected now
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._queued_said: float | None = None
        self._cannot_ask = False

    # -- what the job class and the scheduler say ------------------------------------------

    def submitted(self, job_id: str, name: str, log_directory: str | None = None,
                  now: float | None = None) -> None:
        """The batch system accepted job ``job_id``, whose workers are named ``name``."""
        job = _Job(job_id, name, time.monotonic() if now is None else now, log_directory)
        with self._lock:
            job.connected = any(job.runs(w) for w in self._joined)
            self._jobs[job_id] = job

    def closed(self, job_id: str) -> None:
        """The cluster cancelled job ``job_id`` itself (scaling down, closing)."""
        with self._lock:
            if job_id in self._jobs:
                self._jobs[job_id].closed = True

    def worker_joined(self, address: str, name: str) -> None:
        """A worker connected to the scheduler."""
        with self._lock:
            self._joined.add(name)
            self._workers.add(address)
            for job in self._jobs.values():
                if not job.connected and job.runs(name):
                    job.connected = True

    def worker_left(self, address: str) -> None:
        """A worker left the scheduler."""
        with self._lock:
            self._workers.discard(address)

    # -- looking -------------------------------------------------------------------------

    def waiting(self) -> list[str]:
        """The jobs to ask about: submitted, not cancelled by the cluster, no worker yet."""
        with self._lock:
            return [j.job_id for j in self._jobs.values()
                    if not (j.connected or j.closed or j.failed)]

    def review(self, states: Mapping[str, JobState], now: float) -> Review:
        """Take in the batch system's answer about :meth:`waiting` jobs (``states``: those
        it knows) at time ``now`` (``time.monotonic()``); the failures found are new ones."""
        review = Review()
        with self._lock:
            for job in self._jobs.values():
                if job.connected or job.closed or job.failed:
                    continue
                state = states.get(job.job_id)
                gone = state is None and job.state is not None  # it ended and was forgotten
                if state is not None:
                    job.state = state
                    if state.phase == RUNNING and job.running_since is None:
                        job.running_since = now
                why = self._why_failed(job, state, gone, now)
                if why:
                    job.failed = True
                    review.failures.append(why + self._log_of(job))
                elif state is not None and state.phase == QUEUED:
                    review.queued.append(state)
                else:
                    review.running += 1
        return review

    def _why_failed(self, job: _Job, state: JobState | None, gone: bool,
                    now: float) -> str | None:
        timeout = self.connect_timeout
        if state is not None and state.phase == ENDED:
            return (f"worker job {job.job_id} ended ({state.describe()}) before its worker "
                    "connected to the scheduler")
        if gone:
            assert job.state is not None
            return (f"worker job {job.job_id} is gone from {self.system.name} (last seen "
                    f"{job.state.describe()}) and its worker never connected to the scheduler")
        if state is not None and state.phase == RUNNING and job.running_since is not None \
                and now - job.running_since >= timeout:
            return (f"worker job {job.job_id} has been running for {now - job.running_since:.0f}"
                    f" s and its worker has not connected to the scheduler "
                    f"(dagflow.cluster.worker-connect-timeout: {timeout:g} s)")
        if state is None and now - job.submitted >= timeout:
            return (f"worker job {job.job_id} is unknown to {self.system.name} "
                    f"{now - job.submitted:.0f} s after it was submitted, and its worker has "
                    "not connected to the scheduler")
        return None

    def _log_of(self, job: _Job) -> str:
        """``; <path> ends: <its last lines>``, or why that cannot be said."""
        path = job.state.error_log if job.state is not None else ""
        if not path:
            found = job_logs(job.log_directory, job.job_id)
            path = str(found[0]) if found else ""
        if not path:
            return ("; no error log is known for it (a log_directory in the cluster profile "
                    "keeps one)")
        try:
            tail = log_tail(path)
        except OSError as exc:
            return f"; its error log {path} cannot be read here ({exc.strerror or exc})"
        return f"; {path} ends: {tail}" if tail else f"; its error log {path} is empty"

    def look(self, now: float | None = None) -> float:
        """Ask the batch system about the jobs waiting for their workers, and act on the
        answer: stop the run, warn, or say why jobs wait. Returns the seconds until the
        next look."""
        now = time.monotonic() if now is None else now
        ids = self.waiting()
        if not ids or self._cannot_ask:
            return self.poll_interval
        try:
            states = query(self.system, ids)
        except (OSError, RuntimeError) as exc:
            self._cannot_ask = True  # a site without the command: the run simply waits
            logger.warning("%s: cannot ask %s about its worker jobs (%s); the run waits for "
                           "their workers", self.where, self.system.name, exc)
            return self.poll_interval
        review = self.review(states, now)
        with self._lock:
            serving = len(self._workers)
        if review.failures:
            if not serving and self.failure is None:
                more = len(review.failures) - 1
                self.failure = review.failures[0] + (
                    f" (and {more} more worker job{'s' if more > 1 else ''} alike)" if more
                    else "")
            else:
                for message in review.failures:
                    logger.warning("%s: %s; the run goes on with the %d workers connected",
                                   self.where, message, serving)
        if review.queued and not serving and self.failure is None and (
                self._queued_said is None or now - self._queued_said >= QUEUE_REPORT_INTERVAL):
            self._queued_said = now
            logger.warning("%s: the run waits for %s", self.where,
                           _queued_line(review.queued, self.system.name))
        if review.queued and not review.running and not review.failures:
            return MAX_POLL_INTERVAL  # only queued jobs: a slower look, doubled below
        return self.poll_interval

    @contextmanager
    def watching(self, cluster: Any) -> Iterator[None]:
        """Watch ``cluster``'s worker jobs while the block runs; an error that ends the
        block after the watch stopped the run becomes :class:`ClusterStartError`.

        Raises
        ------
        ClusterStartError
            A worker job failed to give a worker while none was connected.
        """
        scheduler = getattr(cluster, "scheduler", None)
        if scheduler is None or not callable(getattr(scheduler, "add_plugin", None)):
            yield  # a scheduler out of this process: nothing to follow it with
            return
        cluster.sync(_follow_workers, scheduler, _WorkerNames(self))
        thread = threading.Thread(target=self._run, args=(cluster,), daemon=True,
                                  name="dagflow-worker-jobs")
        thread.start()
        try:
            yield
        except Exception as exc:
            if self.failure is not None:
                raise ClusterStartError(f"{self.where}: {self.failure}") from exc
            raise
        finally:
            self._stop.set()
            thread.join(timeout=5)

    def _run(self, cluster: Any) -> None:
        delay = self.poll_interval
        while not self._stop.wait(delay):
            try:
                wanted = self.look()
                if self.failure is not None and not self._stop.is_set():
                    # every task is cancelled, and again while the run submits more
                    cluster.loop.add_callback(_cancel_everything, cluster.scheduler,
                                              self.failure)
            except Exception:  # a bug here, or a loop closed under it: not the run's end
                logger.exception("%s: watching the worker jobs failed", self.where)
                return
            if self.failure is not None:
                delay = self.poll_interval
            elif wanted > self.poll_interval:
                delay = min(max(delay, self.poll_interval) * 2, wanted)
            else:
                delay = wanted


def _queued_line(queued: list[JobState], system: str) -> str:
    """``2 worker jobs queued in Slurm: 245 (JobHeldUser), 246 (Priority)``."""
    shown = ", ".join(f"{s.job_id} ({s.reason or s.state})" for s in queued[:5])
    more = f" and {len(queued) - 5} more" if len(queued) > 5 else ""
    jobs = "worker job" if len(queued) == 1 else "worker jobs"
    return f"{len(queued)} {jobs} queued in {system}: {shown}{more}"


class _WorkerNames(SchedulerPlugin):
    """Tells :class:`WorkerJobs` which workers connect and leave (in the scheduler)."""

    name = "dagflow-worker-jobs"

    def __init__(self, jobs: WorkerJobs) -> None:
        self.jobs = jobs

    def add_worker(self, scheduler: Any, worker: str) -> None:
        ws = scheduler.workers.get(worker)
        if ws is not None:
            self.jobs.worker_joined(worker, str(ws.name))

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        self.jobs.worker_left(worker)


async def _follow_workers(scheduler: Any, plugin: _WorkerNames) -> None:
    """Install ``plugin`` in the scheduler's event loop, with the workers already there."""
    scheduler.add_plugin(plugin, name=plugin.name)
    for address in list(scheduler.workers):
        plugin.add_worker(scheduler, address)


def _cancel_everything(scheduler: Any, message: str) -> None:
    """Cancel every task any client of ``scheduler`` wants, ``message`` their error (key
    by key: one that the scheduler cannot cancel does not keep the others)."""
    for client in list(scheduler.clients.values()):
        for ts in list(client.wants_what):
            try:
                scheduler.stimulus_cancel([ts.key], client.client_key, force=True,
                                          reason="worker jobs failed", msg=message)
            except Exception as exc:  # e.g. a dependent that no client wants
                logger.debug("could not cancel %s: %r", ts.key, exc)


def worker_jobs(job_cls: type, *, where: str) -> WorkerJobs | None:
    """A :class:`WorkerJobs` for the jobs of ``job_cls``, or ``None`` where dagflow cannot
    ask their batch system about them."""
    system = for_job_class(job_cls)
    return WorkerJobs(system, where=where) if system is not None else None

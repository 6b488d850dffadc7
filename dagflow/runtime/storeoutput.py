"""A run into an output on a store (``s3://bucket/out``): its lock, its staged state.

:func:`store_output` holds, for the length of a run, what a local output directory gives
by itself: the lock (:class:`~dagflow.runtime.storelock.StoreLock`, taken first: its
conditional write is also the first request to the store, so a missing bucket or refused
credentials stop the run there, in one line, before anything starts), the run state as
a local copy uploaded as the run goes (:class:`~dagflow.io.stage.StagedState`), and the
cleaning of what a killed run left: multipart uploads never completed, the store's
counterpart of temporary files.

:func:`staged_view` gives ``dagflow status`` and ``dagflow report`` a local copy of an
output's state to read.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from dagflow import config
from dagflow.io.redact import redact_url
from dagflow.io.stage import StagedState
from dagflow.io.storage import is_remote
from dagflow.io.upload import abort_pending_uploads
from dagflow.runtime.storelock import StoreLock

__all__ = ["remote_run_dir", "staged_view", "store_output"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def store_output(output: str, run_id: str, *, wait: bool | float | None = None
                 ) -> Iterator[Path]:
    """Hold ``output``'s lock and a staged copy of its state; yields the local directory
    that stands for the output in the run's state code (its ``_dagflow`` is the copy).

    Raises
    ------
    StorageError
        No such bucket, credentials missing or refused, a store without conditional
        writes: before anything runs.
    OutputLockedError
        Another run holds the output.
    """
    lock = StoreLock(output, run_id, wait=wait)
    lock.acquire()
    try:
        stage = StagedState(output, str(config.get("state-dir")))
        try:
            stage.pull()
            aborted = abort_pending_uploads(output + "/", older_than=datetime.now(UTC))
            if aborted:
                logger.info("aborted %d unfinished uploads under %s left by an "
                            "interrupted run", aborted, redact_url(output))
            stage.start_pushing()
            yield stage.root
        except BaseException:
            stage.close()  # what the run recorded before it stopped is uploaded
            raise
        stage.close()
    finally:
        lock.release()


def remote_run_dir(output: str, run_id: str) -> str:
    """The URL of a run's directory in an output on a store."""
    return f"{output.rstrip('/')}/{config.get('state-dir')}/runs/{run_id}"


@contextlib.contextmanager
def staged_view(path: str | os.PathLike[str]) -> Iterator[Path]:
    """``path`` as a local directory to read a run's state from: itself when local;
    for an output on a store (or one of its run directories), a copy of its state,
    removed afterwards.

    Raises
    ------
    StorageError
        No such bucket; credentials missing or refused.
    """
    text = os.fspath(path)
    if not is_remote(text):
        yield Path(text)
        return
    text = text.rstrip("/")
    state_dir = str(config.get("state-dir"))
    marker = f"/{state_dir}/runs/"
    output, _, run = text.partition(marker)
    stage = StagedState(output, state_dir)
    try:
        stage.pull()
        yield stage.root / state_dir / "runs" / run if run else stage.root
    finally:
        stage.close(push=False)

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
from typing import Any

from dagflow import config
from dagflow.io.redact import redact_url
from dagflow.io.stage import StagedState
from dagflow.io.storage import is_remote
from dagflow.io.upload import abort_pending_uploads
from dagflow.runtime.storelock import StoreLock, read_store_holder

__all__ = [
    "check_store_run",
    "remote_path",
    "remote_run_dir",
    "run_status_and_lock",
    "staged_view",
    "store_output",
    "store_records",
]

logger = logging.getLogger(__name__)


def check_store_run(workflow: Any, output: str) -> None:
    """Refuse, before anything starts, what a run into a store cannot do yet.

    Raises
    ------
    ConfigError
        The workflow has an aggregate node: its partials and its output are local files.
    """
    from dagflow.exceptions import ConfigError
    from dagflow.ops.registry import get_op

    aggregates = [n.id for n in workflow.nodes if get_op(n.op).kind == "aggregate"]
    if aggregates:
        raise ConfigError(f"aggregate nodes ({', '.join(aggregates)}) cannot write into an "
                          f"output on a store ({redact_url(output)}) yet: write this "
                          "workflow's output to a local or shared directory")


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
            try:
                stage.close()  # what the run recorded before it stopped is uploaded
            except Exception as exc:  # never hide how the run ended
                logger.error("%s", exc)
            raise
        stage.close()
    finally:
        lock.release()


def remote_run_dir(output: str, run_id: str) -> str:
    """The URL of a run's directory in an output on a store."""
    return f"{output.rstrip('/')}/{config.get('state-dir')}/runs/{run_id}"


def _split(url: str) -> tuple[str, str]:
    """An output's URL, and the run id when ``url`` names one of its run directories."""
    marker = f"/{config.get('state-dir')}/runs/"
    output, _, run = url.rstrip("/").partition(marker)
    return output, run


@contextlib.contextmanager
def staged_view(path: str | os.PathLike[str], *, write_back: bool = False
                ) -> Iterator[Path]:
    """``path`` as a local directory to read a run's state from: itself when local;
    for an output on a store (or one of its run directories), a copy of its state,
    removed afterwards (what was written into it uploaded first with ``write_back``:
    a report).

    Raises
    ------
    StorageError
        No such bucket; credentials missing or refused.
    """
    text = os.fspath(path)
    if not is_remote(text):
        yield Path(text)
        return
    output, run = _split(text)
    state_dir = str(config.get("state-dir"))
    stage = StagedState(output, state_dir)
    ok = False
    try:
        stage.pull()
        yield stage.root / state_dir / "runs" / run if run else stage.root
        ok = True
    finally:
        stage.close(push=write_back and ok)


def remote_path(url: str, local: Path, path: str | os.PathLike[str]) -> str:
    """Where ``path``, a file of :func:`staged_view`'s copy ``local`` of ``url``, is on
    the store (``path`` itself when it lies outside the copy)."""
    output, run = _split(url)
    root = local.parents[2] if run else local
    try:
        relative = Path(path).relative_to(root)
    except ValueError:
        return os.fspath(path)
    return f"{output}/{relative.as_posix()}"


def store_records(run_url: str, schema: Any) -> Any:
    """The records parts of a run on a store as a ``pyarrow.dataset.Dataset`` read
    through fsspec (an empty one when it has none)."""
    import pyarrow.dataset as ds

    from dagflow.io.storage import filesystem, list_objects

    records = f"{run_url.rstrip('/')}/records"
    fs, path = filesystem(records)
    # pyarrow opens each part after fsspec's isfile(), which answers from a listing of
    # the folder cached during the run, before its last parts were written
    fs.invalidate_cache(path)
    parts = [url for url, _ in list_objects(f"{records}/") if url.endswith(".parquet")]
    return ds.dataset([filesystem(url)[1] for url in parts], format="parquet",
                      schema=schema, filesystem=fs)


def run_status_and_lock(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any] | None]:
    """``dagflow status``'s figures for a run directory or an output, local or on a
    store: the :class:`~dagflow.recovery.status.RunStatus` (its ``run_dir`` the run's
    URL for a store) and who holds the output's lock (``None``: nobody)."""
    from dagflow.recovery.status import run_status
    from dagflow.runtime.lock import describe_holder, holder_alive, lock_status

    text = os.fspath(path)
    if not is_remote(text):
        return run_status(text), lock_status(text)
    with staged_view(text) as local:
        state = run_status(local)
    output, _ = _split(text)
    state.run_dir = remote_run_dir(output, state.run_id)
    found = read_store_holder(output)
    if found is None:
        return state, None
    holder = found[0]
    shown = {k: v for k, v in holder.items() if k != "token"}
    return state, {**shown, "alive": holder_alive(holder),
                   "description": describe_holder(holder),
                   "path": redact_url(f"{output}/{config.get('state-dir')}/lock")}

"""The run's event log: one JSON object per line in ``events.jsonl``.

Events (run started, chunks submitted and finished, checkpoint parts written, breaker
transitions, run finished) are appended and flushed as they happen, so that after a
crash ``dagflow status`` can tell what was in flight. A torn last line, left by a kill
mid-write, is ignored by :func:`read_events`. On Linux the log keeps some room reserved
on its disk beyond its end (``fallocate`` without changing its size), so that a disk
that fills up mid-run still takes the events that say so.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dagflow.exceptions import StorageError

__all__ = ["EventLog", "latest_run_dir", "read_events", "started_at"]

#: Bytes kept reserved on the disk beyond the log's end.
RESERVE = 64 * 1024
_KEEP_SIZE = 1  # FALLOC_FL_KEEP_SIZE


@functools.cache
def _fallocate() -> object | None:
    try:
        call = ctypes.CDLL(None, use_errno=True).fallocate  # Linux
    except (AttributeError, OSError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return call


def _reserve(fd: int) -> None:
    """Keep :data:`RESERVE` bytes allocated beyond the file's end (best effort)."""
    call = _fallocate()
    if call is not None:
        with contextlib.suppress(OSError):
            call(fd, _KEEP_SIZE, os.fstat(fd).st_size, RESERVE)  # type: ignore[operator]


class EventLog:
    """Append-only writer of a run's events.

    Parameters
    ----------
    path
        The ``events.jsonl`` file; created if missing, appended to otherwise.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (long-lived)
        self._lock = threading.Lock()
        _reserve(self._file.fileno())

    def emit(self, event: str, **fields: Any) -> None:
        """Append one event with a timestamp.

        Raises
        ------
        StorageError
            The log could not be written (a full or read-only disk).
        """
        line = json.dumps({"t": time.time(), "event": event, **fields}, default=str)
        with self._lock:
            if not self._file.closed:
                try:
                    self._file.write(line + "\n")
                    self._file.flush()
                except OSError as exc:
                    raise StorageError.from_os_error(exc, self.path) from None
                _reserve(self._file.fileno())

    def close(self) -> None:
        """Flush the log to the disk and close it (a disk that refuses is ignored here:
        the run has already said so)."""
        with self._lock:
            if not self._file.closed:
                try:
                    self._file.flush()
                    os.fsync(self._file.fileno())
                except OSError:
                    pass
                finally:
                    with contextlib.suppress(OSError):
                        self._file.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The events of a log, skipping a torn or garbled line."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        return


def started_at(run_dir: str | os.PathLike[str]) -> float | None:
    """When the run of ``run_dir`` started (its first event's time); ``None`` without one.

    The order of runs, for "the latest run": a file's modification time says when it was
    last copied (a run's state fetched from a store), and two run ids of one second sort
    by their random part.
    """
    for event in read_events(Path(run_dir) / "events.jsonl"):
        t = event.get("t")
        return float(t) if isinstance(t, int | float) else None
    return None


def latest_run_dir(runs: str | os.PathLike[str]) -> Path | None:
    """The run directory under ``runs`` that started last; ``None`` when there is none.

    Runs without an event log come first, by name (a run id begins with its start time).
    """
    runs = Path(runs)
    found = [p for p in runs.iterdir() if p.is_dir()] if runs.is_dir() else []
    if not found:
        return None
    return max(found, key=lambda p: (started_at(p) or 0.0, p.name))

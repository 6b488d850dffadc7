"""The run's event log: one JSON object per line in ``events.jsonl``.

Events (run started, chunks submitted and finished, checkpoint parts written, breaker
transitions, run finished) are appended and flushed as they happen, so that after a
crash ``dagflow status`` can tell what was in flight. A torn last line, left by a kill
mid-write, is ignored by :func:`read_events`.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dagflow.exceptions import StorageError

__all__ = ["EventLog", "read_events"]


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

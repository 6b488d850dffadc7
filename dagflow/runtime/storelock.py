"""One run per output prefix on a store: a lock object made by a conditional write.

The counterpart of :class:`~dagflow.runtime.lock.OutputLock` for an output on a store
(``s3://bucket/out``), with the same settings (``dagflow.lock.*``) and the same record
(run id, pid, host, since when). The object ``<output>/_dagflow/lock`` is created with
``If-None-Match: *``: of two runs that start together the store lets exactly one create
it. Its holder rewrites it every ``dagflow.lock.heartbeat`` seconds with ``If-Match`` on
the version it wrote last (so it notices at once a lock that is no longer its own), and
gives it back with a conditional delete, so a successor's lock is never removed.

A crash leaves the object. It is taken as stale on evidence: a holder on this machine
whose process is gone, or a lock not rewritten for ``dagflow.lock.stale-after`` seconds
(by the store's own time of the object; ``null`` never); a stale lock is taken over by
a conditional replace of the version found, so two runs that find it stale do not both
take it. A store on which dagflow knows no conditional write is refused, saying so.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Mapping
from typing import Any

from dagflow.io.redact import redact_url
from dagflow.io.storage import ObjectStat, read_range, stat
from dagflow.io.upload import delete_if_match, put_if_absent, put_if_match
from dagflow.runtime.lock import (
    LOCK_FILE,
    _identity,
    _Settings,
    describe_holder,
    holder_alive,
    wait_to_take,
)

__all__ = ["StoreLock", "read_store_holder"]

logger = logging.getLogger(__name__)


def _lock_url(output: str, state_dir: str | None) -> str:
    if state_dir is None:
        from dagflow import config

        state_dir = str(config.get("state-dir"))
    return f"{output.rstrip('/')}/{state_dir}/{LOCK_FILE}"


def read_store_holder(output: str, *, state_dir: str | None = None
                      ) -> tuple[dict[str, Any], ObjectStat] | None:
    """The lock object's record and stat (``None``: not locked)."""
    url = _lock_url(output, state_dir)
    found = stat(url, missing_ok=True)
    if found is None:
        return None
    try:
        holder = json.loads(read_range(url, 0, None))
        if not isinstance(holder, dict):
            raise ValueError("not a record")
    except Exception as exc:  # another version's record, a damaged object
        holder = {"unreadable": f"{type(exc).__name__}: {exc}"}
    return holder, found


class StoreLock:
    """The lock object of one output on a store, held by one run; a context manager.

    Parameters
    ----------
    output
        The output's URL (``s3://bucket/out``).
    run_id
        The run that takes it.
    wait
        As :class:`~dagflow.runtime.lock.OutputLock`'s: ``None`` uses ``dagflow.lock.wait``.
    state_dir
        The state directory's name (``dagflow.state-dir``).

    Raises
    ------
    StorageError
        From :meth:`acquire`: ``unsupported`` where the store gives no conditional
        write; no such bucket; credentials missing or refused.
    """

    def __init__(self, output: str, run_id: str, *, wait: bool | float | None = None,
                 state_dir: str | None = None) -> None:
        self.output = output.rstrip("/")
        self.url = _lock_url(self.output, state_dir)
        self.run_id = run_id
        self.settings = _Settings.from_config(wait)
        self.token = secrets.token_hex(8)
        self.etag: str | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _record(self) -> bytes:
        return json.dumps(_identity(self.run_id, self.token)).encode()

    def acquire(self) -> None:
        """Take the lock, waiting for its holder as configured.

        Raises
        ------
        OutputLockedError
            Naming the holder, when it is held and not to be waited for (or no longer).
        """
        wait_to_take(self._try, self.settings, self._message, redact_url(self.output))
        if self.settings.heartbeat > 0:
            self._beat = threading.Thread(target=self._heartbeat, daemon=True,
                                          name="dagflow-store-lock-heartbeat")
            self._beat.start()

    def _try(self) -> dict[str, Any] | None:
        """Take the lock if it is free or stale; else return its holder."""
        written = put_if_absent(self.url, self._record())
        if written is not None:
            self.etag = written.etag
            return None
        found = read_store_holder(self.output)
        if found is None:  # given back meanwhile: try again at once
            return self._try()
        holder, current = found
        if self._stale(holder, current) and current.etag:
            taken = put_if_match(self.url, self._record(), current.etag)
            if taken is not None:
                logger.warning("took over the lock of %s from %s: stale",
                               redact_url(self.output), describe_holder(holder))
                self.etag = taken.etag
                return None
        return holder

    def _stale(self, holder: Mapping[str, Any], current: ObjectStat) -> bool:
        if "unreadable" not in holder and holder_alive(holder) is False:
            return True  # on this machine, its process is gone
        stale_after = self.settings.stale_after
        if stale_after is None or current.mtime_ns is None:
            return False
        return time.time() - current.mtime_ns / 1e9 > stale_after

    def _message(self, holder: Mapping[str, Any]) -> str:
        stale = self.settings.stale_after
        text = (f"the output {redact_url(self.output)} is in use by "
                f"{describe_holder(holder)}: one run per output. Wait for it "
                "(--wait-for-lock, or dagflow.lock.wait), or write elsewhere")
        if stale is not None:
            text += f"; its lock counts as stale after {stale:g} s without a refresh"
        return text + f". If you know that run has ended, delete {redact_url(self.url)}"

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat):
            etag = self.etag
            if etag is None:
                return
            try:
                renewed = put_if_match(self.url, self._record(), etag)
            except Exception as exc:  # a store that fails now: try again next time
                logger.warning("could not refresh the lock of %s: %s",
                               redact_url(self.output), exc)
                continue
            if renewed is None:
                logger.error("the lock of %s is no longer this run's: another run may be "
                             "writing there", redact_url(self.output))
                self.etag = None
                return
            self.etag = renewed.etag

    def release(self) -> None:
        """Give the lock back (only if it is still this run's version)."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
            self._beat = None
        etag, self.etag = self.etag, None
        if etag is None:
            return
        try:
            delete_if_match(self.url, etag)
        except Exception as exc:  # never hide how the run ended
            logger.error("could not release the lock %s: %s", redact_url(self.url), exc)

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

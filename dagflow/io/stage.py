"""A run's state on a store, worked on through a local copy.

dagflow's state (``<output>/_dagflow``: record parts, event logs, quarantine lists,
summaries, the history) is written and read by code that knows files: atomic renames,
appends, memory-mapped tables. On a store none of that exists, so a run into
``s3://bucket/out/`` works on a *staged* copy: :class:`StagedState` downloads
``<output>/_dagflow`` into a local directory before the run (what a resume reads), and
uploads what the run writes there back as objects, each whole (one PUT), while the run
goes on (every ``dagflow.storage.state-push-interval`` seconds: a run that dies loses at
most that much of its records, and its items run again) and once more at its end. Each
file is uploaded again only when it changed, several at once (a run's end has a dozen
or more: its last record parts, events, summary, metrics). Nothing else of dagflow
needs to know: the state code works on a local directory, the outputs go to the store.

The staged directory holds a mark naming the store's URL (:func:`store_of`), so that
what checks outputs against records (``dagflow status``) checks them on the store.

Workers write their chunks' record parts into the staged directory where they see it
(the embedded cluster, workers on the driver's machine), and straight to the store
elsewhere (:func:`part_location`); the driver fetches those (:func:`fetch_run_records`)
before it reads the run's records at its end, when a chunk's summary said its part went
to the store (otherwise there is nothing to fetch, and no listing is asked for).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dagflow.io.atomic import TEMP_PATTERN
from dagflow.io.redact import redact_url
from dagflow.io.storage import as_local, filesystem, is_remote, list_objects
from dagflow.io.upload import put_object

__all__ = ["MARK", "StagedState", "fetch_run_records", "output_location", "part_location",
           "store_of"]

logger = logging.getLogger(__name__)

#: The file in a staged directory that names the store it is a copy of.
MARK = ".dagflow-store"
#: Files of the state never copied either way: the in-flight table is shared memory of
#: one run, read by nobody else; the lock object is its run's (``StoreLock``), and local
#: lock files have no meaning on a store.
_LOCAL_ONLY = frozenset({"inflight.bin", MARK, "lock", "lock.guard"})


#: Objects a push uploads at once.
_PUSH_CONCURRENCY = 8

#: The staged copies in use in this process, by their local state directory.
_ACTIVE: dict[str, StagedState] = {}


def part_location(output: str, state_dir: str, run_id: str, part: str) -> str:
    """Where a worker writes a records part ``part`` (a path in the run's local copy
    ``state_dir``): there when this machine sees the copy, else the part's object on
    the store ``output``."""
    if os.path.isdir(os.path.dirname(part)):
        return part
    name = os.path.basename(part)
    return f"{output}/{os.path.basename(state_dir)}/runs/{run_id}/records/{name}"


def fetch_run_records(state_dir: str | os.PathLike[str], run_id: str) -> int:
    """Download the records parts of run ``run_id`` that workers wrote straight to the
    store into the local copy ``state_dir`` (nothing for a state that is not a copy);
    returns the parts fetched."""
    stage = _ACTIVE.get(os.fspath(state_dir))
    if stage is None:
        return 0
    return stage.pull(f"runs/{run_id}/records", missing_only=True)


def output_location(output: str | os.PathLike[str]) -> str | Path:
    """An output as a run keeps it: a store's URL as given (without a trailing ``/``),
    a local directory as an absolute path."""
    text = os.fspath(output)
    if is_remote(text):
        return text.rstrip("/")
    return Path(os.path.abspath(as_local(text)))


def store_of(local_root: str | os.PathLike[str]) -> str | None:
    """The store's URL that ``local_root`` is a staged copy of, else ``None``."""
    try:
        with open(os.path.join(local_root, MARK), encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


class StagedState:
    """``<url>/<state_dir>`` copied into a local directory, and uploaded back.

    Parameters
    ----------
    url
        The output on the store (``s3://bucket/out``).
    state_dir
        The state's sub-directory name (``dagflow.state-dir``).
    push_interval
        Seconds between two uploads while :meth:`pushing`; ``None`` reads
        ``dagflow.storage.state-push-interval``.
    storage_options
        Storage options over ``dagflow.storage.options``.

    Attributes
    ----------
    root
        The local directory standing for the output: ``root / state_dir`` is the copy.
    """

    def __init__(self, url: str, state_dir: str = "_dagflow", *,
                 push_interval: float | None = None,
                 storage_options: Mapping[str, Any] | None = None) -> None:
        from dagflow import config

        self.url = url.rstrip("/")
        self.state_dir = state_dir
        self.options = storage_options
        self.push_interval = float(config.get("storage.state-push-interval", 5)
                                   if push_interval is None else push_interval)
        self.root = Path(tempfile.mkdtemp(prefix="dagflow-state-"))
        (self.root / MARK).write_text(self.url + "\n", encoding="utf-8")
        self._sent: dict[str, tuple[int, int]] = {}
        self._push_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        _ACTIVE[os.fspath(self.local_state)] = self

    @property
    def local_state(self) -> Path:
        return self.root / self.state_dir

    def pull(self, under: str = "", *, missing_only: bool = False) -> int:
        """Download the state (or its ``under`` sub-directory) from the store; returns
        the objects copied (only those the copy lacks with ``missing_only``).

        Raises
        ------
        StorageError
            No such bucket; credentials missing or refused: before anything runs.
        """
        prefix = "/".join(p for p in (self.url, self.state_dir, under.strip("/")) if p)
        found = list_objects(prefix + "/", self.options)
        if not found:
            return 0
        fs, _ = filesystem(self.url, self.options)
        remote, local = [], []
        cut = len(self.url) + 1
        for object_url, _stat in found:
            relative = object_url[cut:]
            if os.path.basename(relative) in _LOCAL_ONLY or ".." in relative.split("/"):
                continue
            target = self.root / relative
            if missing_only and target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            remote.append(filesystem(object_url, self.options)[1])
            local.append(os.fspath(target))
        if not local:
            return 0
        from dagflow.io.errors import storage_errors

        with storage_errors(prefix, action="read", options=self.options):
            fs.get(remote, local)  # concurrent requests (s3fs is asynchronous)
        for path in local:
            st = os.stat(path)
            self._sent[os.path.relpath(path, self.root)] = (st.st_size, st.st_mtime_ns)
        logger.debug("staged %d objects of %s", len(local), redact_url(prefix))
        return len(local)

    def push(self) -> int:
        """Upload every file of the local copy that is new or changed since it was last
        uploaded (or downloaded), up to ``_PUSH_CONCURRENCY`` at once, each whole (one
        PUT); returns the files uploaded.

        Raises
        ------
        StorageError, TransientError
            From the store; what was not uploaded is tried again by the next push.
        """
        with self._push_lock:
            changed = []
            for directory, _dirs, files in os.walk(self.local_state):
                for name in sorted(files):
                    if name in _LOCAL_ONLY or TEMP_PATTERN.match(name):
                        continue
                    path = os.path.join(directory, name)
                    relative = os.path.relpath(path, self.root)
                    try:
                        st = os.stat(path)
                    except FileNotFoundError:  # replaced or removed meanwhile
                        continue
                    if self._sent.get(relative) != (st.st_size, st.st_mtime_ns):
                        changed.append((relative, path))
            if len(changed) <= 1:
                return sum(self._upload(relative, path) for relative, path in changed)
            # each object is a request of its own: they go together, not one by one
            with ThreadPoolExecutor(min(len(changed), _PUSH_CONCURRENCY),
                                    thread_name_prefix="dagflow-state-put") as pool:
                futures = [pool.submit(self._upload, relative, path)
                           for relative, path in changed]
            failed = [f.exception() for f in futures if f.exception() is not None]
            if failed:  # what was not uploaded is tried again by the next push
                raise failed[0]
            return sum(f.result() for f in futures)

    def _upload(self, relative: str, path: str) -> bool:
        """Upload one file of the copy as it is now; whether it was there to upload."""
        try:
            st = os.stat(path)
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:  # replaced or removed meanwhile
            return False
        put_object(f"{self.url}/{Path(relative).as_posix()}", data,
                   storage_options=self.options)
        self._sent[relative] = (st.st_size, st.st_mtime_ns)
        return True

    def start_pushing(self) -> None:
        """Upload the changes every :attr:`push_interval` seconds, in a thread, until
        :meth:`close`."""
        if self._thread is not None or self.push_interval <= 0:
            return

        def loop() -> None:
            while not self._stop.wait(self.push_interval):
                try:
                    self.push()
                except Exception as exc:  # the final push says it, if it still fails
                    logger.warning("could not upload the run's state to %s yet: %s",
                                   redact_url(self.url), exc)

        self._thread = threading.Thread(target=loop, name="dagflow-state-push", daemon=True)
        self._thread.start()

    def close(self, *, push: bool = True) -> None:
        """Stop the pushing thread, upload what is left (unless ``push`` is false), and
        remove the local copy (kept, and said where, when the upload fails)."""
        self._stop.set()
        _ACTIVE.pop(os.fspath(self.local_state), None)
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if push:
            try:
                self.push()
            except BaseException:
                logger.error("the run's state could not be uploaded to %s: its local copy "
                             "is kept in %s", redact_url(self.url), self.root)
                raise
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> StagedState:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.close()

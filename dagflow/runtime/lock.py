"""One run per output directory: a lock that survives crashes and shared file systems.

Two runs into one output directory would both execute every item and write over each
other's outputs and records. A run (``dagflow run``, the driver of ``dagflow submit``,
``dagflow.run``) therefore holds ``<output>/_dagflow/lock`` from before its run
directory is made until it ends; a second one exits 2 naming the holder (run id,
process, host, since when), or waits for it (``--wait-for-lock``, ``dagflow.lock.wait``).

How, and why so:

* **The lock file is the record**, JSON: run id, pid, host, the process's start time,
  the machine's boot id and pid namespace, since when. It is created complete and
  atomically: written under a temporary name, then hard-linked to ``lock``
  (``link(2)`` fails if the name exists, atomically on local file systems and over
  NFS, where the classic "``O_EXCL`` is not atomic" caveat of NFSv2 does not reach it,
  and a reader never sees a half-written record). Where hard links are not supported
  it falls back to ``O_CREAT | O_EXCL``.
* **A lock is never released by the kernel** (as ``fcntl``/``flock`` locks are when their
  process dies): such locks are local-only or silently ineffective on some shared file
  systems (NFS mounted ``nolock``, Lustre's ``localflock``), where two hosts would both
  "hold" them. A file is visible to every host that sees the output directory.
* **A crash leaves the file; it is broken only on evidence.** On the same machine
  (same host name, boot and pid namespace): the holder's process no longer exists, or
  its pid now belongs to a process started at another time (pid reuse). The same host
  name after a reboot (another boot id): no process survives a reboot. On another host
  the process cannot be checked: the holder refreshes the file's modification time
  every ``dagflow.lock.heartbeat`` seconds, and only a lock not refreshed for
  ``dagflow.lock.stale-after`` seconds, measured on the file system's own clock (a
  probe file's time, not this host's clock, so clock skew between hosts does not
  count), is taken as stale; ``null`` never breaks it. Otherwise the error says which
  file to delete when you know the holder is gone.
* **Breaking is serialised** by an ``flock`` on ``lock.guard`` (held for milliseconds,
  never while a run runs), so two processes that find the same stale lock do not both
  take it. Where the file system refuses ``flock`` the check goes on unguarded (a
  narrow race between two processes breaking one stale lock at the same moment).

This module imports no Dask.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagflow.exceptions import OutputLockedError

__all__ = ["LOCK_FILE", "OutputLock", "check_unlocked", "describe_holder", "holder_alive",
           "lock_status", "read_holder", "wait_to_take"]

logger = logging.getLogger(__name__)

LOCK_FILE = "lock"
GUARD_FILE = "lock.guard"
_GUARD_WAIT_S = 10.0


# --------------------------------------------------------------------------- who we are


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        try:
            import psutil

            return f"boot-{int(psutil.boot_time())}"
        except Exception:
            return None


def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _process_started(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), ``None`` if it does not exist."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:  # exists, but not ours to look at
        return -1.0


def _identity(run_id: str, token: str) -> dict[str, Any]:
    pid = os.getpid()
    return {"run_id": run_id, "pid": pid, "host": socket.gethostname(),
            "process_started": _process_started(pid), "boot_id": _boot_id(),
            "pid_namespace": _pid_namespace(), "since": time.time(), "token": token,
            "command": " ".join(sys.argv)[:500]}


# --------------------------------------------------------------------------- the record


def _lock_path(output: str | os.PathLike[str], state_dir: str | None) -> Path:
    if state_dir is None:
        from dagflow import config

        state_dir = str(config.get("state-dir"))
    return Path(output) / state_dir / LOCK_FILE


def read_holder(output: str | os.PathLike[str], *, state_dir: str | None = None
                ) -> dict[str, Any] | None:
    """What the output directory's lock says about its holder (``None``: not locked).

    An unreadable record (another version's, a damaged file) gives ``{"unreadable": ...}``
    with the file's modification time.
    """
    return _read(_lock_path(output, state_dir))


def _read(path: Path) -> dict[str, Any] | None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:  # e.g. ELOOP: a symlink planted at the lock's name
        return {"unreadable": f"{type(exc).__name__}: {exc}", "mtime": None}
    try:
        with os.fdopen(fd, "rb") as f:
            mtime = os.fstat(f.fileno()).st_mtime
            data = f.read(65536)
    except OSError as exc:
        return {"unreadable": str(exc), "mtime": None}
    try:
        holder = json.loads(data)
        if not isinstance(holder, dict):
            raise ValueError("not a mapping")
    except ValueError as exc:
        return {"unreadable": f"not a lock record ({exc})", "mtime": mtime}
    holder["mtime"] = mtime
    return holder


def _same_machine(holder: Mapping[str, Any]) -> bool:
    return (holder.get("host") == socket.gethostname()
            and holder.get("pid_namespace") == _pid_namespace())


#: How much older than this machine's boot a lock of its host name must be to count as
#: left from before the reboot: a live holder refreshes it every heartbeat (30 s), so a
#: recent one may be another machine's of the same name.
_REBOOT_MARGIN_S = 120.0


def holder_alive(holder: Mapping[str, Any]) -> bool | None:
    """Whether the lock's holder still runs: ``True``, ``False``, or ``None`` when this
    machine cannot tell (another host, another pid namespace, an unreadable record)."""
    if "unreadable" in holder or not _same_machine(holder):
        return None
    boot = _boot_id()
    if boot is not None and holder.get("boot_id") not in (None, boot):
        # this host name booted again since the lock was taken, and the lock has not been
        # refreshed since: no process survives a reboot (a lock refreshed since belongs
        # to another machine of the same name, and is left to its heartbeat)
        import psutil

        mtime = holder.get("mtime")
        if isinstance(mtime, int | float) and mtime < psutil.boot_time() - _REBOOT_MARGIN_S:
            return False
        return None
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return None
    started = _process_started(pid)
    if started is None:
        return False
    recorded = holder.get("process_started")
    # a pid now used by a process started at another time: the holder is gone
    return not (started >= 0 and isinstance(recorded, int | float)
                and abs(started - recorded) > 1.0)


def _filesystem_now(directory: Path) -> float | None:
    """The file system's clock: the modification time of a file made now."""
    probe = directory / f".lock-clock-{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                     | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            return os.fstat(fd).st_mtime
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError:
        return None


def _stale(holder: Mapping[str, Any], path: Path, stale_after: float | None
           ) -> str | None:
    """Why the lock may be broken, or ``None`` while there is no evidence it is stale."""
    alive = holder_alive(holder)
    if alive is True:
        return None
    if alive is False:
        return (f"its process {holder.get('pid')} on {holder.get('host')} no longer "
                "exists")
    if stale_after is None or holder.get("mtime") is None:
        return None
    now = _filesystem_now(path.parent)
    if now is None:
        return None
    silent = now - float(holder["mtime"])
    if silent > stale_after:
        return (f"it has not been refreshed for {silent:.0f} s (more than "
                f"dagflow.lock.stale-after, {stale_after:g} s)")
    return None


def describe_holder(holder: Mapping[str, Any]) -> str:
    """One line about a lock's holder: run, process, host, since when, whether it runs."""
    if "unreadable" in holder:
        return f"an unreadable lock ({holder['unreadable']})"
    since = holder.get("since")
    when = ""
    if isinstance(since, int | float):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
        when = f", since {stamp} ({_ago(time.time() - since)} ago)"
    alive = holder_alive(holder)
    state = {True: "running", False: "no longer running",
             None: "on another host: not checkable from here"}[alive]
    return (f"run {holder.get('run_id')} (pid {holder.get('pid')} on "
            f"{holder.get('host')}{when}; {state})")


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --------------------------------------------------------------------------- taking it


@contextlib.contextmanager
def _guard(directory: Path) -> Iterator[bool]:
    """Hold ``lock.guard`` exclusively while the lock is checked, taken or broken.

    Yields whether it is held (``False`` where the file system refuses ``flock``).
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield False
        return
    fd = os.open(directory / GUARD_FILE, os.O_RDWR | os.O_CREAT
                 | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        deadline = time.monotonic() + _GUARD_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise OutputLockedError(
                        f"{directory / GUARD_FILE} has been held for more than "
                        f"{_GUARD_WAIT_S:g} s by another process checking the lock") from None
                time.sleep(0.01)
            except OSError as exc:  # ENOLCK, EOPNOTSUPP: no locks on this file system
                logger.debug("no flock on %s (%s): checking the lock unguarded",
                             directory, exc)
                yield False
                return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _create(path: Path, record: Mapping[str, Any]) -> bool:
    """Create ``path`` holding ``record`` if it does not exist; whether it was created."""
    data = json.dumps(record, indent=2, default=str).encode()
    tmp = path.with_name(f".{path.name}.{record['token']}.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            # over NFS a lost reply to a link that succeeded reads as "exists"
            return os.stat(tmp).st_nlink == 2
        except OSError:  # no hard links here: create it exclusively instead
            try:
                out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                              | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except FileExistsError:
                return False
            with os.fdopen(out, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@dataclass
class _Settings:
    wait: float | None  # seconds to wait for the holder; None: for ever; 0: not at all
    poll: float
    heartbeat: float
    stale_after: float | None

    @classmethod
    def from_config(cls, wait: bool | float | None = None) -> _Settings:
        from dagflow import config

        wait = config.resolve(wait, "lock.wait")
        if wait is True:
            seconds: float | None = None
        elif wait is False or wait is None:
            seconds = 0.0
        else:
            seconds = float(wait)
        stale = config.get("lock.stale-after")
        return cls(seconds, float(config.get("lock.poll-interval")),
                   float(config.get("lock.heartbeat")),
                   None if stale is None else float(stale))


def wait_to_take(take: Callable[[], dict[str, Any] | None], settings: _Settings,
                 message: Callable[[dict[str, Any]], str], output: str) -> None:
    """Call ``take`` until it takes a lock (returns ``None`` rather than the holder),
    waiting as ``settings`` say and saying once whom for.

    Raises
    ------
    OutputLockedError
        With ``message(holder)``, when the lock is not to be waited for (or no longer).
    """
    deadline = None if settings.wait is None else time.monotonic() + settings.wait
    said = False
    while (holder := take()) is not None:
        if deadline is not None and time.monotonic() >= deadline:
            raise OutputLockedError(message(holder), holder)
        if not said:
            logger.warning("waiting for %s to finish with %s", describe_holder(holder), output)
            said = True
        time.sleep(settings.poll)


class OutputLock:
    """The lock of one output directory, held by one run; a context manager.

    Parameters
    ----------
    output
        The output directory (its state directory is made if missing).
    run_id
        The run that takes it (named to whoever finds it held).
    wait
        Wait for a holder to finish: ``True`` for as long as it takes, a number of
        seconds, ``False`` not at all; ``None`` uses ``dagflow.lock.wait``.
    state_dir
        The state directory's name (``dagflow.state-dir``).

    Examples
    --------
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> with OutputLock(out, "run-1"):
    ...     read_holder(out)["run_id"]
    'run-1'
    >>> read_holder(out) is None
    True
    """

    def __init__(self, output: str | os.PathLike[str], run_id: str, *,
                 wait: bool | float | None = None, state_dir: str | None = None) -> None:
        self.path = _lock_path(output, state_dir)
        self.output = Path(output)
        self.run_id = run_id
        self.settings = _Settings.from_config(wait)
        self.token = secrets.token_hex(8)
        self.held = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lock, waiting for its holder as configured.

        Raises
        ------
        OutputLockedError
            Naming the holder, when it is held and not to be waited for (or no longer).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        wait_to_take(self._try, self.settings, self._message, str(self.output))
        self.held = True
        if self.settings.heartbeat > 0:
            self._beat = threading.Thread(target=self._heartbeat, daemon=True,
                                          name="dagflow-lock-heartbeat")
            self._beat.start()

    def _try(self) -> dict[str, Any] | None:
        """Take the lock if it is free or stale; else return its holder."""
        with _guard(self.path.parent):
            for _ in range(3):  # a holder may release it between the two looks
                if _create(self.path, _identity(self.run_id, self.token)):
                    return None
                holder = _read(self.path)
                if holder is not None:
                    break
            else:
                return {"unreadable": "taken and released again and again", "mtime": None}
            why = _stale(holder, self.path, self.settings.stale_after)
            if why is None:
                return holder
            logger.warning("breaking the lock of %s left by %s: %s", self.output,
                           describe_holder(holder), why)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            if _create(self.path, _identity(self.run_id, self.token)):
                return None
            return _read(self.path) or holder

    def _message(self, holder: Mapping[str, Any]) -> str:
        text = (f"the output directory {self.output} is in use by "
                f"{describe_holder(holder)}: one run per output directory. Wait for it "
                "(--wait-for-lock, or dagflow.lock.wait), or write elsewhere")
        if holder_alive(holder) is None:
            stale = self.settings.stale_after
            text += ("; its process cannot be checked from this machine" + (
                f" (its lock counts as stale after {stale:g} s without a refresh)"
                if stale is not None else ""))
        return text + (f". If you know that run has ended, delete {self.path}")

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat):
            holder = _read(self.path)
            if holder is None or holder.get("token") != self.token:
                logger.error("the lock of %s is no longer this run's (%s): another run "
                             "may be writing there", self.output,
                             "removed" if holder is None else describe_holder(holder))
                return
            with contextlib.suppress(OSError):  # the file system's time: see the docstring
                os.utime(self.path, follow_symlinks=os.utime not in os.supports_follow_symlinks)

    def release(self) -> None:
        """Give the lock back (only if it is still this run's)."""
        if not self.held:
            return
        self.held = False
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        try:
            with _guard(self.path.parent):
                holder = _read(self.path)
                if holder is not None and holder.get("token") == self.token:
                    self.path.unlink()
        except (OSError, OutputLockedError) as exc:  # never hide how the run ended
            logger.error("could not release the lock %s: %s", self.path, exc)

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_unlocked(output: str | os.PathLike[str], *, state_dir: str | None = None) -> None:
    """Refuse at once when another run holds ``output``'s lock and it is not to be waited
    for (``dagflow submit`` asks before it makes a run directory; its driver takes it).

    Raises
    ------
    OutputLockedError
        Naming the holder.
    """
    lock = OutputLock(output, "check", state_dir=state_dir)
    if lock.settings.wait != 0:
        return
    holder = _read(lock.path)
    if holder is None:
        return
    if _stale(holder, lock.path, lock.settings.stale_after) is None:
        raise OutputLockedError(lock._message(holder), holder)


def lock_status(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Who holds the lock of the output directory ``path`` names (an output directory or
    one of its run directories), for ``dagflow status``; ``None`` when nobody does.

    Returns
    -------
    dict or None
        The holder's ``run_id``, ``pid``, ``host``, ``since``, whether it is ``alive``
        (``None``: not checkable from here) and ``description``, one line.
    """
    from dagflow import config

    path = Path(path)
    state_dir = str(config.get("state-dir"))
    output = path
    if not (path / state_dir).is_dir() and path.parent.name == "runs" \
            and path.parent.parent.name == state_dir:
        output = path.parent.parent.parent
    holder = read_holder(output, state_dir=state_dir)
    if holder is None:
        return None
    shown = {k: v for k, v in holder.items() if k not in ("token", "mtime")}
    return {**shown, "alive": holder_alive(holder), "description": describe_holder(holder),
            "path": os.fspath(_lock_path(output, state_dir))}

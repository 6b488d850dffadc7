"""``dagflow submit``: a run that outlives the command that starts it.

Dask has no batch submission of its own any more (its submit script was removed from
distributed in 2019, and nothing replaced it). dagflow's runtime is driven by a client:
the process that calls :func:`dagflow.run` submits windows of chunks and records what
they did, so it must live as long as the run. :func:`submit` therefore starts a
*driver*, a detached process (``python -m dagflow.runtime.submit RUN_DIR``, in its own
session, so that closing the terminal does not stop it), and returns as soon as the run
has started, with its id and run directory::

    dagflow submit thumbnails.yaml -i photos/ -o out/ --cluster tcp://scheduler:8786
    dagflow status out/_dagflow/runs/<run id>      # or: dagflow submit ... --follow

The run id is chosen here, before the driver starts, so the run directory is known at
once. The driver reads what to run from ``submit.json`` in the run directory (including
the ``dagflow`` configuration resolved here: the driver runs with the configuration of
the process that submitted it, not only the one its environment gives it), writes its
output to ``driver.log`` and its process id and exit code to ``driver.json``. The run's
own files (event log, records, summary) are those of any run, so ``dagflow status`` and
the dashboard page follow a submitted run like any other.

This module owns the driver's files and process; the run itself is
:func:`dagflow.runtime.run.run`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.config

from dagflow import config
from dagflow.exceptions import ConfigError, DagflowError, InputError, StorageError
from dagflow.io.atomic import atomic_write
from dagflow.recovery.events import EventLog, read_events
from dagflow.runtime.lock import check_unlocked
from dagflow.runtime.result import EXIT_STORAGE
from dagflow.runtime.signals import sigterm_as_interrupt
from dagflow.runtime.statedir import check_state_dir

__all__ = ["Submission", "driver_info", "follow", "main", "submit"]

logger = logging.getLogger(__name__)

SPEC_FILE = "submit.json"
DRIVER_FILE = "driver.json"
LOG_FILE = "driver.log"

#: States of a run that has ended (see :class:`~dagflow.recovery.status.RunStatus`).
_ENDED = ("finished", "failed", "interrupted")

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: Dask settings the driver needs to reach the same scheduler the same way.
_DASK_KEYS = ("scheduler-address", "distributed.comm.tls", "distributed.comm.require-encryption",
              "distributed.comm.timeouts")


@dataclass(frozen=True)
class Submission:
    """A submitted run: where to follow it.

    Attributes
    ----------
    run_id, run_dir
        The run and its directory (``<output>/_dagflow/runs/<run_id>``).
    pid
        The driver's process id (on this machine).
    log
        The driver's log file.
    started
        Whether the run had started when :func:`submit` returned (``False``: the driver
        was still resolving inputs or connecting after ``dagflow.submit.start-timeout``).
    dashboard
        The scheduler's dashboard, when known.
    """

    run_id: str
    run_dir: Path
    pid: int
    log: Path
    started: bool = True
    dashboard: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "run_dir": str(self.run_dir), "pid": self.pid,
                "log": str(self.log), "started": self.started, "dashboard": self.dashboard}


def _abspath_if_exists(value: str) -> str:
    return os.path.abspath(value) if os.path.exists(value) else value


def _check_scheduler(cluster: str | None, scheduler_file: str | None,
                     timeout: float) -> str | None:
    """Connect once to the scheduler the run will use; return its dashboard link.

    Nothing is checked for a profile or the embedded cluster: the driver starts those.
    """
    from distributed import Client

    if scheduler_file is not None:
        if not os.path.exists(scheduler_file):
            raise ConfigError(f"scheduler file {scheduler_file!r} does not exist")
        target: dict[str, Any] = {"scheduler_file": scheduler_file}
    elif cluster is not None and "://" in cluster:
        target = {"address": cluster}
    elif cluster is None and dask.config.get("scheduler-address", None):
        target = {"address": dask.config.get("scheduler-address")}
    else:
        return None
    where = target.get("address") or f"the scheduler file {scheduler_file}"
    try:
        with Client(**target, timeout=timeout) as client:
            try:
                return client.dashboard_link
            except Exception:
                return None
    except Exception as exc:
        raise ConfigError(f"cannot reach the scheduler at {where} within {timeout:g} s: "
                          f"{type(exc).__name__}: {exc}") from exc


def _resolved_config() -> dict[str, Any]:
    """The configuration the driver runs with: dagflow's section and how to reach Dask."""
    out: dict[str, Any] = {"dagflow": dask.config.get("dagflow", default={})}
    for key in _DASK_KEYS:
        value = dask.config.get(key, default=None)
        if value is not None:
            out[key] = value
    return json.loads(json.dumps(out, default=str))


def submit(
    workflow: str | os.PathLike[str],
    inputs: str | Sequence[str],
    output: str | os.PathLike[str],
    *,
    cluster: str | None = None,
    scheduler_file: str | os.PathLike[str] | None = None,
    chunk_size: int | None = None,
    resume: bool = True,
    retry_failed: bool = False,
    local_options: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    start_timeout: float | None = None,
) -> Submission:
    """Start a run in a detached driver process and return once it has started.

    Parameters
    ----------
    workflow
        A YAML workflow file (validated here first).
    inputs, output
        As for :func:`dagflow.run`; relative paths are taken from the current directory.
    cluster, scheduler_file
        Where to run, as for :func:`dagflow.run`. An address or scheduler file is
        checked here (``dagflow.submit.connect-timeout``); a profile or the embedded
        cluster is started by the driver, which keeps it for the run.
    chunk_size, resume, retry_failed, local_options
        As for :func:`dagflow.run`.
    run_id
        The run's id (by default a new one).
    start_timeout
        Seconds to wait for the run to start (``dagflow.submit.start-timeout``).

    Returns
    -------
    Submission

    Raises
    ------
    WorkflowValidationError, ConfigError, InputError
        Invalid workflow, unreachable scheduler, or a driver that failed before the run
        started (its message and log are in the error).
    """
    from dagflow.runtime.run import load_workflow, new_run_id

    config.validate_config()
    if "://" in os.fspath(output) and not os.fspath(output).startswith("file://"):
        from dagflow.io.redact import redact_url

        raise ConfigError(f"dagflow submit into an output on a store "
                          f"({redact_url(os.fspath(output))}) is not supported yet: use "
                          "dagflow run where the driver can run")
    workflow = os.path.abspath(os.fspath(workflow))
    load_workflow(Path(workflow))
    run_id = run_id or new_run_id()
    if not _RUN_ID.fullmatch(run_id):
        raise ConfigError(f"run id {run_id!r}: use letters, digits, '.', '_' and '-'")
    scheduler_file = os.path.abspath(os.fspath(scheduler_file)) if scheduler_file else None
    if cluster is not None and "://" not in cluster and cluster != "local":
        from dagflow.runtime.profiles import load_profile

        cluster = os.fspath(load_profile(cluster).path)  # the driver gets the same file
    dashboard = _check_scheduler(cluster, scheduler_file,
                                 float(config.get("submit.connect-timeout")))

    output = Path(os.path.abspath(os.fspath(output)))
    check_state_dir(output, config.get("state-dir"))
    check_unlocked(output)  # another run holds it: say so now, not from the driver
    run_dir = output / config.get("state-dir") / "runs" / run_id
    if run_dir.exists():
        raise ConfigError(f"run directory {run_dir} already exists: choose another run id")
    run_dir.mkdir(parents=True)
    spec = {
        "run_id": run_id, "workflow": workflow, "output": os.fspath(output),
        "inputs": [_abspath_if_exists(os.fspath(i))
                   for i in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)],
        "cluster": cluster, "scheduler_file": scheduler_file, "chunk_size": chunk_size,
        "resume": resume, "retry_failed": retry_failed,
        "local_options": dict(local_options or {}), "config": _resolved_config(),
        "submitted": time.time(), "host": socket.gethostname(), "cwd": os.getcwd(),
    }
    atomic_write(run_dir / SPEC_FILE, json.dumps(spec, indent=2).encode())
    log = run_dir / LOG_FILE
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagflow.runtime.submit", os.fspath(run_dir)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=os.getcwd(), env=env, close_fds=True)
    _write_driver(run_dir, {"pid": proc.pid, "host": spec["host"], "started": time.time()})
    logger.info("submitted run %s (driver pid %d), run directory %s", run_id, proc.pid, run_dir)

    timeout = float(config.resolve(start_timeout, "submit.start-timeout"))
    deadline = time.monotonic() + timeout
    started = False
    while True:
        if any(e.get("event") == "run_started" for e in read_events(run_dir / "events.jsonl")):
            started = True
            break
        code = proc.poll()
        if code is not None:
            _raise_driver_failure(run_dir, code)
            break  # exited 0 without a run_started event: nothing to report but the log
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return Submission(run_id=run_id, run_dir=run_dir, pid=proc.pid, log=log, started=started,
                      dashboard=dashboard)


def _raise_driver_failure(run_dir: Path, code: int) -> None:
    info = driver_info(run_dir)
    error = info.get("error") or {}
    message = error.get("message") or f"the driver exited with code {code}"
    text = f"{message} (driver log: {run_dir / LOG_FILE})"
    if error.get("type") == "InputError":
        raise InputError(text)
    if code == 0:
        return
    raise ConfigError(text)


def _write_driver(run_dir: Path, fields: Mapping[str, Any]) -> None:
    info = {**driver_info(run_dir), **fields}
    atomic_write(run_dir / DRIVER_FILE, json.dumps(info, indent=2, default=str).encode())


def driver_info(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``driver.json`` says about a submitted run's driver (``{}`` if none): ``pid``,
    ``host``, ``started``, and once it ended ``exit_code``, ``ended`` and ``error``."""
    try:
        with open(Path(run_dir, DRIVER_FILE), encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _driver_alive(info: Mapping[str, Any]) -> bool | None:
    """Whether the driver process still runs (``None``: unknown, e.g. another host)."""
    if "exit_code" in info:
        return False
    pid = info.get("pid")
    if not pid or info.get("host") != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our own child, not reaped yet) has finished
        with open(f"/proc/{int(pid)}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def follow(run_dir: str | os.PathLike[str], *, interval: float | None = None,
           echo: Callable[[str], None] = print, timeout: float | None = None) -> int:
    """Follow a run until it ends; return the exit code ``dagflow run`` would have given.

    Prints a line whenever the counts change. Following can be interrupted at any time;
    the run goes on.

    Returns
    -------
    int
        0, 1 or 3 as for ``dagflow run`` when the run finished, 5 when its storage
        failed; 2 when its driver failed before the run started; 4 when the run was
        interrupted or its driver died.
    """
    from dagflow.recovery.status import run_status

    run_dir = Path(run_dir)
    interval = float(config.resolve(interval, "submit.poll-interval"))
    deadline = None if timeout is None else time.monotonic() + timeout
    last = None
    while True:
        status = run_status(run_dir)
        info = driver_info(run_dir)
        line = (f"{status.state}: {status.done} done, {status.failed} failed, "
                f"{status.not_run} not run, {status.pending} pending of {status.to_run}")
        if line != last:
            echo(line)
            last = line
        if status.state in _ENDED:
            break
        alive = _driver_alive(info)
        if alive is False:
            # the driver may have written its last event just before exiting
            status = run_status(run_dir)
            if status.state not in _ENDED:
                echo(f"the driver (pid {info.get('pid')}) ended without finishing the run; "
                     f"see {run_dir / LOG_FILE}")
                _echo_driver_error(run_dir, echo)
                return 2 if status.state == "unknown" else 4
            break
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"run {run_dir.name} still going after {timeout} s")
        time.sleep(interval)
    echo(str(status))
    if status.state == "failed":
        return EXIT_STORAGE
    if status.state != "finished":
        _echo_driver_error(run_dir, echo)
        return 4
    try:
        with open(run_dir / "summary.json", encoding="utf-8") as f:
            return int(json.load(f).get("exit_code", 0))
    except (FileNotFoundError, json.JSONDecodeError, ValueError):
        return 4


def _echo_driver_error(run_dir: Path, echo: Callable[[str], None], wait: float = 10.0) -> None:
    """Say the error the driver ended with (``error: ...``, as ``dagflow run`` says it),
    once ``driver.json`` has it: the driver writes it just after the run's last event."""
    deadline = time.monotonic() + wait
    info = driver_info(run_dir)
    while "exit_code" not in info and _driver_alive(info) is not False \
            and time.monotonic() < deadline:
        time.sleep(0.05)
        info = driver_info(run_dir)
    error = info.get("error") or {}
    if error:
        echo(f"error: {error.get('message') or error.get('type')}")


def main(argv: Sequence[str] | None = None) -> int:
    """The driver: run what ``RUN_DIR/submit.json`` describes; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m dagflow.runtime.submit RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with open(run_dir / SPEC_FILE, encoding="utf-8") as f:
        spec = json.load(f)
    _write_driver(run_dir, {"pid": os.getpid(), "host": socket.gethostname()})
    logger.info("driver of run %s (pid %d) on %s", spec["run_id"], os.getpid(),
                socket.gethostname())
    code = 4
    error: dict[str, str] | None = None
    try:
        with dask.config.set(spec["config"]), sigterm_as_interrupt():
            from dagflow.runtime.run import run

            result = run(spec["workflow"], spec["inputs"], spec["output"],
                         cluster=spec["cluster"], scheduler_file=spec["scheduler_file"],
                         chunk_size=spec["chunk_size"], resume=spec["resume"],
                         retry_failed=spec["retry_failed"],
                         local_options=spec["local_options"] or None, progress=False,
                         run_id=spec["run_id"])
        print(result, flush=True)
        code = result.exit_code
    except BaseException as exc:
        traceback.print_exc()
        error = {"type": type(exc).__name__, "message": str(exc)}
        if isinstance(exc, StorageError):
            code = EXIT_STORAGE
        else:
            code = 2 if isinstance(exc, DagflowError) and not _run_started(run_dir) else 4
        if not _run_started(run_dir):
            # failed before the run opened its event log: say so there, for `status`
            with contextlib.suppress(DagflowError, OSError), \
                    EventLog(run_dir / "events.jsonl") as events:
                events.emit("run_interrupted", error=repr(exc))
        if not isinstance(exc, Exception):
            raise
    finally:
        _write_driver(run_dir, {"exit_code": code, "ended": time.time(), "error": error})
    return code


def _run_started(run_dir: Path) -> bool:
    return any(e.get("event") == "run_started" for e in read_events(run_dir / "events.jsonl"))


if __name__ == "__main__":
    sys.exit(main())

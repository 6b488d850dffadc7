"""Real ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1, for cluster tests.

Each process starts in its own session (process group) and is killed with its group on
close, so a nanny's worker process goes with it. Ports are chosen by the OS (port 0);
the scheduler's address comes from its scheduler file. Logs go to files in the given
directory and are shown when something does not start.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
#: The workflow file the process tests run (``_workflows.THUMBS``). Written out here:
#: this module imports no dagflow, as the processes it starts must not find it imported.
WORKFLOW = """\
name: thumbs
nodes:
  - {id: load, op: load}
  - {id: small, op: resize, after: [load], params: {long_side: 32}}
  - {id: save, op: save, after: [small], params: {format: png}}
"""


def dask_command() -> list[str]:
    """The ``dask`` command of this environment."""
    script = BIN / "dask"
    if script.exists():
        return [str(script)]
    found = shutil.which("dask")
    return [found] if found else [sys.executable, "-m", "dask"]


class DaskProcesses:
    """A scheduler and workers as subprocesses; use as a context manager.

    Parameters
    ----------
    directory
        Where the scheduler file, the logs and the workers' local directories go.
    env
        More environment variables for every process (e.g. ``PYTHONPATH``, so that
        workers import a test's own ops).
    """

    def __init__(self, directory: Path, env: dict[str, str] | None = None) -> None:
        self.dir = Path(directory)
        self.env = dict(env or {})
        self.dir.mkdir(parents=True, exist_ok=True)
        self.scheduler_file = self.dir / "scheduler.json"
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.address: str | None = None

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
        env.update(self.env)
        proc = subprocess.Popen([*dask_command(), *args], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env,
                                cwd=self.dir)
        log.close()
        self.procs.append((name, proc))
        return proc

    def start_scheduler(self, *extra: str, timeout: float = 30) -> str:
        """Start ``dask scheduler`` on 127.0.0.1 (free port); return its address."""
        proc = self._spawn("scheduler", [
            "scheduler", "--host", "127.0.0.1", "--port", "0",
            "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(self.scheduler_file),
            *extra])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"dask scheduler exited with {proc.returncode}:\n"
                                   + self.logs())
            try:
                self.address = json.loads(self.scheduler_file.read_text())["address"]
                return self.address
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                time.sleep(0.1)
        raise TimeoutError("dask scheduler did not write its scheduler file:\n" + self.logs())

    def start_worker(self, name: str, *extra: str) -> subprocess.Popen:
        """Start ``dask worker`` on 127.0.0.1: one thread, 1 GiB, ``MEMORY`` advertised."""
        return self._spawn(name, [
            "worker", "--scheduler-file", str(self.scheduler_file), "--host", "127.0.0.1",
            "--dashboard-address", "127.0.0.1:0", "--name", name, "--nthreads", "1",
            "--memory-limit", "1GiB", "--resources", "MEMORY=8e8",
            "--local-directory", str(self.dir / name), *extra])

    def wait_for_workers(self, n: int, timeout: float = 40) -> list[str]:
        """Wait until ``n`` workers are connected; return their addresses."""
        from distributed import Client

        with Client(scheduler_file=str(self.scheduler_file), timeout=timeout) as client:
            try:
                client.wait_for_workers(n, timeout=timeout)
            except TimeoutError:
                raise TimeoutError(f"{n} workers did not connect:\n" + self.logs()) from None
            return sorted(client.scheduler_info(n_workers=-1)["workers"])

    def logs(self) -> str:
        parts = []
        for name, _ in self.procs:
            path = self.dir / f"{name}.log"
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"--- {name} ---\n{text[-3000:]}")
        return "\n".join(parts)

    def close(self) -> None:
        """Terminate every process group, then kill what is left."""
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            # also the nanny's worker process, if it outlived its nanny
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.procs.clear()

    def __enter__(self) -> DaskProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

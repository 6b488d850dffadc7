"""The one-node Slurm of scripts/slurm-up.sh, for tests/test_slurm.py: whether it runs (and
why not), its queue, and ops whose executions a test can count and hold.

Worker jobs import this module (the tests put its directory on the ``PYTHONPATH`` that
``sbatch`` hands to every job), so the ops below reach workers that run in batch jobs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from dagflow import Param, register_op

ROOT = Path(__file__).resolve().parents[1]
MARK = "# one-node Slurm written by dagflow's scripts/slurm-up.sh"
#: Where scripts/slurm-up.sh writes why it could not start a Slurm.
REASON = Path(os.environ.get("TMPDIR", "/tmp")) / "dagflow-slurm-unavailable"


def unavailable() -> str | None:
    """Why the slurm tests cannot run here, or ``None`` when they can."""
    said = f"scripts/slurm-up.sh: {REASON.read_text().strip()}" if REASON.is_file() else None
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return (f"{said or 'Slurm is not installed'} (scripts/slurm-up.sh starts a one-node "
                "Slurm, as root with apt-get)")
    if said:
        return said
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    if not conf.is_file() or MARK not in conf.read_text(errors="replace"):
        return (f"{conf} is not the one-node Slurm of scripts/slurm-up.sh: the tests do not "
                "submit jobs to another Slurm")
    done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                          timeout=30)
    state = done.stdout.strip()
    if done.returncode or not state.startswith(("idle", "mix", "alloc")):
        return (f"the one-node Slurm does not answer (sinfo: {state or done.stderr.strip()}); "
                "start it with scripts/slurm-up.sh")
    return None


def squeue(name: str | None = None) -> list[dict[str, str]]:
    """The jobs in the queue (optionally those named ``name``): id, name, state."""
    args = ["squeue", "-h", "-o", "%i|%j|%T"] + (["-n", name] if name else [])
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=30).stdout
    return [dict(zip(("id", "name", "state"), line.split("|"), strict=True))
            for line in out.splitlines() if line.strip()]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll ``predicate`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def job_state(job_id: str) -> dict[str, str]:
    """``scontrol show job``'s fields of a job (finished jobs stay for MinJobAge)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def _log(path: str, image) -> None:
    """One line per execution: the item and the worker (its Slurm job)."""
    with open(path, "a", encoding="utf-8") as f:  # short appends: one write each
        f.write(f"{Path(image.meta['path']).name}\t{os.environ.get('SLURM_JOB_ID', '-')}\n")


@register_op("slurm_hold", params=[Param("log", str), Param("gate", str)], replace=True)
def slurm_hold(image, log, gate):
    """Log the execution, then wait while the file ``gate`` exists."""
    _log(log, image)
    while os.path.exists(gate):
        time.sleep(0.05)
    return image


@register_op("slurm_slow", params=[Param("log", str), Param("seconds", float),
                                   Param("while_exists", str)], replace=True)
def slurm_slow(image, log, seconds, while_exists):
    """Log the execution, then take ``seconds`` while the file ``while_exists`` exists."""
    _log(log, image)
    if os.path.exists(while_exists):
        time.sleep(seconds)
    return image


def executions(log: Path) -> dict[str, list[str]]:
    """Item name -> the jobs it was executed in, from an op's log."""
    runs: dict[str, list[str]] = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            name, job = line.split("\t")
            runs.setdefault(name, []).append(job)
    return runs

"""What a batch system says of its jobs: Slurm, PBS and LSF job states in one shape.

A worker job that dask-jobqueue submitted is queued, running or ended, and while its
worker has not connected dagflow asks the batch system which
(:mod:`dagflow.runtime.jobqueue`). Each :class:`BatchSystem` names the one command that
answers for many jobs at once and parses its answer into :class:`JobState`:

=========  ==========================================  ===============================
system     command                                     queued / running / ended
=========  ==========================================  ===============================
Slurm      ``squeue -h -t all -j IDS -O ...``          PENDING... / RUNNING / COMPLETED,
                                                       FAILED, CANCELLED, TIMEOUT...
PBS        ``qstat -f -x IDS`` (Torque: XML)           Q, H, W... / R, B / E, F, C, X
LSF        ``bjobs -a -json -o "..." IDS``             PEND, PSUSP... / RUN / DONE, EXIT
=========  ==========================================  ===============================

with the reason a queued job waits (Slurm's ``%r``, PBS's ``comment``, LSF's pending
reason), an ended job's exit code, and the path of its error log, so that a job that
ended before its worker connected can be quoted (:func:`log_tail`). A state this module
does not know counts as queued: it never stops a run.

Parsing is pure (the tests feed it the real formats; PBS and LSF have no server here);
:func:`query` runs the command. Nothing here knows about Dask.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ENDED", "LSF", "PBS", "QUEUED", "RUNNING", "BatchSystem", "JobState", "Slurm",
           "for_job_class", "job_logs", "log_tail", "query"]

QUEUED, RUNNING, ENDED = "queued", "running", "ended"


@dataclass(frozen=True)
class JobState:
    """One job as its batch system describes it.

    Attributes
    ----------
    job_id
        As the submission command printed it (``245``; PBS: ``1234`` of ``1234.server``).
    phase
        :data:`QUEUED`, :data:`RUNNING` or :data:`ENDED`.
    state
        The batch system's own word (``FAILED``, ``R``, ``EXIT``).
    reason
        Why it waits, or why it ended, as the batch system says (may be empty).
    exit_code
        How it ended (``127``, ``signal 9``), where known.
    error_log
        The file its standard error goes to, where known.
    """

    job_id: str
    phase: str
    state: str
    reason: str = ""
    exit_code: str = ""
    error_log: str = ""

    def describe(self) -> str:
        """The state with its exit code, e.g. ``FAILED, exit code 127``."""
        return f"{self.state}, exit code {self.exit_code}" if self.exit_code else self.state


class BatchSystem:
    """A batch system's job-state command and its parser (subclasses per system)."""

    #: The system's name, for messages.
    name = "the batch system"
    #: What the command says (on stderr) when every job asked about is unknown to it.
    unknown_job = re.compile(r"$^")

    def command(self, job_ids: Sequence[str]) -> list[str]:
        """The command that tells the state of ``job_ids``."""
        raise NotImplementedError

    def parse(self, output: str) -> dict[str, JobState]:
        """The command's standard output: job id -> state (unknown jobs left out)."""
        raise NotImplementedError


def _word(value: str | None) -> str:
    """A field's value, its placeholders for "none" made empty."""
    value = (value or "").strip()
    return "" if value in ("-", "(null)", "None", "N/A") else value


class Slurm(BatchSystem):
    """Slurm: ``squeue`` over every state Slurm still remembers (``-t all``).

    Finished jobs stay for ``MinJobAge`` (300 s by default) after they end, long enough to
    be seen ending: dagflow looks every few seconds. The exit code is the job's wait
    status as squeue prints it (``32512``: exit code 127).

    Examples
    --------
    >>> Slurm().parse("247|FAILED|NonZeroExitCode|32512|w|/home/u/slurm-247.out|\\n")
    {'247': JobState(job_id='247', phase='ended', state='FAILED', reason='NonZeroExitCode', \
exit_code='127', error_log='/home/u/slurm-247.out')}
    """

    name = "Slurm"
    unknown_job = re.compile(r"Invalid job id", re.IGNORECASE)
    #: Slurm's job states by phase (squeue(1), JOB STATE CODES); the rest count as queued
    #: (PENDING, CONFIGURING while nodes boot, REQUEUED, SUSPENDED, PREEMPTED until
    #: requeued...).
    RUNNING_STATES = frozenset({"RUNNING", "SIGNALING", "STAGE_OUT", "RESIZING"})
    ENDED_STATES = frozenset({"COMPLETED", "COMPLETING", "FAILED", "CANCELLED", "TIMEOUT",
                              "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                              "SPECIAL_EXIT", "REVOKED"})
    #: One field after another, each ended by "|" (an empty width: no padding).
    FORMAT = "JobID:|,State:|,Reason:|,exit_code:|,Name:|,STDERR:|"

    def command(self, job_ids: Sequence[str]) -> list[str]:
        return ["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-O", self.FORMAT]

    def parse(self, output: str) -> dict[str, JobState]:
        states = {}
        for line in output.splitlines():
            fields = line.rstrip().removesuffix("|").split("|", 5)
            if len(fields) != 6 or not fields[0].strip():
                continue
            job_id, state, reason, status, name, stderr = (f.strip() for f in fields)
            state = state.split()[0] if state else "UNKNOWN"  # "CANCELLED by 0"
            phase = (RUNNING if state in self.RUNNING_STATES
                     else ENDED if state in self.ENDED_STATES else QUEUED)
            states[job_id] = JobState(
                job_id, phase, state, _word(reason),
                _wait_status(status) if phase == ENDED else "",
                _slurm_path(_word(stderr), job_id, name))
        return states


def _wait_status(text: str) -> str:
    """A Slurm wait status (``32512``) as an exit code (``127``) or signal."""
    if not text.strip().lstrip("-").isdigit():
        return _word(text)
    status = int(text)
    return f"signal {status & 0x7F}" if status & 0x7F else str(status >> 8 & 0xFF)


def _slurm_path(path: str, job_id: str, name: str) -> str:
    """A Slurm file name pattern (``%j``, ``%x``...) as the file's name; Slurm 22 and
    later print it expanded already."""
    if "%" not in path:
        return path
    names = {"j": job_id, "J": job_id, "A": job_id, "a": "0", "x": name, "%": "%"}
    return re.sub(r"%(\w|%)", lambda m: names.get(m.group(1), m.group(0)), path)


class PBS(BatchSystem):
    """PBS Pro / OpenPBS and Torque: ``qstat -f -x``.

    ``-x`` includes finished jobs on PBS Pro (where job history is kept); on Torque it
    asks for XML, which is parsed as well (Torque keeps completed jobs, state ``C``, for
    ``keep_completed`` seconds). A job's id is the number ``qsub`` printed first
    (dask-jobqueue keeps ``1234`` of ``1234.server``).

    Examples
    --------
    >>> PBS().parse('''Job Id: 1234.pbs01
    ...     Job_Name = dagflow-worker
    ...     job_state = F
    ...     Error_Path = login1:/home/u/dagflow-worker.e1234
    ...     Exit_status = 127
    ... ''')["1234"].describe()
    'F, exit code 127'
    """

    name = "PBS"
    unknown_job = re.compile(r"Unknown Job Id|Job has finished", re.IGNORECASE)
    #: PBS job states by phase (qstat(1B)): H, Q, S, T, U, W, M and the rest count as
    #: queued; E (exiting) has ended already.
    RUNNING_STATES = frozenset({"R", "B"})
    ENDED_STATES = frozenset({"E", "F", "C", "X"})

    def command(self, job_ids: Sequence[str]) -> list[str]:
        return ["qstat", "-f", "-x", *job_ids]

    def parse(self, output: str) -> dict[str, JobState]:
        text = output.strip()
        records = _pbs_xml(text) if text.startswith("<") else _pbs_text(text)
        return {state.job_id: state for state in map(self._state, records) if state}

    def _state(self, record: Mapping[str, str]) -> JobState | None:
        fields = {k.lower(): v for k, v in record.items()}
        full_id = fields.get("job_id", "")
        if not full_id:
            return None
        job_id = full_id.split(".", 1)[0]
        state = fields.get("job_state", "").strip() or "UNKNOWN"
        phase = (RUNNING if state in self.RUNNING_STATES
                 else ENDED if state in self.ENDED_STATES else QUEUED)
        joined = fields.get("join_path", "n").strip() == "oe"  # stderr into stdout
        path = _pbs_path(fields.get("output_path" if joined else "error_path", ""),
                         fields.get("job_name", ""), job_id, "o" if joined else "e")
        return JobState(job_id, phase, state, _word(fields.get("comment")),
                        _word(fields.get("exit_status")) if phase == ENDED else "", path)


def _pbs_text(text: str) -> list[dict[str, str]]:
    """``qstat -f``'s text: a ``Job Id:`` line, then ``key = value`` lines; long values
    go on over lines that start with a tab (cut anywhere: joined as they are)."""
    records: list[dict[str, str]] = []
    key = None
    for line in text.splitlines():
        if line.startswith("Job Id:"):
            records.append({"Job_Id": line.split(":", 1)[1].strip()})
            key = None
        elif records and line.startswith("\t") and key is not None:
            records[-1][key] += line.strip()
        elif records and " = " in line:
            key, value = (part.strip() for part in line.split(" = ", 1))
            records[-1][key] = value
    return records


def _pbs_xml(text: str) -> list[dict[str, str]]:
    """Torque's ``qstat -f -x``: ``<Data><Job><Job_Id>...</Job_Id>...</Job></Data>``."""
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError:
        return []
    return [{child.tag: (child.text or "").strip() for child in job}
            for job in root.iter("Job")]


def _pbs_path(value: str, job_name: str, job_id: str, kind: str) -> str:
    """``host:/path`` as a path; a directory (dask-jobqueue's ``-e log_directory/``)
    holds ``<job name>.e<number>``, as PBS names it."""
    path = _word(value).split(":", 1)[-1] if value else ""
    if path.endswith("/"):
        path = f"{path}{job_name or 'STDIN'}.{kind}{job_id}"
    return path


class LSF(BatchSystem):
    """IBM Spectrum LSF: ``bjobs -a -json -o ...`` (LSF 10.1 and later).

    Examples
    --------
    >>> LSF().parse('{"COMMAND":"bjobs","JOBS":1,"RECORDS":[{"JOBID":"88","STAT":"PEND",'
    ...             '"EXIT_CODE":"","PEND_REASON":"New job is waiting for scheduling;",'
    ...             '"ERROR_FILE":""}]}')["88"].reason
    'New job is waiting for scheduling;'
    """

    name = "LSF"
    unknown_job = re.compile(r"is not found", re.IGNORECASE)
    #: LSF job states by phase (bjobs(1)): PEND, PSUSP, USUSP, SSUSP, WAIT, PROV, UNKWN,
    #: ZOMBI count as queued.
    RUNNING_STATES = frozenset({"RUN"})
    ENDED_STATES = frozenset({"DONE", "EXIT", "POST_DONE", "POST_ERR"})
    FIELDS = "jobid stat exit_code pend_reason error_file job_name"

    def command(self, job_ids: Sequence[str]) -> list[str]:
        return ["bjobs", "-a", "-json", "-o", self.FIELDS, *job_ids]

    def parse(self, output: str) -> dict[str, JobState]:
        start = output.find("{")
        try:
            records = json.loads(output[start:])["RECORDS"] if start >= 0 else []
        except (ValueError, KeyError, TypeError):
            return {}
        states = {}
        for record in records:
            job_id = str(record.get("JOBID", "")).strip()
            if not job_id or record.get("ERROR"):
                continue  # {"JOBID": "99", "ERROR": "Job <99> is not found"}
            state = _word(record.get("STAT")) or "UNKNOWN"
            phase = (RUNNING if state in self.RUNNING_STATES
                     else ENDED if state in self.ENDED_STATES else QUEUED)
            path = _word(record.get("ERROR_FILE")).replace("%J", job_id).replace("%I", "0")
            exit_code = _word(str(record.get("EXIT_CODE", "")))
            if phase == ENDED and not exit_code:
                exit_code = "0" if state == "DONE" else ""
            states[job_id] = JobState(job_id, phase, state,
                                      _word(record.get("PEND_REASON")).strip(),
                                      exit_code if phase == ENDED else "", path)
        return states


#: dask-jobqueue's job classes (by name, anywhere in the class's bases) -> batch system.
_SYSTEMS: dict[str, type[BatchSystem]] = {"SLURMJob": Slurm, "PBSJob": PBS, "LSFJob": LSF}


def for_job_class(job_cls: type) -> BatchSystem | None:
    """The batch system of a dask-jobqueue job class, or ``None`` where dagflow cannot
    ask about its jobs (SGE, HTCondor, OAR...)."""
    for cls in job_cls.__mro__:
        if cls.__name__ in _SYSTEMS:
            return _SYSTEMS[cls.__name__]()
    return None


def query(system: BatchSystem, job_ids: Iterable[str], *,
          timeout: float = 30.0) -> dict[str, JobState]:
    """Ask the batch system about ``job_ids``; jobs it no longer knows are left out.

    Raises
    ------
    OSError
        The command is missing or could not run.
    RuntimeError
        It failed (its message in the error), or did not answer within ``timeout``.
    """
    ids = sorted(set(job_ids), key=lambda i: (len(i), i))
    if not ids:
        return {}
    command = system.command(ids)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, errors="replace")
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{command[0]} did not answer within {timeout:g} s") from exc
    states = system.parse(done.stdout)
    if done.returncode and not states and not system.unknown_job.search(done.stderr):
        said = "; ".join(line.strip() for line in done.stderr.splitlines() if line.strip())
        raise RuntimeError(f"{command[0]} exited with code {done.returncode}: "
                           f"{said or 'no message'}")
    return {job_id: states[job_id] for job_id in ids if job_id in states}


def log_tail(path: str | os.PathLike[str], *, lines: int = 4, limit: int = 600) -> str:
    """The last non-empty ``lines`` of a log, joined with `` | `` on one line, at most
    ``limit`` characters (the end kept).

    Raises
    ------
    OSError
        The file cannot be read.
    """
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 16384))
        text = f.read().decode("utf-8", errors="replace")
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    joined = " | ".join(kept)
    return joined if len(joined) <= limit else "..." + joined[-(limit - 3):]


def job_logs(directory: str | os.PathLike[str] | None, job_id: str) -> list[Path]:
    """Files in dask-jobqueue's ``log_directory`` that name ``job_id`` (its ``.err``
    first): where to look when the batch system no longer says."""
    if not directory or not os.path.isdir(directory):
        return []
    pattern = re.compile(rf"(?<!\d){re.escape(job_id)}(?!\d)")
    found = [p for p in Path(directory).iterdir() if pattern.search(p.name) and p.is_file()]
    return sorted(found, key=lambda p: (not re.search(r"\.e(rr)?\d*$|err", p.name), p.name))

"""Worker jobs watched until their workers connect: what Slurm, PBS and LSF say of their
jobs (parsed from the real formats: `squeue -O` as the one-node Slurm prints it, `qstat
-f -x` of PBS Pro and Torque's XML, `bjobs -json`, since PBS and LSF have no server
here), what dagflow makes of it (a job that ended or ran too long without its worker
stops the run, a queued one is waited for), and how the run is stopped (every task of
the scheduler cancelled, ClusterStartError when the block ends). The same against a
real Slurm: test_slurm.py; against stand-in qsub/qstat and bsub/bjobs through the
command line: test_clusters.py."""

from __future__ import annotations

import logging
import os
import textwrap

import pytest
from distributed import Client, LocalCluster
from distributed.client import FutureCancelledError

from dagflow.exceptions import ClusterStartError
from dagflow.runtime import jobqueue
from dagflow.runtime.batchjobs import (
    ENDED,
    LSF,
    PBS,
    QUEUED,
    RUNNING,
    JobState,
    Slurm,
    for_job_class,
    job_logs,
    log_tail,
    query,
)
from dagflow.runtime.jobqueue import WorkerJobs

#: `squeue -h -t all -j ... -O Slurm.FORMAT` on the one-node Slurm of scripts/slurm-up.sh
#: (22.05): a worker whose python is missing, a held job, one waiting for its start
#: time, one running, one cancelled while queued.
SQUEUE = """\
247|FAILED|NonZeroExitCode|32512|dagflow-worker|/tmp/w/slurm-247.out|
245|PENDING|JobHeldUser|0|dagflow-worker|/tmp/w/slurm-245.out|
246|PENDING|BeginTime|0|dagflow-worker|/tmp/w/slurm-246.out|
250|RUNNING|None|0|dagflow-worker|/tmp/w/logs/dagflow-worker-250.err|
251|CANCELLED|JobHeldUser|0|dagflow-worker|/tmp/w/slurm-251.out|
252|TIMEOUT|TimeLimit|15|dagflow-worker|/tmp/w/%x-%j.err|
"""

#: `qstat -f -x` of PBS Pro: a worker job that failed (a long value wrapped onto tab-led
#: lines), one queued for resources (stderr into a directory), one running with its
#: stderr joined to its stdout.
QSTAT = """\
Job Id: 1234.pbs01
    Job_Name = dagflow-worker
    Job_Owner = alice@login01.cluster
    resources_used.walltime = 00:00:01
    job_state = F
    queue = workq
    server = pbs01
    ctime = Mon Dec  7 20:29:43 2026
    Error_Path = login01.cluster:/lustre/scratch/projects/imaging/alice/dagflow/lo
\tgs/dagflow-worker.e1234
    exec_host = node07/0*16
    Join_Path = n
    Output_Path = login01.cluster:/lustre/scratch/projects/imaging/alice/dagflow/l
\togs/dagflow-worker.o1234
    Resource_List.select = 1:ncpus=16:mem=64GB
    Resource_List.walltime = 04:00:00
    Variable_List = PBS_O_HOME=/home/alice,PBS_O_LANG=en_US.UTF-8,
\tPBS_O_LOGNAME=alice,PBS_O_PATH=/usr/bin:/bin,PBS_O_SHELL=/bin/bash,
\tPBS_O_WORKDIR=/home/alice,PBS_O_SYSTEM=Linux,PBS_O_QUEUE=workq
    comment = Job run at Mon Dec 07 at 20:29 on (node07:ncpus=16:mem=67108864kb) a
\tnd failed
    run_count = 1
    Exit_status = 127
    Submit_arguments = /tmp/tmpk2h3s.sh
    history_timestamp = 1796675385

Job Id: 1235.pbs01
    Job_Name = dagflow-worker
    job_state = Q
    queue = workq
    Error_Path = login01.cluster:/home/alice/logs/
    Join_Path = n
    comment = Not Running: Insufficient amount of resource: ncpus (R: 16 A: 8 T: 64)

Job Id: 1236.pbs01
    Job_Name = dagflow-worker
    job_state = R
    Error_Path = login01.cluster:/home/alice/dagflow-worker.e1236
    Join_Path = oe
    Output_Path = login01.cluster:/home/alice/dagflow-worker.o1236
    comment = Job run at Mon Dec 07 at 20:31 on (node03:ncpus=16:mem=67108864kb)
"""

#: Torque's `qstat -f -x` (XML): a completed job.
QSTAT_TORQUE = (
    '<?xml version="1.0"?>\n<Data><Job><Job_Id>77.torque01</Job_Id><Job_Name>dagflow-worker'
    "</Job_Name><Job_Owner>alice@login01</Job_Owner><job_state>C</job_state><queue>batch"
    "</queue><Error_Path>login01:/home/alice/dagflow-worker.e77</Error_Path><Join_Path>n"
    "</Join_Path><exit_status>1</exit_status></Job><Job><Job_Id>78.torque01</Job_Id>"
    "<Job_Name>dagflow-worker</Job_Name><job_state>H</job_state></Job></Data>\n")

#: `bjobs -a -json -o "jobid stat exit_code pend_reason error_file job_name" ...` (LSF
#: 10.1): a job that exited, one pending, one LSF no longer knows.
BJOBS = r"""{
  "COMMAND":"bjobs",
  "JOBS":3,
  "RECORDS":[
    {
      "JOBID":"5501",
      "STAT":"EXIT",
      "EXIT_CODE":"127",
      "PEND_REASON":"",
      "ERROR_FILE":"\/home\/alice\/logs\/dagflow-worker-%J.err",
      "JOB_NAME":"dagflow-worker"
    },
    {
      "JOBID":"5502",
      "STAT":"PEND",
      "EXIT_CODE":"",
      "PEND_REASON":"Job's requirements for reserving resource (mem) not satisfied: 12 hosts;",
      "ERROR_FILE":"",
      "JOB_NAME":"dagflow-worker"
    },
    {
      "JOBID":"5503",
      "ERROR":"Job <5503> is not found"
    }
  ]
}
"""


def test_slurm_states_exit_codes_and_error_logs():
    states = Slurm().parse(SQUEUE)
    assert {i: (s.phase, s.state) for i, s in states.items()} == {
        "247": (ENDED, "FAILED"), "245": (QUEUED, "PENDING"), "246": (QUEUED, "PENDING"),
        "250": (RUNNING, "RUNNING"), "251": (ENDED, "CANCELLED"), "252": (ENDED, "TIMEOUT")}
    assert states["247"].describe() == "FAILED, exit code 127"  # wait status 32512
    assert states["252"].exit_code == "signal 15"
    assert states["245"].reason == "JobHeldUser" and states["246"].reason == "BeginTime"
    assert states["250"].reason == "" and states["250"].exit_code == ""
    assert states["247"].error_log == "/tmp/w/slurm-247.out"
    assert states["252"].error_log == "/tmp/w/dagflow-worker-252.err"  # older Slurm: a pattern
    assert Slurm().command(["245", "247"])[:6] == ["squeue", "-h", "-t", "all", "-j", "245,247"]


def test_pbs_pro_states_wrapped_values_and_error_paths():
    states = PBS().parse(QSTAT)
    failed, queued, running = states["1234"], states["1235"], states["1236"]
    assert (failed.phase, failed.describe()) == (ENDED, "F, exit code 127")
    assert failed.error_log == \
        "/lustre/scratch/projects/imaging/alice/dagflow/logs/dagflow-worker.e1234"
    assert failed.reason.endswith("(node07:ncpus=16:mem=67108864kb) and failed")
    assert (queued.phase, queued.state) == (QUEUED, "Q")
    assert queued.reason == "Not Running: Insufficient amount of resource: ncpus (R: 16 A: 8 T: 64)"
    assert queued.error_log == "/home/alice/logs/dagflow-worker.e1235"  # PBS's name in a dir
    assert running.phase == RUNNING and running.exit_code == ""
    assert running.error_log == "/home/alice/dagflow-worker.o1236"  # Join_Path = oe


def test_torque_xml_states():
    states = PBS().parse(QSTAT_TORQUE)
    assert states["77"] == JobState("77", ENDED, "C", "", "1", "/home/alice/dagflow-worker.e77")
    assert (states["78"].phase, states["78"].state) == (QUEUED, "H")
    assert PBS().parse("<Data><Job><Job_Id>7") == {}  # cut short: nothing, not a crash


def test_lsf_states_from_json():
    states = LSF().parse(BJOBS)
    assert set(states) == {"5501", "5502"}  # 5503: not found
    assert states["5501"].describe() == "EXIT, exit code 127"
    assert states["5501"].error_log == "/home/alice/logs/dagflow-worker-5501.err"
    assert states["5502"].phase == QUEUED
    assert states["5502"].reason.startswith("Job's requirements for reserving resource (mem)")
    assert LSF().parse("bjobs: not json") == {}


def test_the_batch_system_of_each_jobqueue_class():
    dask_jobqueue = pytest.importorskip("dask_jobqueue")
    assert isinstance(for_job_class(dask_jobqueue.SLURMCluster.job_cls), Slurm)
    assert isinstance(for_job_class(dask_jobqueue.PBSCluster.job_cls), PBS)
    assert isinstance(for_job_class(dask_jobqueue.LSFCluster.job_cls), LSF)
    assert for_job_class(dask_jobqueue.SGECluster.job_cls) is None  # qsub, not PBS's qstat


def stand_in(tmp_path, name: str, script: str) -> None:
    """A command ``name`` on PATH that runs ``script`` (sh)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(script))
    path.chmod(0o755)


def test_query_reads_known_jobs_past_unknown_ones_and_names_a_failing_command(
        tmp_path, monkeypatch):
    """qstat prints the jobs it knows and exits non-zero for the one it does not: the
    known are read; a query of only unknown jobs is an empty answer; another failure is
    an error naming what the command said; a missing command is an OSError."""
    (tmp_path / "qstat.txt").write_text(QSTAT)
    stand_in(tmp_path, "qstat", f"""\
        case "$*" in
          *999*) echo "qstat: Unknown Job Id 999.pbs01" >&2 ;;
        esac
        case "$*" in
          *1234*) cat {tmp_path}/qstat.txt; exit 153 ;;
          *998*) echo "qstat: cannot connect to server pbs01 (errno=111)" >&2; exit 2 ;;
        esac
        exit 153
        """)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert set(query(PBS(), ["1234", "999"])) == {"1234"}
    assert query(PBS(), ["999"]) == {}
    with pytest.raises(RuntimeError, match="qstat exited with code 2: qstat: cannot connect"):
        query(PBS(), ["998"])
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(OSError):
        query(LSF(), ["1"])


def test_log_tail_and_the_log_directory(tmp_path):
    log = tmp_path / "dagflow-worker-250.err"
    log.write_text("x" * 20000 + "\n" + "\n".join(f"line {i}" for i in range(10)) + "\n\n")
    assert log_tail(log) == "line 6 | line 7 | line 8 | line 9"
    assert len(log_tail(log, lines=200, limit=50)) == 50
    (tmp_path / "dagflow-worker-250.out").write_text("out")
    (tmp_path / "dagflow-worker-2500.err").write_text("another job")
    assert job_logs(tmp_path, "250") == [log, tmp_path / "dagflow-worker-250.out"]
    assert job_logs(tmp_path / "missing", "250") == []
    with pytest.raises(OSError):
        log_tail(tmp_path / "missing.err")


def jobs_of(timeout: float = 60.0) -> WorkerJobs:
    return WorkerJobs(Slurm(), where="cluster profile 'slurm'", connect_timeout=timeout,
                      poll_interval=1)


def test_a_job_that_ended_before_its_worker_connected_is_a_failure_quoting_its_log(tmp_path):
    (tmp_path / "slurm-247.out").write_text(
        "/var/lib/slurm/job00247/slurm_script: line 10: /opt/env/bin/python: "
        "No such file or directory\n")
    jobs = jobs_of()
    jobs.submitted("247", "SLURMCluster-0", now=0)
    ended = JobState("247", ENDED, "FAILED", "NonZeroExitCode", "127",
                     str(tmp_path / "slurm-247.out"))
    review = jobs.review({"247": ended}, now=3)
    assert review.failures == [
        f"worker job 247 ended (FAILED, exit code 127) before its worker connected to the "
        f"scheduler; {tmp_path}/slurm-247.out ends: /var/lib/slurm/job00247/slurm_script: "
        "line 10: /opt/env/bin/python: No such file or directory"]
    assert jobs.waiting() == [] and jobs.review({"247": ended}, now=4).failures == []


@pytest.mark.parametrize("log, said", [
    ("", "no error log is known for it (a log_directory in the cluster profile keeps one)"),
    ("empty", "its error log {tmp}/empty is empty"),
    ("missing", "its error log {tmp}/missing cannot be read here (No such file or directory)"),
])
def test_what_is_said_of_the_log_when_it_cannot_be_quoted(tmp_path, log, said):
    (tmp_path / "empty").write_text("\n\n")
    jobs = jobs_of()
    jobs.submitted("9", "SLURMCluster-0", now=0)
    path = str(tmp_path / log) if log else ""
    review = jobs.review({"9": JobState("9", ENDED, "COMPLETED", "", "0", path)}, now=1)
    assert review.failures[0].endswith("; " + said.format(tmp=tmp_path))


def test_the_log_directory_is_searched_when_the_batch_system_does_not_name_the_log(tmp_path):
    (tmp_path / "dagflow-worker-9.err").write_text("module: command not found\n")
    jobs = jobs_of()
    jobs.submitted("9", "SLURMCluster-0", str(tmp_path), now=0)
    review = jobs.review({"9": JobState("9", ENDED, "FAILED", "", "1")}, now=1)
    assert review.failures[0].endswith("dagflow-worker-9.err ends: module: command not found")


def test_running_queued_gone_and_unknown_jobs():
    jobs = jobs_of(timeout=60)
    for i, job_id in enumerate(["1", "2", "3", "4"]):
        jobs.submitted(job_id, f"SLURMCluster-{i}", now=0)
    running = JobState("1", RUNNING, "RUNNING")
    queued = JobState("2", QUEUED, "PENDING", "Priority")
    seen = JobState("3", QUEUED, "PENDING", "Resources")
    # 4 is never in the answer: too early to tell
    review = jobs.review({"1": running, "2": queued, "3": seen}, now=10)
    assert (review.failures, review.queued, review.running) == ([], [queued, seen], 2)
    # 1 runs for 49 s: no failure yet; 3 has left the queue's memory: it ended
    review = jobs.review({"1": running, "2": queued}, now=59)
    assert review.failures == [
        "worker job 3 is gone from Slurm (last seen PENDING) and its worker never connected "
        "to the scheduler; no error log is known for it (a log_directory in the cluster "
        "profile keeps one)"]
    review = jobs.review({"1": running, "2": queued}, now=71)
    assert [f.split(";")[0] for f in review.failures] == [
        "worker job 1 has been running for 61 s and its worker has not connected to the "
        "scheduler (dagflow.cluster.worker-connect-timeout: 60 s)",
        "worker job 4 is unknown to Slurm 71 s after it was submitted, and its worker has not "
        "connected to the scheduler"]
    assert review.queued == [queued] and jobs.waiting() == ["2"]  # queued: waited for


def test_jobs_whose_workers_connected_or_that_the_cluster_cancelled_are_left_alone():
    jobs = jobs_of()
    jobs.worker_joined("tcp://10.0.0.5:4000", "SLURMCluster-0-1")  # before its job is known
    jobs.submitted("1", "SLURMCluster-0", now=0)
    jobs.submitted("2", "SLURMCluster-1", now=0)
    jobs.submitted("3", "SLURMCluster-10", now=0)
    jobs.worker_joined("tcp://10.0.0.6:4000", "SLURMCluster-1")
    jobs.closed("3")  # scaled down while queued
    assert jobs.waiting() == []
    ended = {i: JobState(i, ENDED, "CANCELLED") for i in "123"}
    assert jobs.review(ended, now=1000).failures == []


class _Answer(Slurm):
    """Slurm, with squeue's answer given (printed by a real process)."""

    def __init__(self, output: str) -> None:
        self.output = output

    def command(self, job_ids):
        return ["printf", "%s", self.output]


def test_a_failure_stops_the_run_only_while_no_worker_serves_it(tmp_path, caplog):
    """The first failure without any worker connected is the run's; with workers serving
    the run it is a warning, and the run goes on."""
    answer = "7|FAILED|NonZeroExitCode|256|w|/nowhere/slurm-7.out|\n"
    serving = WorkerJobs(_Answer(answer), where="cluster profile 'slurm'", poll_interval=1)
    serving.worker_joined("tcp://10.0.0.5:4000", "SLURMCluster-0")
    serving.submitted("7", "SLURMCluster-1", now=0)
    with caplog.at_level(logging.WARNING, logger="dagflow.runtime.jobqueue"):
        serving.look(now=2)
    assert serving.failure is None
    assert ("cluster profile 'slurm': worker job 7 ended (FAILED, exit code 1) before its "
            "worker connected to the scheduler") in caplog.text
    assert "the run goes on with the 1 workers connected" in caplog.text

    alone = WorkerJobs(_Answer(answer + answer.replace("7", "8")), where="p",
                       poll_interval=1)
    alone.submitted("7", "SLURMCluster-1", now=0)
    alone.submitted("8", "SLURMCluster-2", now=0)
    alone.look(now=2)
    assert alone.failure.startswith("worker job 7 ended (FAILED, exit code 1)")
    assert alone.failure.endswith("(and 1 more worker job alike)")


def test_queued_jobs_are_said_once_then_every_few_minutes(caplog):
    answer = ("3|PENDING|JobHeldUser|0|w|/x|\n4|PENDING|Priority|0|w|/x|\n"
              "5|RUNNING|None|0|w|/x|\n")
    jobs = WorkerJobs(_Answer(answer), where="cluster profile 'slurm'", poll_interval=1,
                      connect_timeout=1000)
    for job_id in "345":
        jobs.submitted(job_id, f"SLURMCluster-{job_id}", now=0)
    with caplog.at_level(logging.WARNING, logger="dagflow.runtime.jobqueue"):
        assert jobs.look(now=1) == 1  # a job runs: the next look soon
        jobs.look(now=2)
        jobs.look(now=1 + jobqueue.QUEUE_REPORT_INTERVAL)
    said = [r.getMessage() for r in caplog.records]
    assert said == ["cluster profile 'slurm': the run waits for 2 worker jobs queued in Slurm: "
                    "3 (JobHeldUser), 4 (Priority)"] * 2
    queued_only = WorkerJobs(_Answer("3|PENDING|Priority|0|w|/x|\n"), where="p", poll_interval=1)
    queued_only.submitted("3", "SLURMCluster-3", now=0)
    assert queued_only.look(now=1) == jobqueue.MAX_POLL_INTERVAL  # a slower look


def test_a_failed_job_cancels_every_task_and_the_block_raises_cluster_start_error(tmp_path):
    """The stop itself, on a real (in-process) scheduler: the tasks that no worker could
    run are cancelled with the failure as their message (a chain whose middle task no
    client holds included), the block that waited on them ends, and leaving the watch
    turns its error into ClusterStartError naming the job."""
    (tmp_path / "slurm-7.out").write_text("prologue: environment dagflow not found\n")
    answer = f"7|FAILED|NonZeroExitCode|256|w|{tmp_path}/slurm-7.out|\n"
    jobs = WorkerJobs(_Answer(answer), where="cluster profile 'slurm' (slurm.yaml)",
                      poll_interval=0.1)
    jobs.submitted("7", "SLURMCluster-0", now=0)
    with LocalCluster(n_workers=0, processes=False, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        with pytest.raises(ClusterStartError) as info, jobs.watching(cluster):
            first = client.submit(sum, [1, 2], key="first")
            middle = client.submit(sum, [first, 3], key="middle")
            last = client.submit(sum, [middle, 4], key="last")
            del middle  # wanted by no client, still needed by `last`
            with pytest.raises(FutureCancelledError) as cancelled:
                last.result(timeout=30)
            assert "worker job 7 ended" in str(cancelled.value)
            with pytest.raises(FutureCancelledError):
                first.result(timeout=30)
            raise cancelled.value
        assert "dagflow-worker-jobs" in cluster.scheduler.plugins
    assert str(info.value) == (
        "cluster profile 'slurm' (slurm.yaml): worker job 7 ended (FAILED, exit code 1) "
        f"before its worker connected to the scheduler; {tmp_path}/slurm-7.out ends: "
        "prologue: environment dagflow not found")


def test_without_a_failure_the_blocks_own_error_goes_through():
    jobs = WorkerJobs(_Answer(""), where="p", poll_interval=0.1)
    with LocalCluster(n_workers=0, processes=False, dashboard_address="127.0.0.1:0") as cluster, \
            pytest.raises(KeyError), jobs.watching(cluster):
        raise KeyError("the run's own")


def test_the_batch_system_cannot_be_asked_the_run_waits(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))  # no squeue
    jobs = WorkerJobs(Slurm(), where="p", poll_interval=1)
    jobs.submitted("1", "SLURMCluster-0", now=0)
    with caplog.at_level(logging.WARNING, logger="dagflow.runtime.jobqueue"):
        jobs.look(now=1)
        jobs.look(now=2)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "p: cannot ask Slurm about its worker jobs"]
    assert jobs.failure is None


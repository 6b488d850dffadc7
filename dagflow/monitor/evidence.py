"""Where a run's time went off the CPU, from what its workers measured.

Each chunk's records carry the committing process's counters
(:func:`dagflow.monitor.sampling.host_counters`, in their ``counters`` column): its CPU
seconds, the seconds its threads waited in the run queue, its storage bytes, and the
machine's CPU states, runnable threads and pressure stall times, read as the chunk was
committed and at the process's previous reading (its previous chunk, or the run's
start). :func:`intervals` turns those pairs into what happened in between;
:func:`summarize` sums them over the run (:class:`Machine`), and :func:`classify` splits
each node's time:

* **on the CPU**: the op's thread CPU seconds (``cpu_s`` of its records);
* **waiting for a CPU**: runnable but not running, because other threads (of this run or
  of other processes) held the CPUs. The process's run-queue wait per CPU second, from
  schedstat, applied to the node's CPU seconds (a thread waits for a CPU in proportion to
  how much it wants one);
* **blocked**: the rest. Storage is the cause when the machine's I/O pressure or I/O
  wait says so; the GIL (or another lock) when the worker processes used about a core
  each while several of their threads were in ops; otherwise a wait the machine does not
  see (sleep, network, remote storage latency), which more threads can overlap.

Each node gets the class that explains most of its time (``cpu``, ``cpu-contention``,
``io``, ``lock``, ``wait``) with the figures behind it; :mod:`dagflow.monitor.advice`
builds recommendations only on those. Pure pandas and numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

__all__ = ["Machine", "classify", "intervals", "machine_busy", "summarize"]

#: Share of a node's time on the CPU above which it is CPU-bound.
ON_CPU = 0.6
#: PSI I/O "some" share (or I/O wait share of the CPUs) above which storage is busy.
IO_PRESSURE = 0.2
IO_WAIT = 0.1
#: Runnable threads per worker process (on a CPU or waiting for one), with several
#: threads in ops, that point at the GIL: one at a time.
LOCK_DEMAND = (0.75, 1.3)

def intervals(rows: pd.DataFrame) -> pd.DataFrame:
    """What happened in each worker process between two readings of its counters.

    ``rows`` are records with the ``counters`` column (on each chunk's first row: the
    process's previous reading and its reading as the chunk was committed, each in the
    order of :data:`~dagflow.monitor.sampling.COUNTERS`). Returns one row per interval:
    ``process`` (worker and pid), ``t`` (its end), ``dt``, the difference of every
    cumulative counter (``d_<name>``), and ``host_running`` and ``host_cpus`` as read at
    its end. Empty without counters.
    """
    from dagflow.monitor.sampling import COUNTERS

    columns = ["process", "t", "dt"]
    if "counters" not in rows or not rows["counters"].notna().any():
        return pd.DataFrame(columns=columns)
    read = rows[rows["counters"].notna()]
    k = len(COUNTERS)
    pairs = [list(v) for v in read["counters"] if len(v) == 2 * k]
    if not pairs:
        return pd.DataFrame(columns=columns)
    before = pd.DataFrame([p[:k] for p in pairs], columns=list(COUNTERS), dtype=float)
    after = pd.DataFrame([p[k:] for p in pairs], columns=list(COUNTERS), dtype=float)
    who = read["worker"].astype(str).to_numpy()[:len(pairs)] if "worker" in read else ""
    out = pd.DataFrame({"process": pd.Series(who, dtype=str) + "/"
                        + after["counters_pid"].astype("Int64").astype(str),
                        "t": after["counters_time"],
                        "dt": after["counters_time"] - before["counters_time"]})
    for c in COUNTERS:
        if c in ("counters_time", "counters_pid", "host_cpus", "host_running"):
            continue
        out[f"d_{c}"] = after[c] - before[c]
    out["host_running"] = after["host_running"]
    out["host_cpus"] = after["host_cpus"]
    out = out.drop_duplicates(["process", "t"])
    return out[out["dt"] > 0].reset_index(drop=True)


def _share(num: pd.Series | None, den: pd.Series) -> float | None:
    if num is None or not num.notna().any():
        return None
    ok = num.notna() & den.notna() & (den > 0)
    total = float(den[ok].sum())
    return float(num[ok].clip(lower=0).sum()) / total if total > 0 else None


@dataclass
class Machine:
    """What the workers' counters say about the run, summed over its intervals.

    Attributes
    ----------
    measured_s
        Seconds of process time covered by the intervals (summed over processes).
    processes
        Worker processes that reported at least two readings.
    cores
        CPU cores a worker process used on average.
    demand
        Threads of a worker process runnable on average (running or in the run queue).
    wait_per_cpu
        Seconds the threads that ran ops (those runnable at least half the time) waited
        in the run queue per CPU second they ran (0: never waited for a CPU; 1: waited
        as long as they ran); all threads' where none was that busy.
    cpus
        CPUs of the machine (as a worker process sees them).
    running
        Runnable threads on the machine, mean of the readings.
    busy, iowait, steal
        Shares of the machine's CPU time: busy, idle waiting for I/O, taken by the
        hypervisor.
    psi_cpu, psi_io
        Share of the time some task waited for a CPU, for I/O (pressure stall
        information; ``None`` where the kernel has none).
    read_bytes, write_bytes
        Storage bytes the worker processes read and wrote.
    """

    measured_s: float = 0.0
    processes: int = 0
    cores: float | None = None
    demand: float | None = None
    wait_per_cpu: float | None = None
    cpus: float | None = None
    running: float | None = None
    busy: float | None = None
    iowait: float | None = None
    steal: float | None = None
    psi_cpu: float | None = None
    psi_io: float | None = None
    read_bytes: int = 0
    write_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(iv: pd.DataFrame) -> Machine:
    """The run's :class:`Machine` from :func:`intervals`."""
    m = Machine()
    if iv is None or iv.empty:
        return m
    dt = iv["dt"].astype(float)
    m.measured_s = float(dt.sum())
    m.processes = int(iv["process"].nunique())
    col = iv.get
    if col("d_proc_cpu_s") is not None:
        m.cores = _share(iv["d_proc_cpu_s"], dt)
        if col("d_proc_wait_s") is not None and iv["d_proc_wait_s"].notna().any():
            m.wait_per_cpu = _share(iv["d_proc_wait_s"], iv["d_proc_cpu_s"])
            busy = iv.get("d_busy_cpu_s")
            if busy is not None and busy.clip(lower=0).sum() > 0:
                m.wait_per_cpu = _share(iv["d_busy_wait_s"], busy)
            if m.wait_per_cpu is None:
                m.wait_per_cpu = 0.0
            demand = iv["d_proc_cpu_s"].clip(lower=0) + iv["d_proc_wait_s"].clip(lower=0)
            m.demand = _share(demand, dt)
    if col("d_host_total_s") is not None:
        total = iv["d_host_total_s"]
        m.busy = _share(col("d_host_busy_s"), total)
        m.iowait = _share(col("d_host_iowait_s"), total)
        m.steal = _share(col("d_host_steal_s"), total)
    if col("d_host_psi_cpu_s") is not None:
        m.psi_cpu = _share(iv["d_host_psi_cpu_s"], dt)
        m.psi_io = _share(col("d_host_psi_io_s"), dt)
    if col("host_running") is not None and iv["host_running"].notna().any():
        # the reading process itself is one of the runnable threads
        m.running = max(0.0, float(iv["host_running"].mean()) - 1.0)
    if col("host_cpus") is not None and iv["host_cpus"].notna().any():
        m.cpus = float(iv["host_cpus"].median())
    for name, key in (("read_bytes", "d_proc_read_bytes"), ("write_bytes",
                                                           "d_proc_write_bytes")):
        if col(key) is not None:
            setattr(m, name, int(iv[key].clip(lower=0).fillna(0).sum()))
    return m


def classify(ran: pd.DataFrame, machine: Machine, *, threads_per_worker: float | None
             ) -> dict[str, dict[str, Any]]:
    """Each node's time split on, waiting for and blocked off the CPU, with its class.

    Parameters
    ----------
    ran
        The rows where an op ran (``node_id``, ``duration_s``, ``cpu_s``).
    machine
        From :func:`summarize`.
    threads_per_worker
        Threads of a worker process (for telling the GIL from other waits).

    Returns
    -------
    dict
        Per node with CPU seconds: ``busy_s``, ``cpu_s``, ``cpu_wait_s``, ``blocked_s``,
        their shares ``on_cpu``, ``waiting_cpu``, ``blocked``, ``class`` and ``why`` (the
        figures that decided it).
    """
    out: dict[str, dict[str, Any]] = {}
    if "cpu_s" not in ran or not ran["cpu_s"].notna().any():
        return out
    measured = ran.dropna(subset=["cpu_s"])
    for node, sub in measured.groupby("node_id", sort=False):
        busy = float(sub["duration_s"].sum())
        cpu = min(busy, float(sub["cpu_s"].clip(lower=0).sum()))
        if busy <= 0 or cpu == 0:  # no CPU at all: not measured (an aggregate's map step)
            continue
        off = busy - cpu
        wait = None if machine.wait_per_cpu is None else min(off, cpu * machine.wait_per_cpu)
        blocked = None if wait is None else off - wait
        entry: dict[str, Any] = {"busy_s": busy, "cpu_s": cpu, "cpu_wait_s": wait,
                                 "blocked_s": blocked, "on_cpu": cpu / busy,
                                 "waiting_cpu": None if wait is None else wait / busy,
                                 "blocked": None if blocked is None else blocked / busy}
        entry["class"], entry["why"] = _class_of(entry, machine, threads_per_worker)
        out[str(node)] = entry
    return out


def _pct(x: float | None) -> str:
    return "?" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


def _class_of(e: Mapping[str, Any], m: Machine, threads_per_worker: float | None
              ) -> tuple[str, str]:
    on = e["on_cpu"]
    if on >= ON_CPU:
        return "cpu", f"{_pct(on)} of its time on the CPU"
    if e["blocked"] is None:
        return "off-cpu", (f"{_pct(1 - on)} of its time off the CPU; the workers measured no "
                           "run-queue wait to tell why")
    wait, blocked = e["waiting_cpu"], e["blocked"]
    if wait >= blocked:
        return "cpu-contention", (
            f"{_pct(wait)} of its time runnable but waiting for a CPU ({m.wait_per_cpu:.2f} s "
            f"in the run queue per CPU second; {_runnable(m)})")
    storage = (m.psi_io is not None and m.psi_io >= IO_PRESSURE) or \
        (m.iowait is not None and m.iowait >= IO_WAIT)
    if storage:
        return "io", (f"{_pct(blocked)} of its time blocked while the machine waited on "
                      f"storage (I/O pressure {_pct(m.psi_io)}, I/O wait {_pct(m.iowait)} of "
                      "the CPUs)")
    if m.demand is not None and threads_per_worker and threads_per_worker >= 2 \
            and LOCK_DEMAND[0] <= m.demand <= LOCK_DEMAND[1]:
        return "lock", (f"{_pct(blocked)} of its time blocked while each worker process had "
                        f"{m.demand:.2f} threads runnable at a time out of "
                        f"{threads_per_worker:.0f}: its threads took turns, waiting for the "
                        "GIL (or another lock), not for the machine")
    return "wait", (f"{_pct(blocked)} of its time blocked, not waiting for a CPU (its "
                    f"threads' run-queue wait accounts for {_pct(e['waiting_cpu'])}), with "
                    f"storage quiet (I/O pressure {_pct(m.psi_io)}) and {_demand(m)}: a "
                    "wait the machine does not attribute (sleep, network, remote storage, "
                    "small synchronous writes)")


def _runnable(m: Machine) -> str:
    parts = []
    if m.running is not None and m.cpus:
        parts.append(f"{m.running:.1f} runnable threads on {m.cpus:.0f} CPUs")
    if m.psi_cpu is not None:
        parts.append(f"CPU pressure {_pct(m.psi_cpu)}")
    if m.steal:
        parts.append(f"steal {_pct(m.steal)}")
    return ", ".join(parts) or "the machine's figures are missing"


def _demand(m: Machine) -> str:
    if m.demand is None:
        return "the workers' runnable threads unknown"
    return f"{m.demand:.2f} threads of each worker process runnable at a time"


def machine_busy(m: Machine) -> bool:
    """Whether other work held the CPUs (threads waited for a CPU half as long as they
    ran, or CPU pressure above 50 %)."""
    return bool((m.wait_per_cpu is not None and m.wait_per_cpu >= 0.5)
                or (m.psi_cpu is not None and m.psi_cpu >= 0.5))


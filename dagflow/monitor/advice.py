"""Recommendations with their evidence and their measured effect, and findings.

A **recommendation** names a setting to change. Each kind fires only when this run's
measurements show the condition it fixes (:class:`RunFacts`, with the off-CPU
classification of :mod:`dagflow.monitor.evidence`) and the run is large enough to
judge, and states that evidence. What it promises is what the benchmark that checks it
measured (``python -m benchmarks advice``: the kind applied on a workload where it
fires, side by side with the setting it replaces, alternated): the effects are stored in
``effects.json`` beside this module, with how they were measured. A kind whose effect was
not measured, or was measured as no gain, does not fire: the run gets a finding instead.

A **finding** is what the run saw that explains its time (the machine was busy, the
threads waited for the GIL, a node slowed down, retries), with its evidence, and
promises nothing.

=================  ==========================================================  ============
kind               fires when                                                  setting
=================  ==========================================================  ============
``larger-chunks``  threads idle while tasks are short against what a task      chunk size
                   costs to schedule, with enough chunks
``smaller-chunks`` threads idle with fewer than two chunks per thread, and     chunk size
                   CPUs free for them (not taken by other work)
``more-threads``   a node blocked off the CPU by a wait the machine does not   threads per
                   see (not CPU contention, storage or the GIL)                worker
``gpu``            a CPU-bound node whose op has a GPU implementation          device: gpu
=================  ==========================================================  ============
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dagflow.monitor.evidence import Machine, machine_busy

__all__ = ["EFFECTS_PATH", "KINDS", "Finding", "Recommendation", "RunFacts", "advise",
           "measured_effects"]

#: Where the benchmark stores the measured effect of each recommendation kind.
EFFECTS_PATH = Path(__file__).with_name("effects.json")
KINDS = ("larger-chunks", "smaller-chunks", "more-threads", "gpu")
#: Scheduling cost of one Dask task, seconds (measured; see DESIGN.md).
TASK_OVERHEAD_S = 0.0015
#: A measured change must shorten runs by at least this much for its kind to fire.
MIN_MEASURED_GAIN = 0.05
#: Processing seconds below which a run is too short to judge chunking or threads.
MIN_RUN_S = 2.0


@dataclass(frozen=True)
class Recommendation:
    """What to change, the evidence for it, and what it brought where it was measured."""

    title: str
    reason: str
    effect: str
    setting: str | None = None
    node: str | None = None
    kind: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Finding:
    """What the run saw that explains its time; promises nothing."""

    title: str
    evidence: str
    kind: str
    node: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunFacts:
    """The figures advice is judged on (built by :mod:`dagflow.monitor.analysis`)."""

    stats: pd.DataFrame
    nodes: Mapping[str, Mapping[str, Any]]
    items: int
    chunk_size: float | None
    chunks: int | None
    threads: int | None
    workers: int | None
    processing_s: float
    busy_s: float
    idle_fraction: float | None
    machine: Machine
    classes: Mapping[str, Mapping[str, Any]]
    memory_peak_fraction: float | None = None
    gpu_capable: Mapping[str, bool] = field(default_factory=dict)
    trend: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    warmup: Mapping[str, float] = field(default_factory=dict)
    errors: pd.DataFrame | None = None
    max_chunk_size: int = 64


@functools.cache
def _load_effects(path: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def measured_effects(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The measured effect of each recommendation kind (empty where none was measured)."""
    data = _load_effects(str(path or EFFECTS_PATH))
    return {k: v for k, v in (data.get("effects") or {}).items() if isinstance(v, dict)}


def _pct(x: float | None) -> str:
    return "?" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


def _promise(effect: Mapping[str, Any]) -> str:
    change = float(effect["change"])
    return (f"runs took {_pct(-change)} less time where the benchmark applied it "
            f"({effect['baseline_s']:.2f} s with {effect['baseline']} against "
            f"{effect['applied_s']:.2f} s with {effect['applied']}; {effect['workload']}; "
            f"{effect['how']})")


def _gain(effect: Mapping[str, Any] | None) -> bool:
    try:
        return effect is not None and float(effect["change"]) <= -MIN_MEASURED_GAIN
    except (KeyError, TypeError, ValueError):
        return False


def advise(f: RunFacts, *, effects: Mapping[str, Mapping[str, Any]] | None = None
           ) -> tuple[list[Recommendation], list[Finding]]:
    """The run's recommendations and findings.

    ``effects`` default to :func:`measured_effects`.
    """
    effects = measured_effects() if effects is None else effects
    recs: list[Recommendation] = []
    finds: list[Finding] = []
    candidates = [*_chunking(f), *_threads(f), *_gpu(f)]
    for rec in candidates:
        effect = effects.get(rec.kind or "")
        if _gain(effect):
            recs.append(Recommendation(**{**asdict(rec), "effect": _promise(effect),
                                          "measured": dict(effect)}))
        else:
            why = ("its effect has not been measured on a workload where it fires"
                   if effect is None else
                   f"the benchmark that applied it measured no gain ({_pct(-effect['change'])} "
                   "less time)")
            finds.append(Finding(f"Not recommended: {rec.title.lower()}",
                                 f"{rec.reason}; but {why}", f"unproven-{rec.kind}", rec.node))
    finds.extend(_findings(f))
    return recs, finds


def _large_enough(f: RunFacts) -> bool:
    """Enough items for every thread to take a few, and a run long enough that what a
    setting changes is not lost in starting and finishing it."""
    return bool(f.threads) and f.items >= 4 * (f.threads or 1) \
        and f.processing_s >= MIN_RUN_S


def _chunking(f: RunFacts) -> list[Recommendation]:
    out: list[Recommendation] = []
    if not (f.chunk_size and f.chunks and f.threads and f.idle_fraction is not None):
        return out
    threads, chunk, chunks = int(f.threads), float(f.chunk_size), int(f.chunks)
    ran = f.stats[f.stats["count"] > 0]
    nodes = max(1, len(ran))
    evidence = {"items": f.items, "chunks": chunks, "chunk_size": chunk, "threads": threads,
                "idle_fraction": f.idle_fraction, "busy_s": f.busy_s,
                "processing_s": f.processing_s}
    if not _large_enough(f) or f.idle_fraction < 0.2:
        return out
    per_task = f.busy_s / (chunks * nodes)
    overhead = TASK_OVERHEAD_S * chunks * (nodes + 1) / (threads * max(f.processing_s, 1e-9))
    if chunks >= 4 * threads and overhead >= 0.05 and chunk < max(f.max_chunk_size, 256):
        target = math.ceil(chunk * 0.05 / max(per_task, 1e-9))
        target = int(min(max(2 * chunk, target), max(f.max_chunk_size, 2 * chunk),
                         max(1, f.items // (4 * threads))))
        if target > chunk:
            out.append(Recommendation(
                "Use larger chunks",
                f"threads were idle {_pct(f.idle_fraction)} of the run while a node's task "
                f"ran {per_task * 1e3:.1f} ms on average for {chunk:.0f} items, against about "
                f"{TASK_OVERHEAD_S * 1e3:.1f} ms to schedule a task: scheduling takes about "
                f"{_pct(overhead)} of the threads' time ({chunks} chunks on {threads} threads)",
                "", setting=f"--chunk-size {target} (dagflow.chunk-size)",
                kind="larger-chunks",
                evidence={**evidence, "task_s": per_task, "scheduling_share": overhead,
                          "target": target}))
    m = f.machine
    # idle threads only help where a CPU is free for them: on a machine whose CPUs are
    # taken (measured: threads wait for one), more chunks add their cost and no speed
    free = m.wait_per_cpu is not None and not machine_busy(m)
    if chunks < 2 * threads and f.idle_fraction >= 0.3 and chunk > 1 and free:
        target = max(1, f.items // (4 * threads))
        if target < chunk:
            out.append(Recommendation(
                "Use smaller chunks",
                f"threads were idle {_pct(f.idle_fraction)} of the run with {chunks} chunks "
                f"for {threads} threads, while the CPUs had room for them (threads waited "
                f"{m.wait_per_cpu:.2f} s for a CPU per CPU second, CPU pressure "
                f"{_pct(m.psi_cpu)}): some threads had nothing to do while the last chunks "
                "ran",
                "", setting=f"--chunk-size {target} (dagflow.chunk-size)",
                kind="smaller-chunks", evidence={**evidence, "target": target,
                                                 "machine": m.to_dict()}))
    return out


def _threads(f: RunFacts) -> list[Recommendation]:
    out: list[Recommendation] = []
    m = f.machine
    if not _large_enough(f) or m.wait_per_cpu is None:
        return out
    if f.memory_peak_fraction is not None and f.memory_peak_fraction >= 0.6:
        return out
    per_worker = (f.threads or 1) / max(1, f.workers or 1)
    for node, c in f.classes.items():
        if node not in f.stats.index or c.get("class") != "wait":
            continue
        share = float(f.stats.loc[node, "share"])
        # blocked most of its time, and clearly more than it waited for a CPU (under
        # heavy contention part of a thread's run-queue wait can escape the estimate)
        if c["blocked"] < 0.5 or c["blocked"] < 2 * c["waiting_cpu"] or share < 0.25:
            continue
        target = int(2 * per_worker)
        out.append(Recommendation(
            f"More threads per worker for {node!r}",
            f"{node!r} took {_pct(share)} of the op time and spent {c['why']}",
            "", setting=f"--threads-per-worker {target} "
                        "(dagflow.cluster.threads-per-worker)",
            node=node, kind="more-threads",
            evidence={"share": share, **{k: c[k] for k in ("on_cpu", "waiting_cpu",
                                                           "blocked")},
                      "machine": m.to_dict(), "threads_per_worker": per_worker,
                      "target": target}))
        break  # one setting for the whole cluster
    return out


def _gpu(f: RunFacts) -> list[Recommendation]:
    out: list[Recommendation] = []
    if not _large_enough(f):
        return out
    for node, row in f.stats[f.stats["count"] > 0].iterrows():
        plan = f.nodes.get(str(node), {})
        op = plan.get("op")
        c = f.classes.get(str(node), {})
        if not (op and f.gpu_capable.get(op) and plan.get("device") not in ("gpu",)
                and row["share"] >= 0.25 and c.get("class") == "cpu"):
            continue
        out.append(Recommendation(
            f"Run {node!r} on the GPU",
            f"{node!r} ({op}) took {_pct(row['share'])} of the op time, {c['why']}; {op} "
            "has a GPU implementation",
            "", setting=f"device: gpu on node {node!r}, on a dask-cuda cluster",
            node=str(node), kind="gpu",
            evidence={"share": float(row["share"]), "on_cpu": c.get("on_cpu")}))
    return out


def _findings(f: RunFacts) -> list[Finding]:
    out: list[Finding] = []
    m = f.machine
    shares = f.stats["share"] if len(f.stats) else pd.Series(dtype=float)
    contended = [n for n, c in f.classes.items() if c.get("class") == "cpu-contention"
                 and shares.get(n, 0) >= 0.2]
    if contended:
        figures = []
        if m.wait_per_cpu is not None:
            figures.append(f"worker threads waited {m.wait_per_cpu:.2f} s in the run queue "
                           "per CPU second they ran")
        if m.psi_cpu is not None:
            figures.append(f"some task waited for a CPU {_pct(m.psi_cpu)} of the time")
        if m.running is not None and m.cpus:
            figures.append(f"{m.running:.1f} other runnable threads on {m.cpus:.0f} CPUs")
        if m.cores is not None:
            figures.append(f"the worker processes used {m.cores:.2f} cores each")
        if m.demand is not None:
            figures.append(f"with {m.demand:.2f} threads each runnable at a time")
        if contended:
            figures.append(f"nodes waiting most: {', '.join(contended)}")
        out.append(Finding(
            "The machine was busy: threads waited for a CPU",
            "; ".join(figures) + ". More threads would not make these nodes faster: the "
            "CPUs were taken (by this run or by other processes)", "cpu-contention"))
    for node, c in f.classes.items():
        share = float(shares.get(node, 0.0))
        if share < 0.2:
            continue
        if c.get("class") == "lock":
            out.append(Finding(f"{node!r} waited for the GIL", c["why"] + "; more threads "
                               "per worker would not help, more worker processes might",
                               "lock", node))
        elif c.get("class") == "io":
            out.append(Finding(f"{node!r} waited on storage", c["why"] + "; more threads "
                               "add to the queue of a busy device", "io", node))
        elif c.get("class") == "off-cpu":
            out.append(Finding(f"{node!r} spent its time off the CPU", c["why"], "off-cpu",
                               node))
    if f.memory_peak_fraction is not None and f.memory_peak_fraction > 0.8:
        out.append(Finding(
            "Workers came close to their memory limit",
            f"worker memory peaked at {_pct(f.memory_peak_fraction)} of its limit; Dask "
            "pauses a worker at 80% and restarts it at 95%", "memory"))
    for node, info in f.trend.items():
        if info.get("kind"):
            lo, hi = info["ci"]
            out.append(Finding(
                f"{node!r}: {info['kind']} during the run",
                f"its items' {'CPU ' if info.get('basis') == 'cpu' else ''}time per unit "
                f"of work changed {info['change']:+.0%} from the first chunk to the last "
                f"(95% interval {lo:+.0%} to {hi:+.0%}; "
                f"p = {info['p_value']:.2g}, {info['chunks']} chunks, {info['items']} items; "
                f"{info['test']})", info["kind"], node))
    for node, seconds in f.warmup.items():
        if node in f.stats.index and f.stats.loc[node, "total_s"] > 0:
            share = seconds / float(f.stats.loc[node, "total_s"])
            if share >= 0.1 and seconds >= 0.05:
                out.append(Finding(
                    f"{node!r} warms up",
                    f"its first item on each worker process took {seconds:.2f} s more than "
                    f"the model expects ({_pct(share)} of the node's time): one-time costs "
                    "(imports, caches) a longer run spreads thinner", "warm-up", node))
    errors = f.errors
    if errors is not None and len(errors) and f.items:
        retries = int(errors["retries"].sum())
        if retries > 0.05 * f.items:
            transient = errors[errors["error_class"] == "transient"]
            out.append(Finding(
                "Many retries",
                f"{retries} retries for {f.items} items"
                + (f", {int(transient['failed'].sum())} items failed transiently"
                   if len(transient) else "") + ": the storage or service behind them "
                "was flaky", "retries"))
        timeouts = errors[errors["error_class"] == "timeout"]
        if len(timeouts) and int(timeouts["failed"].sum()):
            out.append(Finding(
                "Items timed out",
                f"{int(timeouts['failed'].sum())} items hit the per-item timeout "
                "(dagflow.timeout or a node's timeout)", "timeout"))
    return out

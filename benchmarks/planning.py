"""Benchmark 3: planning and compiling a workflow over a million items.

A generated Parquet manifest lists the items with their headers (width, height,
channels, dtype, format, orientation, size, mtime), so nothing is read from disk: the
files need not exist. In a fresh process, the client's path of :func:`dagflow.run` is
timed step by step -- resolving the inputs, resolving the nodes, reading the checkpoint,
selecting the items, planning the batch (memory model, oversize items, chunks,
:func:`dagflow.runtime.plan.prepare_batch` when present) -- and then every chunk is
compiled to its Dask graph, window after window as the runtime does (each window is
built and dropped), counting the tasks. The process's peak resident memory is reported
(``ru_maxrss``), with the memory it had before starting.

The public :func:`dagflow.runtime.plan.plan` (the ``dagflow plan`` command) is also
timed end to end in a process of its own when it exists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from benchmarks.common import HERE, print_table, save_results
from benchmarks.data import manifest

__all__ = ["run"]

_CHILD = r"""
import json, os, resource, sys, time
t_start = time.perf_counter()
import dagflow
from dagflow import config
from dagflow.compile import compile_chunks, node_tasks
from dagflow.compile.spec import RunContext
from dagflow.inputs import resolve_inputs
from dagflow.recovery.checkpoint import Checkpoint, load_done
from dagflow.runtime.run import select_items
from benchmarks.kernels import thumbnail_workflow

def rss_mib():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

manifest_path, output, mode = sys.argv[1], sys.argv[2], sys.argv[3]
wf = thumbnail_workflow().validate()
out = {"imports_s": time.perf_counter() - t_start, "rss_before_mib": rss_mib()}
steps = {}
def step(name, fn):
    t = time.perf_counter()
    value = fn()
    steps[name] = time.perf_counter() - t
    return value

if mode == "plan-api":
    from dagflow.runtime.plan import plan
    result = step("plan()", lambda: plan(wf, manifest_path, output))
    out["chunks"] = getattr(result, "chunks", None)
else:
    inputs = step("resolve inputs", lambda: resolve_inputs(manifest_path))
    tasks = step("resolve nodes", lambda: node_tasks(wf))
    state_dir = os.path.join(output, config.get("state-dir"))
    previous = step("read checkpoint", lambda: load_done(state_dir) if os.path.isdir(state_dir)
                    else Checkpoint())
    to_run, done = step("select items", lambda: select_items(inputs.items, tasks, previous))
    annotations = {nid: {"retries": 1} for nid in tasks}
    try:
        from dagflow.runtime.capacity import local_capacity
        from dagflow.runtime.plan import prepare_batch
    except ImportError:
        prepare_batch = None
    if prepare_batch is not None:
        capacity = local_capacity(None)
        batch = step("plan batch", lambda: prepare_batch(
            wf, tasks, to_run, capacity, items=len(inputs.items), already_done=done,
            output=output))
        tasks = batch.tasks
        chunks = step("make chunks", lambda: batch.make_chunks(batch.items, batch.chunk_size))
        annotations = batch.annotations(annotations)
        chunk_annotations = batch.chunk_annotations
    else:
        from dagflow.compile import choose_chunk_size, make_chunks
        size = choose_chunk_size(len(to_run), os.cpu_count() or 1,
                                 minimum=int(config.get("min-chunk-size")),
                                 maximum=int(config.get("max-chunk-size")))
        chunks = step("make chunks", lambda: make_chunks(to_run, size))
        chunk_annotations = None
    ctx = RunContext(run_id="plan", run_dir=output, output_dir=output, state_dir=state_dir,
                     workflow=wf.name)
    window = max(1, int(config.get("runtime.window")))
    def compile_all():
        n_tasks = 0
        for i in range(0, len(chunks), window):
            compiled = compile_chunks(tasks, ctx, chunks[i:i + window], token="bench",
                                      annotations=annotations,
                                      chunk_annotations=chunk_annotations)
            n_tasks += len(compiled)
            if chunk_annotations is not None:  # annotations are callables: resolve them
                for layer in compiled.graph.layers.values():
                    res = (layer.annotations or {}).get("resources")
                    if callable(res):
                        for key in layer:
                            res(key)
        return n_tasks
    out["tasks"] = step("compile all chunks", compile_all)
    out["chunks"] = len(chunks)
    out["items"] = len(inputs.items)
    out["window"] = window
out["steps"] = steps
out["total_s"] = sum(steps.values())
out["rss_peak_mib"] = rss_mib()
print(json.dumps(out))
"""


def _child(mode: str, path: str, output: str) -> dict[str, Any]:
    root = os.fspath(HERE.parent)
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", _CHILD, path, output, mode], env=env,
                          cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"planning child failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(items: int = 1_000_000, repeat: int = 1, **_: Any) -> dict[str, Any]:
    path = os.fspath(manifest(items))
    output = os.fspath(HERE / ".data" / "out" / "planning")
    print(f"planning: {items} items from {path}", flush=True)
    runs = [_child("steps", path, output) for _ in range(max(1, repeat))]
    best = min(runs, key=lambda r: r["total_s"])
    rows = [[name, f"{seconds:.2f}", f"{seconds / items * 1e6:.1f}"]
            for name, seconds in best["steps"].items()]
    rows.append(["total", f"{best['total_s']:.2f}", f"{best['total_s'] / items * 1e6:.1f}"])
    api = None
    try:
        import dagflow.runtime.plan  # noqa: F401
        api = _child("plan-api", path, output)
    except ImportError:
        pass
    if api is not None:
        rows.append(["dagflow.runtime.plan.plan() end to end (own process)",
                     f"{api['total_s']:.2f}", f"{api['total_s'] / items * 1e6:.1f}"])
    print_table(f"Planning and compiling {items:,} items (fastest of {len(runs)}); "
                f"{best['chunks']:,} chunks, {best['tasks']:,} tasks in windows of "
                f"{best['window']} chunks", ["step", "seconds", "us per item"], rows)
    memory_rows = [["steps above", f"{best['rss_before_mib']:.0f}",
                    f"{best['rss_peak_mib']:.0f}"]]
    if api is not None:
        memory_rows.append(["plan()", f"{api['rss_before_mib']:.0f}",
                            f"{api['rss_peak_mib']:.0f}"])
    print_table("Client memory (peak resident, MiB)", ["process", "after imports", "peak"],
                memory_rows)
    payload = {"items": items, "runs": runs, "plan_api": api}
    print("results:", save_results("planning", payload))
    return payload

"""Write ``benchmarks/README.md`` from the results files: ``python -m benchmarks.readme``.

The README holds, for every benchmark, the tables of its latest results file
(``benchmarks/results/<benchmark>-<time>.json``), with the machine, the load and the
command that made them. Every results file is kept: the history is there, not in the
README.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import HERE, RESULTS

__all__ = ["latest_results", "main", "render"]

INTRO = """\
# dagflow benchmarks

dagflow against what people run instead of it, measured side by side in one process
run: every baseline a warmed `ProcessPoolExecutor` of one process per core, single-
threaded kernels, chunks of images per task; the variants run in turn, their order
rotated every repetition; each figure the median of the repetitions, every comparison a
ratio of medians from the same run. A shared machine is noisy: the *spread* column is
(max - min) / median of the repetitions, and the CPU-time columns (the whole process
tree, ended children included) are steadier than wall time.

```
python -m benchmarks --help
python -m benchmarks thumbnails microscopy --quick   # small workloads, indicative only
python -m benchmarks thumbnails                      # 480 images, median of 3
python -m benchmarks microscopy                      # 64 scans
python -m benchmarks all --wait-for-load 1.5         # wait (<= 10 min each) for quiet
python -m benchmarks.readme                          # this file, from the results
```

{benchmarks}

Data is generated deterministically into `benchmarks/.data/` (git-ignored) and reused.
Each run writes `benchmarks/results/<benchmark>-<time>.json` (kept in git: the history)
with the machine, the command, the load, every measurement and the tables printed;
the tables below are each benchmark's latest. The narrative of the rounds before the
results files were kept is in [`results/HISTORY.md`](results/HISTORY.md).
"""


#: ``(benchmark, what, modules)`` for the README's list.
BENCHMARKS = [
    ("thumbnails", "2048x1536 photo-like JPEGs -> auto-orient -> 512 px long side -> "
     "Gaussian 1.5 -> JPEG 85: OpenCV (`IMREAD_REDUCED_COLOR_4`), Pillow (`draft`), "
     "simplejpeg + OpenCV, pyvips (one thread per process, and its own threads in one "
     "process), dagflow's kernels in the same pool, dagflow on a warm cluster; the "
     "per-core limit (1/4-scale decode alone); CPU per stage; outputs against an exact "
     "reference", "`thumbnails.py`, `kernels.py`"),
    ("cold", "`dagflow run` as a fresh process (imports, its cluster, its report) on the "
     "thumbnail workload against a fresh Pillow-draft `ProcessPoolExecutor` script; "
     "dagflow's fixed cost (the command on 8 images); `dagflow --help`", "`cold.py`"),
    ("s3", "the thumbnail workload with its inputs listed from and its outputs and state "
     "written to `s3://` (moto's S3 server in its own process on 127.0.0.1, sharing the "
     "cores) against the same run on local files, alternated; requests and bytes per "
     "image by kind through a recording proxy", "`s3.py`"),
    ("microscopy", "16-bit 2048x2048 TIFFs -> normalize -> Gaussian 2 -> 8-bit PNG: "
     "tifffile + OpenCV, tifffile + scipy, dagflow's kernels, dagflow; CPU per stage; "
     "outputs against a float64 reference", "`microscopy.py`"),
    ("overhead", "a no-op workflow over 100,000 items against the same header reads in a "
     "pool: dagflow's cost per item", "`overhead.py`, `noop.py`"),
    ("planning", "plan and compile a 1,000,000-item manifest: time per step, peak RSS",
     "`planning.py`"),
    ("safety", "checkpoints and monitoring on/off: each feature's own CPU", "`safety.py`"),
    ("memory", "peak RSS of each worker on the thumbnail workload", "`memory.py`"),
    ("large-image", "a TIFF above the workers' budget, processed tiled",
     "`large_image.py`"),
    ("gpu", "`local-cuda` against the CPU", "`gpu.py`"),
    ("env", "the thumbnail kernels under four `MALLOC_*` settings", "`envbench.py`"),
    ("prediction", "three workloads (thumbnails; 16-bit TIFFs through four filters; mixed "
     "sizes with a condition) run twice on a warm cluster: the second run's prediction "
     "(planned from the first) against what it took, per node, in total and on CPU "
     "seconds, beside a third identical run (the noise floor)", "`prediction.py`"),
    ("advice", "each recommendation kind applied on a workload where the report calls for "
     "it, alternated with its baseline; writes the measured effects to "
     "`dagflow/monitor/effects.json`, which the recommendations promise", "`advice.py`"),
]


def latest_results(directory: Path = RESULTS) -> dict[str, tuple[Path, dict[str, Any]]]:
    """``{benchmark: (path, results)}`` of the newest results file of each benchmark."""
    latest: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        name = body.get("benchmark")
        if not name or not body.get("tables"):
            continue
        if name not in latest or body.get("time", "") >= latest[name][1].get("time", ""):
            latest[name] = (path, body)
    return latest


def _machine(info: dict[str, Any]) -> str:
    hardware = ", ".join(str(v) for v in (info.get("cpu"), f"{info.get('cores')} cores",
                                           info.get("memory"), info.get("os")) if v)
    skip = {"cpu", "cores", "memory", "os", "load_1min"}
    software = ", ".join(f"{k} {v}" for k, v in info.items() if k not in skip and v)
    return f"{hardware}; {software}"


def _table(table: dict[str, Any]) -> str:
    lines = [f"**{table['title']}**", "",
             "| " + " | ".join(table["columns"]) + " |",
             "|" + "|".join("---" for _ in table["columns"]) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table["rows"]]
    return "\n".join(lines)


def render(latest: dict[str, tuple[Path, dict[str, Any]]]) -> str:
    """The README: the introduction, then each benchmark's latest tables."""
    listing = "\n".join(["| benchmark | what | modules |", "|---|---|---|"]
                        + [f"| `{name}` | {what} | {modules} |"
                           for name, what, modules in BENCHMARKS])
    parts = [INTRO.format(benchmarks=listing), "## Latest results\n"]
    if not latest:
        parts.append("No results yet: run a benchmark.\n")
    for name in sorted(latest):
        path, body = latest[name]
        load = body.get("load")
        during = (f"; load average {load[0]:.1f} before, {load[1]:.1f} after"
                  if isinstance(load, list) and len(load) == 2 else "")
        parts.append(f"### {name}\n\n"
                     f"{body.get('time', '?')} on {_machine(body.get('machine', {}))}"
                     f"{during}.\n\n"
                     f"`{body.get('command', 'python -m benchmarks ' + name)}` -> "
                     f"[`results/{path.name}`](results/{path.name})\n")
        parts.extend(_table(table) + "\n" for table in body["tables"])
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Write the README next to this module; print where."""
    del argv
    target = HERE / "README.md"
    target.write_text(render(latest_results()), encoding="utf-8")
    print(f"wrote {target}", file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

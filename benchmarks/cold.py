"""Benchmark: the command a batch user types, cold, against the script they would write.

``dagflow run`` as a fresh process (it imports dagflow, starts its embedded
``LocalCluster``, plans, runs, prints its summary and writes its report) over generated
2048x1536 photo-like JPEGs with the thumbnail workflow (auto-orient -> 512 px long side
-> Gaussian 1.5 -> JPEG 85), against a fresh ``python`` process running the 20-line
script a user writes instead: Pillow ``draft()`` + ``exif_transpose`` + ``thumbnail`` +
``GaussianBlur`` + ``save`` in a ``ProcessPoolExecutor`` of one process per core, one
native thread each, chunks of 8. Both start from nothing: the time is the process's wall
time, imports and process start-up included. The two alternate, their order rotated
every repetition; the medians are compared.

Also measured, alternated the same way: dagflow's fixed cost (the same command on 8
images, where the images cost almost nothing), and ``dagflow --help`` beside
``python -c pass`` (the interpreter's own start-up).

``DAGFLOW_COLD_COMPARE=DIR`` adds the same three dagflow commands run with another
dagflow source tree first on ``PYTHONPATH`` (a checkout of an earlier commit, say), in the
same alternation: a before/after in one run.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import (
    DATA,
    fmt_ratio,
    interleaved,
    load_average,
    print_table,
    save_results,
)
from benchmarks.data import corpus_files, photo_corpus

__all__ = ["BASELINE", "run"]

#: The script a user writes instead of dagflow (argv: input directory, output
#: directory, processes).
BASELINE = '''\
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageFilter, ImageOps


def thumbnail(path, out_dir):
    with Image.open(path) as im:
        im.draft("RGB", (im.width // 4, im.height // 4))  # DCT-scaled decode
        im = ImageOps.exif_transpose(im)
        im.thumbnail((512, 512))
        im = im.filter(ImageFilter.GaussianBlur(1.5))
        im.save(os.path.join(out_dir, Path(path).stem + ".jpg"), quality=85)


if __name__ == "__main__":
    source, out_dir, processes = sys.argv[1], sys.argv[2], int(sys.argv[3])
    paths = sorted(str(p) for p in Path(source).glob("*.jpg"))
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(thumbnail, paths, [out_dir] * len(paths), chunksize=8))
    print(f"{len(paths)} thumbnails")
'''

WORKFLOW = """\
name: thumbnails
nodes:
  - {id: load, op: load, params: {auto_orient: true}}
  - {id: small, op: resize, after: [load], params: {long_side: 512}}
  - {id: blur, op: gaussian, after: [small], params: {sigma: 1.5}}
  - {id: save, op: save, after: [blur], params: {format: jpeg, quality: 85}}
"""

#: Images of the fixed-cost measurement.
FIXED_IMAGES = 8


def _inputs(images: int) -> Path:
    """A directory holding exactly the first ``images`` corpus JPEGs (hard links)."""
    files = corpus_files(photo_corpus(images), images)
    directory = DATA / f"cold-{images}"
    if len(list(directory.glob("*.jpg"))) != images:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for f in files:
            try:
                os.link(f, directory / f.name)
            except OSError:
                shutil.copyfile(f, directory / f.name)
    return directory


def _environment() -> dict[str, str]:
    """One native thread per process, as in the other benchmarks' pools and dagflow's
    workers; the modules' bytecode cached, as in an installed package (the untimed first
    run of each command writes it where PYTHONDONTWRITEBYTECODE kept it from being
    written: otherwise every process would compile dagflow's modules again)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _timed(argv: list[str], env: dict[str, str], *, expect: int = 0) -> dict[str, Any]:
    """Run ``argv`` as a fresh process: its wall time, and when its first line of output
    came (``dagflow run``'s summary)."""
    t0 = time.perf_counter()
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        first_s = time.perf_counter() - t0
        out = first + proc.stdout.read()
        err = proc.stderr.read()
        code = proc.wait()
    seconds = time.perf_counter() - t0
    if code != expect:
        raise RuntimeError(f"{' '.join(argv)} exited {code}:\n{out[-2000:]}\n{err[-2000:]}")
    return {"seconds": seconds, "first_output_s": first_s}


def _source(env: dict[str, str]) -> str:
    """Where the measured ``dagflow`` command imports dagflow from, and its commit."""
    where = subprocess.run([sys.executable, "-c", "import dagflow; print(dagflow.__file__)"],
                           env=env, capture_output=True, text=True, cwd="/").stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(where).parent).stdout.strip()
    return f"{where} ({commit or 'not a git checkout'})"


def _fresh(path: Path) -> str:
    shutil.rmtree(path, ignore_errors=True)
    return os.fspath(path)


def run(images: int = 480, repeat: int = 3, quick: bool = False, workers: int | None = None,
        **_: Any) -> dict[str, Any]:
    """Run the cold benchmark and print its tables; returns what is written to the
    results file."""
    if quick:
        images = min(images, 80)
    n = workers or os.cpu_count() or 1
    python = sys.executable
    dagflow = os.fspath(Path(python).with_name("dagflow"))
    work = DATA / "cold"
    work.mkdir(parents=True, exist_ok=True)
    script = work / "pillow_pool.py"
    script.write_text(BASELINE, encoding="utf-8")
    workflow = work / "thumbnails.yaml"
    workflow.write_text(WORKFLOW, encoding="utf-8")
    source, few = _inputs(images), _inputs(FIXED_IMAGES)
    env = _environment()
    print(f"cold: {images} images, {n} processes, {repeat} repetitions, load "
          f"{load_average():.1f}", flush=True)

    def cli(inputs: Path, out: str, environ: dict[str, str] = env,
            options: tuple[str, ...] = ()) -> dict[str, Any]:
        return _timed([dagflow, "run", os.fspath(workflow), "-i", os.fspath(inputs), "-o",
                       _fresh(work / out), "--no-progress", *options], environ)

    def pillow_pool() -> dict[str, Any]:
        out = _fresh(work / "pillow-out")
        os.makedirs(out)
        return _timed([python, os.fspath(script), os.fspath(source), out, str(n)], env)

    commands = {
        "dagflow run": lambda: cli(source, "dagflow-out"),
        "pillow-draft pool script": pillow_pool,
        f"dagflow run, {FIXED_IMAGES} images": lambda: cli(few, "dagflow-few"),
        "dagflow --help": lambda: _timed([dagflow, "--help"], env),
        "python -c pass": lambda: _timed([python, "-c", "pass"], env),
        # one worker process starting instead of one per core (Dask's default here)
        f"dagflow run --n-workers 1 --threads-per-worker {n}":
            lambda: cli(source, "dagflow-threads", options=(
                "--n-workers", "1", "--threads-per-worker", str(n))),
    }
    compare = os.environ.get("DAGFLOW_COLD_COMPARE")
    if compare:
        common.COMMAND = f"DAGFLOW_COLD_COMPARE={compare} {common.COMMAND}"
        other = {**env, "PYTHONPATH": os.pathsep.join(
            p for p in (compare, env.get("PYTHONPATH")) if p)}
        commands.update({
            "dagflow run [compare]": lambda: cli(source, "dagflow-out", other),
            f"dagflow run, {FIXED_IMAGES} images [compare]":
                lambda: cli(few, "dagflow-few", other),
            "dagflow --help [compare]": lambda: _timed([dagflow, "--help"], other),
        })
    summaries: dict[str, list[float]] = {name: [] for name in commands}

    def recording(name: str) -> Any:
        def call() -> dict[str, Any]:
            out = commands[name]()
            summaries[name].append(out.pop("first_output_s"))
            return out
        return call

    calls = {name: recording(name) for name in commands}
    load_before = load_average()
    # one untimed run of each first: the page cache holds the images and the packages
    measured = interleaved(calls, repeat, warmup=list(calls),
                           log=lambda s: print(s, flush=True))
    load_after = load_average()
    for name, values in summaries.items():
        measured[name].extra["first_output_s"] = values[1:]  # the warm-up's left out
    med = {k: m.median for k, m in measured.items()}
    summary_at = {k: statistics.median(v[1:]) for k, v in summaries.items() if v[1:]}
    dagflow_rate = images / med["dagflow run"]
    pool_rate = images / med["pillow-draft pool script"]
    ratio = dagflow_rate / pool_rate
    fixed = med[f"dagflow run, {FIXED_IMAGES} images"]
    rows = [[name, f"{m.median:.2f}",
             f"{summary_at[name]:.2f}" if name.startswith("dagflow run") else "",
             f"{m.spread:.0%}",
             f"{images / m.median:.1f}" if name.startswith(("dagflow run", "pillow"))
             and "8 images" not in name else ""]
            for name, m in measured.items()]
    print_table(f"Cold: fresh processes, {images} x 2048x1536 JPEG -> 512 px, Gaussian 1.5, "
                f"JPEG 85; {n} processes; median of {repeat}",
                ["command", "median s (to exit)", "summary printed at (s)", "spread",
                 "images/s"], rows)
    targets = [
        ["`dagflow run` ÷ the Pillow-draft pool script (throughput), target >= 1.0",
         fmt_ratio(ratio)],
        [f"dagflow's fixed cost: `dagflow run` on {FIXED_IMAGES} images (s), target < 1.5",
         f"{fixed:.2f}"],
        ["`dagflow --help` (s), target < 0.3", f"{med['dagflow --help']:.2f}"],
        ["`dagflow --help` - `python -c pass` (s)",
         f"{med['dagflow --help'] - med['python -c pass']:.2f}"],
    ]
    if compare:
        targets += [
            ["[compare] `dagflow run` ÷ the Pillow-draft pool script",
             fmt_ratio(med["pillow-draft pool script"] / med["dagflow run [compare]"])],
            [f"[compare] `dagflow run` on {FIXED_IMAGES} images (s)",
             f"{med[f'dagflow run, {FIXED_IMAGES} images [compare]']:.2f}"],
            ["[compare] `dagflow --help` (s)", f"{med['dagflow --help [compare]']:.2f}"],
        ]
    print_table("Targets", ["measure", "value"], targets)
    payload = {"images": images, "processes": n, "repeat": repeat, "dagflow": _source(env),
               "compare": _source(other) if compare else None,
               "load": [load_before, load_after],
               "summary": {"ratio": ratio, "fixed_cost_s": fixed,
                           "help_s": med["dagflow --help"],
                           "python_s": med["python -c pass"],
                           "dagflow_images_per_s": dagflow_rate,
                           "pool_images_per_s": pool_rate},
               "results": {k: m.as_dict() for k, m in measured.items()}}
    print("results:", save_results("cold", payload))
    return payload

"""What every benchmark shares: timing, the machine's description, tables and results.

Measurements on a shared machine are noisy, so a benchmark runs its variants in turn,
repetition after repetition (``interleaved``), and reports medians; ratios are taken
between medians of the same run. The load average is recorded before and after.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
RESULTS = HERE / "results"

#: The command line that is running (set by :func:`benchmarks.cli.main`), saved with
#: every results file so that the README can say what made each table.
COMMAND = "python -m benchmarks"
#: The tables printed since the last results file was saved: saved with the next one.
_TABLES: list[dict[str, Any]] = []

__all__ = [
    "DATA",
    "RESULTS",
    "Measure",
    "PeakRSS",
    "fmt_ratio",
    "interleaved",
    "load_average",
    "machine",
    "print_table",
    "save_results",
]


def load_average() -> float:
    """The one-minute load average (0 where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def machine() -> dict[str, Any]:
    """The machine and software the figures were measured on."""
    try:
        import psutil

        memory = f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    except ImportError:
        memory = None
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_1min": round(load_average(), 2),
    }
    for package in ("dask", "distributed", "numpy", "scipy", "pillow", "opencv-python-headless",
                    "simplejpeg", "imagecodecs", "tifffile", "pyvips", "pyarrow"):
        info[package] = _version(package)
    try:
        from PIL import features

        info["libjpeg-turbo"] = features.version_feature("libjpeg_turbo")
    except Exception:
        pass
    return info


@dataclass
class Measure:
    """Repeated measurements of one variant."""

    name: str
    seconds: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def cpu(self) -> float:
        """Median CPU seconds of the process tree per repetition."""
        values = self.extra.get("cpu_s") or []
        return statistics.median(values) if values else float("nan")

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the repetitions were."""
        if len(self.seconds) < 2:
            return 0.0
        return (max(self.seconds) - min(self.seconds)) / self.median

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seconds": self.seconds, "median_s": self.median,
                "spread": round(self.spread, 3), **self.extra}


def tree_cpu() -> float:
    """CPU seconds (user + system) used so far by this process, its live descendants and
    its children that have ended: what a variant costs, whatever the machine's load."""
    import resource

    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    return total + ended.ru_utime + ended.ru_stime


def interleaved(variants: Mapping[str, Callable[[], Any]], repeat: int, *,
                warmup: Iterable[str] = (), log: Callable[[str], None] | None = None,
                ) -> dict[str, Measure]:
    """Time each variant ``repeat`` times, in turn, rotating the order every repetition.

    Variants named in ``warmup`` run once untimed first. A variant returning a mapping
    has it stored in ``Measure.extra`` (the last repetition's); a ``seconds`` entry in it
    replaces the measured time. The CPU time of the whole process tree is recorded too
    (``Measure.extra["cpu_s"]``, one value per repetition).
    """
    names = list(variants)
    results = {n: Measure(n) for n in names}
    for n in warmup:
        variants[n]()
    for r in range(repeat):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            c0 = tree_cpu()
            t0 = time.perf_counter()
            out = variants[n]()
            elapsed = time.perf_counter() - t0
            cpu = tree_cpu() - c0
            if isinstance(out, Mapping):
                results[n].extra.update((k, v) for k, v in out.items() if k != "seconds")
                elapsed = float(out.get("seconds", elapsed))
            results[n].seconds.append(elapsed)
            results[n].extra.setdefault("cpu_s", []).append(cpu)
            if log is not None:
                log(f"  [{r + 1}/{repeat}] {n}: {elapsed:.2f} s, {cpu:.1f} CPU s "
                    f"(load {load_average():.1f})")
    return results


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}x" if value == value else "n/a"


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                file: Any = None) -> str:
    """Print (and return) a Markdown table."""
    cells = [[str(c) for c in columns]] + [["" if v is None else str(v) for v in r]
                                           for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = [f"\n### {title}\n"]
    for i, row in enumerate(cells):
        lines.append("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True))
                     + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    text = "\n".join(lines)
    print(text, file=file or sys.stdout, flush=True)
    _TABLES.append({"title": title, "columns": [str(c) for c in columns],
                    "rows": cells[1:]})
    return text


def save_results(name: str, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` with the machine's description, the command line and the tables
    printed since the last call to ``results/<name>-<time>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    body = {"benchmark": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": COMMAND, "machine": machine(), "tables": list(_TABLES), **payload}
    _TABLES.clear()
    path.write_text(json.dumps(body, indent=2, default=str), encoding="utf-8")
    return path


class PeakRSS:
    """Sample the resident memory of some processes in a background thread.

    ``pids`` is called at every sample, so processes that appear later (workers started
    by a pool) are followed too. Use as a context manager; ``peaks`` maps pid to bytes.
    """

    def __init__(self, pids: Callable[[], Iterable[int]], interval: float = 0.05) -> None:
        self.pids = pids
        self.interval = interval
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="peak-rss")

    def _loop(self) -> None:
        import psutil

        procs: dict[int, Any] = {}
        while not self._stop.is_set():
            try:
                wanted = list(self.pids())
            except Exception:
                wanted = []
            for pid in wanted:
                try:
                    proc = procs.get(pid) or procs.setdefault(pid, psutil.Process(pid))
                    rss = proc.memory_info().rss
                except Exception:
                    continue
                if rss > self.peaks.get(pid, 0):
                    self.peaks[pid] = rss
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def children_of(pid: int | None = None) -> list[int]:
    """Pids of every descendant process of ``pid`` (default: this process)."""
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except Exception:
        return []

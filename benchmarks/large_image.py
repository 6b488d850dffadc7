"""Benchmark 5 (large-image part): a TIFF larger than a worker's memory, processed tiled.

A generated RGB TIFF (tiled, BigTIFF, zlib level 1, written tile by tile so that the
generator never holds the image) goes through ``load -> gaussian -> save (tiled TIFF)``
on an embedded cluster whose workers' memory limit is below the decoded image (default
30000 x 30000 = 2.7 GB decoded, workers limited to 1.8 GiB). The whole-image path would
need the image decoded plus the blur's working set on one worker; dagflow's memory
model estimates that, finds it above every worker's budget, and routes the item to the
tiled path (:mod:`dagflow.tiled`).

A thread samples every worker's resident memory (RSS) every 50 ms. The table gives each
worker's peak against its limit, the whole-image estimate against the budget, whether a
worker was restarted by its nanny, and throughput; the baseline is a plain tifffile
copy of the same file (read every tile, write every tile, no filter) in this process.

``python -m benchmarks large-image`` (``--quick`` uses 10000 x 10000), or
``python benchmarks/large_image.py --size 30000 --memory-limit 1.8GiB``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["make_tiff", "measure", "run"]

GiB = 2**30


def make_tiff(path: str | os.PathLike[str], width: int, height: int, *, tile: int = 512,
              seed: int = 0) -> Path:
    """Write a ``width x height`` RGB tiled BigTIFF tile by tile (zlib level 1).

    The content is smooth gradients with a fine texture, so that the blur has something
    to do and the file compresses as a photograph would (roughly 3:1).
    """
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 48, size=(tile, tile, 3), dtype=np.uint8)

    def tiles() -> Iterator[np.ndarray]:
        yy, xx = np.mgrid[0:tile, 0:tile]
        for y0 in range(0, height, tile):
            for x0 in range(0, width, tile):
                gy, gx = (yy + y0) / height, (xx + x0) / width
                base = np.stack([gx * 200, gy * 200, (1 - gx) * 120 + gy * 80], axis=-1)
                stripes = ((xx + x0) // 64 + (yy + y0) // 64) % 2 * 20
                yield (base + stripes[..., None] + texture).astype(np.uint8)

    tmp = path.with_name(path.name + ".part")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        tw.write(tiles(), shape=(height, width, 3), dtype=np.uint8, tile=(tile, tile),
                 photometric="rgb", compression="zlib", compressionargs={"level": 1},
                 metadata=None)
    os.replace(tmp, path)
    return path


def _copy_baseline(path: Path, out: Path) -> float:
    """Seconds to read and rewrite every tile of ``path`` with tifffile alone."""
    import tifffile

    t0 = time.perf_counter()
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        fh = tif.filehandle

        def tiles() -> Iterator[np.ndarray]:
            for index, (offset, count) in enumerate(zip(page.dataoffsets,
                                                        page.databytecounts, strict=True)):
                fh.seek(offset)
                seg, _, _ = page.decode(fh.read(count), index)
                yield seg[0]

        with tifffile.TiffWriter(out, bigtiff=True) as tw:
            tw.write(tiles(), shape=page.shape, dtype=page.dtype,
                     tile=(page.tilelength, page.tilewidth), photometric="rgb",
                     compression="zlib", compressionargs={"level": 1}, metadata=None)
    seconds = time.perf_counter() - t0
    out.unlink()
    return seconds


def measure(path: str | os.PathLike[str], output: str | os.PathLike[str], *,
            workers: int = 2, threads: int = 2, memory_limit: str = "1.8GiB",
            sigma: float = 2.0, chunk: int | None = None) -> dict[str, Any]:
    """Run ``load -> gaussian -> save`` on ``path`` with workers limited to
    ``memory_limit``; return the figures (peak RSS per worker, restarts, seconds...)."""
    import dask
    from dask.utils import parse_bytes
    from distributed import Client

    import dagflow
    from dagflow import Node, Workflow
    from dagflow.resources import format_bytes
    from dagflow.runtime.cluster import start_local_cluster

    try:
        from benchmarks.common import PeakRSS
    except ImportError:  # run as a script
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from benchmarks.common import PeakRSS

    path = Path(path)
    wf = Workflow("large", [
        Node("load", "load"),
        Node("blur", "gaussian", {"sigma": sigma}, after="load"),
        Node("save", "save", {"format": "tiff", "compression": "zlib", "tile": [512, 512]},
             after="blur"),
    ])
    limit = int(parse_bytes(memory_limit))
    settings = {"dagflow.monitor.report": False}
    if chunk:
        settings["dagflow.resources.tile-chunk"] = chunk
    with dask.config.set(settings), \
            start_local_cluster(n_workers=workers, threads_per_worker=threads,
                                memory_limit=limit) as cluster, Client(cluster) as c:
        pids = c.run(os.getpid)
        with PeakRSS(lambda: pids.values(), interval=0.05) as rss:
            t0 = time.perf_counter()
            result = dagflow.run(wf, str(path), output, client=c, progress=False)
            seconds = time.perf_counter() - t0
        restarts = sum(1 for a, p in c.run(os.getpid).items() if pids.get(a) != p) + \
            abs(len(c.run(os.getpid)) - len(pids))
        from dagflow.runtime.capacity import cluster_capacity

        budgets = [w.budget for w in cluster_capacity(c).workers]
    estimate = result.estimate or {}
    from dagflow.compile import node_tasks
    from dagflow.io import probe_header
    from dagflow.resources import MemoryModel

    whole = MemoryModel(node_tasks(wf)).item_peak(probe_header(path))
    width, height = probe_header(path)["width"], probe_header(path)["height"]
    report = {
        "size": f"{width}x{height}", "decoded_bytes": width * height * 3,
        "file_bytes": path.stat().st_size, "workers": workers, "threads": threads,
        "memory_limit": limit, "budgets": budgets, "whole_image_estimate": whole,
        "peak_rss_per_worker": sorted(rss.peaks.values()),
        "peak_rss": max(rss.peaks.values(), default=0), "restarts": restarts,
        "seconds": seconds, "succeeded": result.succeeded, "failed": result.failed,
        "tiled": result.tiled, "output": str(Path(output) / (path.stem + ".tif")),
        "estimate": estimate,
    }
    report["summary"] = (
        f"{report['size']} ({format_bytes(report['decoded_bytes'])} decoded): whole-image "
        f"estimate {format_bytes(whole)} vs budget {format_bytes(max(budgets or [0]))}; "
        f"tiled={result.tiled}; peak worker RSS {format_bytes(report['peak_rss'])} of a "
        f"{format_bytes(limit)} limit ({report['peak_rss'] / limit:.0%}); restarts "
        f"{restarts}; {seconds:.1f} s")
    return report


def run(images: int | None = None, repeat: int | None = None, quick: bool = False,
        size: int | None = None, workers: int = 2, threads: int = 2,
        memory_limit: str = "1.8GiB", keep: bool = False, **_: Any) -> dict[str, Any]:
    """The benchmark (``python -m benchmarks large-image``)."""
    from benchmarks.common import DATA, print_table, save_results

    size = size or (10000 if quick else 30000)
    source = DATA / f"large-{size}.tif"
    if not source.exists():
        print(f"generating {source} ({size}x{size} RGB)...", flush=True)
        t0 = time.perf_counter()
        make_tiff(source, size, size)
        print(f"  {time.perf_counter() - t0:.0f} s, {source.stat().st_size / GiB:.2f} GiB "
              "on disk", flush=True)
    out = DATA / f"large-{size}-out"
    baseline = _copy_baseline(source, DATA / f"large-{size}-copy.tif")
    report = measure(source, out, workers=workers, threads=threads,
                     memory_limit=memory_limit, chunk=1024)
    mp = size * size / 1e6
    rows = [[f"w{i}", f"{peak / GiB:.2f} GiB", f"{report['memory_limit'] / GiB:.2f} GiB",
             f"{peak / report['memory_limit']:.0%}"]
            for i, peak in enumerate(report["peak_rss_per_worker"])]
    print_table(f"large image {report['size']}: peak worker RSS vs limit", [
        "worker", "peak RSS", "limit", "of limit"], rows)
    print_table("large image: time", ["variant", "seconds", "MP/s", "ratio"], [
        ["tifffile copy (baseline)", f"{baseline:.1f}", f"{mp / baseline:.1f}", "1.00x"],
        ["dagflow tiled blur", f"{report['seconds']:.1f}", f"{mp / report['seconds']:.1f}",
         f"{report['seconds'] / baseline:.2f}x"]])
    print(report["summary"], flush=True)
    report["baseline_copy_seconds"] = baseline
    save_results("large_image", report)
    if not keep:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=30000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-limit", default="1.8GiB")
    parser.add_argument("--keep", action="store_true", help="keep the output file")
    options = parser.parse_args()
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    run(size=options.size, workers=options.workers, threads=options.threads,
        memory_limit=options.memory_limit, keep=options.keep)

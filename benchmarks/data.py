"""Generated benchmark data, deterministic and cached under ``benchmarks/.data/``.

* :func:`photo_corpus` -- photograph-like JPEGs (default 2048x1536, quality 90), each
  with its own content (:func:`dagflow.testing.photo_like` with a seed per file) and a
  camera-like mix of EXIF orientations (mostly 1, some 6, 8 and 3), so that the
  auto-orient step does real work on a quarter of them;
* :func:`microscopy_corpus` -- 16-bit grey TIFFs (default 2048x2048) like a
  microscope camera's: a 12-bit signal on a dark offset, with shot-like noise;
* :func:`tiny_corpus` -- many tiny JPEGs for the no-op (framework overhead) workflow;
* :func:`manifest` -- a Parquet manifest of a million items with their headers, for
  planning (the files need not exist).

Asking for more files than a cached corpus holds adds only the missing ones; files are
written atomically (``.tmp`` then ``os.replace``), so an interrupted generation is
completed by the next call.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks.common import DATA

__all__ = ["ORIENTATIONS", "manifest", "microscopy_corpus", "photo_corpus", "tiny_corpus"]

#: EXIF orientation of image ``i`` is ``ORIENTATIONS[i % 8]``: 5/8 upright, like a camera.
ORIENTATIONS = (1, 1, 6, 1, 8, 1, 3, 1)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _photo(args: tuple[str, int, int, int, int, int]) -> str:
    path, index, width, height, quality, seed = args
    from dagflow.testing import jpeg_with_orientation, photo_like

    pixels = photo_like(height, width, seed=seed * 1_000_003 + index)
    data = jpeg_with_orientation(pixels, ORIENTATIONS[index % len(ORIENTATIONS)],
                                 quality=quality)
    _write(Path(path), data)
    return path


def photo_corpus(n: int, *, width: int = 2048, height: int = 1536, quality: int = 90,
                 seed: int = 0, workers: int | None = None) -> Path:
    """A directory holding (at least) ``n`` photo-like JPEGs; the first ``n`` are returned
    by :func:`corpus_files`.

    Returns
    -------
    pathlib.Path
        ``benchmarks/.data/photos-{width}x{height}-q{quality}-s{seed}/``.
    """
    directory = DATA / f"photos-{width}x{height}-q{quality}-s{seed}"
    directory.mkdir(parents=True, exist_ok=True)
    todo = [(os.fspath(directory / f"img_{i:05d}.jpg"), i, width, height, quality, seed)
            for i in range(n) if not (directory / f"img_{i:05d}.jpg").exists()]
    if todo:
        print(f"generating {len(todo)} {width}x{height} JPEGs in {directory} ...", flush=True)
        with ProcessPoolExecutor(workers or os.cpu_count() or 1) as pool:
            list(pool.map(_photo, todo, chunksize=4))
    return directory


def _scan(args: tuple[str, int, int, int]) -> str:
    path, index, side, seed = args
    import numpy as np
    import tifffile

    from dagflow.testing import photo_like

    signal = photo_like(side, side, channels=1, dtype=np.float32, seed=seed * 1_000_003 + index)
    rng = np.random.default_rng(seed * 7 + index)
    counts = 100 + signal[:, :, 0] * 3800  # a dark offset and a 12-bit signal
    counts += rng.normal(0.0, 1.0, counts.shape).astype(np.float32) * np.sqrt(counts)
    pixels = np.clip(np.rint(counts), 0, 65535).astype(np.uint16)
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tifffile.imwrite(tmp, pixels, photometric="minisblack", metadata=None)
    os.replace(tmp, path)
    return path


def microscopy_corpus(n: int, *, side: int = 2048, seed: int = 0,
                      workers: int | None = None) -> Path:
    """A directory holding (at least) ``n`` 16-bit grey TIFFs, ``side`` x ``side``.

    Returns
    -------
    pathlib.Path
        ``benchmarks/.data/scans-{side}-s{seed}/``; :func:`corpus_files` with
        ``pattern="img_*.tif"`` lists them.
    """
    directory = DATA / f"scans-{side}-s{seed}"
    directory.mkdir(parents=True, exist_ok=True)
    todo = [(os.fspath(directory / f"img_{i:05d}.tif"), i, side, seed)
            for i in range(n) if not (directory / f"img_{i:05d}.tif").exists()]
    if todo:
        print(f"generating {len(todo)} {side}x{side} 16-bit TIFFs in {directory} ...",
              flush=True)
        with ProcessPoolExecutor(workers or os.cpu_count() or 1) as pool:
            list(pool.map(_scan, todo, chunksize=2))
    return directory


def corpus_files(directory: Path, n: int, pattern: str = "img_*.jpg") -> list[Path]:
    """The first ``n`` images of a corpus directory, in order."""
    files = sorted(p for p in directory.glob(pattern))[:n]
    if len(files) < n:
        raise RuntimeError(f"{directory} holds {len(files)} images, {n} wanted")
    return files


def tiny_corpus(n: int, *, per_dir: int = 1000) -> Path:
    """A directory of ``n`` tiny (64x48) JPEGs in sub-directories of ``per_dir`` files.

    The files share their bytes (the no-op workflow reads headers only); each still is a
    separate file with its own name, size and modification time.
    """
    from dagflow.testing import jpeg_with_orientation, photo_like

    directory = DATA / "tiny"
    directory.mkdir(parents=True, exist_ok=True)
    data = jpeg_with_orientation(photo_like(48, 64, seed=7), 1, quality=90)
    made = 0
    for start in range(0, n, per_dir):
        sub = directory / f"d{start // per_dir:04d}"
        sub.mkdir(exist_ok=True)
        for i in range(start, min(n, start + per_dir)):
            path = sub / f"t_{i:07d}.jpg"
            if not path.exists():
                _write(path, data)
                made += 1
    if made:
        print(f"generated {made} tiny JPEGs in {directory}", flush=True)
    return directory


def tiny_files(n: int, *, per_dir: int = 1000) -> list[str]:
    """The paths of the first ``n`` files of :func:`tiny_corpus` (without listing it)."""
    directory = tiny_corpus(n, per_dir=per_dir)
    return [os.fspath(directory / f"d{i // per_dir:04d}" / f"t_{i:07d}.jpg") for i in range(n)]


def manifest(n: int) -> Path:
    """A Parquet manifest of ``n`` items with header columns (the files do not exist).

    Columns: ``path`` (relative), ``width``, ``height``, ``channels``, ``dtype``,
    ``format``, ``orientation``, ``size`` and ``mtime_ns``, so that planning needs no
    file access.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = DATA / f"manifest-{n}.parquet"
    if path.exists():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    i = np.arange(n)
    landscape = rng.random(n) < 0.75
    long = rng.choice([2048, 3000, 4000, 6000], n)
    short = (long * 3) // 4
    table = pa.table({
        "path": pa.array([f"shard{k // 10_000:03d}/img_{k:07d}.jpg" for k in range(n)]),
        "width": np.where(landscape, long, short).astype(np.int64),
        "height": np.where(landscape, short, long).astype(np.int64),
        "channels": np.full(n, 3, np.int64),
        "dtype": pa.array(["uint8"] * n),
        "format": pa.array(["jpeg"] * n),
        "orientation": np.asarray(ORIENTATIONS, np.int64)[i % len(ORIENTATIONS)],
        "size": rng.integers(300_000, 3_000_000, n),
        "mtime_ns": np.full(n, 1_700_000_000_000_000_000, np.int64) + i,
    })
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path

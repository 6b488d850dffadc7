"""The monitoring files of a run directory: their schemas, writing and reading.

``<run_dir>/metrics/`` holds:

``run.json``
    The run's plan: workflow name, item count, nodes with op, kind, parents and device
    (written by the client when the run starts).
``part-<chunk>.parquet``
    Only for a run without checkpoints: one part per chunk, one row per item and node
    (:data:`PART_SCHEMA`), written by the worker as the chunk is committed. With
    checkpoints, the metrics' columns are in the chunk's records part
    (``<run_dir>/records/part-<chunk>.parquet``) instead: one file per chunk, written
    once. :func:`metric_parts` finds either.
``workers.parquet``, ``queue.parquet``, ``throughput.parquet``, ``scheduler.json``
    What only the scheduler knew (resource samples per worker, queue depth, Dask task
    counts, breaker states, Dask's CPU / non-CPU seconds per node), written at the end.

Every write goes through :func:`dagflow.io.atomic.atomic_path`, and none is flushed to
the disk: these files are what a run measured, not what it did (the records are), so
one lost to a power cut, or torn by it, reads as missing (:func:`read_table`,
:func:`read_json`) and costs that run's figures only, while each flush cost a run up to
8 ms of its start or end (two journal commits). Nothing here imports Dask or Bokeh.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dagflow.recovery.checkpoint import RECORD_SCHEMA, empty_table, write_part

__all__ = [
    "METRICS_DIR",
    "METRICS_SCHEMA",
    "PART_SCHEMA",
    "metric_parts",
    "read_json",
    "read_metrics",
    "read_table",
    "write_json",
    "write_metrics",
    "write_table",
]

logger = logging.getLogger(__name__)

METRICS_DIR = "metrics"

METRICS_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    # the chunk: its first item's id
    ("chunk", pa.int64()),
    ("item_id", pa.int64()),
    ("rel", pa.string()),
    ("node_id", pa.string()),
    ("op", pa.string()),
    ("status", pa.string()),
    ("error_class", pa.string()),
    ("attempts", pa.int32()),
    ("duration_s", pa.float64()),
    # CPU seconds of the thread that ran the op, when the records carry it
    ("cpu_s", pa.float64()),
    ("started", pa.float64()),
    ("worker", pa.string()),
    ("device", pa.string()),
    ("width", pa.int64()),
    ("height", pa.int64()),
    ("megapixels", pa.float64()),
    ("bytes_in", pa.int64()),
    ("bytes_out", pa.int64()),
    # the process that committed the chunk, sampled then
    ("sample_worker", pa.string()),
    ("sample_time", pa.float64()),
    ("worker_cpu", pa.float64()),
    ("worker_memory", pa.float64()),
    ("worker_gpu", pa.float64()),
    # the committing process's and its machine's counters, on the chunk's first row
    # only: its previous reading, then a reading as the chunk was committed, each one
    # value per name of dagflow.monitor.sampling.COUNTERS in that order (one column,
    # not thirty: each column costs a chunk's write about 0.1 ms); read by
    # dagflow.monitor.evidence
    ("counters", pa.list_(pa.float64())),
])

#: A chunk's part with monitoring on: its records and the metrics' own columns. The
#: worker samples (``sample_*``, ``worker_*``) are only written outside a distributed
#: worker; on a cluster the scheduler plugin samples every worker instead.
PART_SCHEMA = pa.schema([*RECORD_SCHEMA,
                         *(f for f in METRICS_SCHEMA if f.name not in RECORD_SCHEMA.names)])


def metrics_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir, METRICS_DIR)


def write_table(path: str | os.PathLike[str], table: pa.Table) -> Path:
    """Write ``table`` as Parquet at ``path``, atomically (not flushed to the disk: see the
    module docstring)."""
    from dagflow.io.atomic import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, sync=False) as tmp:
        # LZ4: as small as zstd here, in half its time (a history file: 1.4 against 3 ms)
        pq.write_table(table, tmp, compression="lz4")
    return path


def write_metrics(run_dir: str | os.PathLike[str],
                  metrics: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
                  chunk: int | None = None) -> Path:
    """Write one chunk's metrics (rows, or columns by name) as a part of the metrics
    directory: ``part-<chunk>.parquet``, or named after its first and last item."""
    if not isinstance(metrics, Mapping):
        rows = list(metrics)
        metrics = {f.name: [r.get(f.name) for r in rows] for f in PART_SCHEMA}
    if chunk is not None:
        name = f"part-{chunk:07d}.parquet"
    else:
        ids = list(metrics["item_id"])
        name = f"part-{min(ids):09d}-{max(ids):09d}.parquet"
    return write_part(metrics_dir(run_dir) / name, metrics, PART_SCHEMA)


def metric_parts(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The parts that hold a run's metrics: its metrics parts, else its records parts."""
    return (sorted(metrics_dir(run_dir).glob("part-*.parquet"))
            or sorted(Path(run_dir, "records").glob("part-*.parquet")))


def read_parts(paths: Sequence[Path], schema: pa.Schema) -> pa.Table | None:
    """Parquet parts read in parallel as one table; ``None`` if any part is unreadable."""
    if not paths:
        return empty_table(schema)
    import pyarrow.dataset as ds

    try:
        return ds.dataset([os.fspath(p) for p in paths], format="parquet",
                          schema=schema).to_table()
    except Exception:
        return None


def read_metrics(run_dir: str | os.PathLike[str],
                 schema: pa.Schema = METRICS_SCHEMA) -> pa.Table:
    """Every metrics part of a run, as ``schema`` (unreadable parts are skipped with a
    warning; a column a part lacks is null)."""
    paths = metric_parts(run_dir)
    table = read_parts(paths, schema)
    if table is not None:
        return table
    tables = []
    for p in paths:
        one = read_parts([p], schema)
        if one is None:
            logger.warning("metrics part %s is unreadable; skipped", p)
        else:
            tables.append(one)
    if not tables:
        return empty_table(schema)
    return pa.concat_tables(tables)


def read_table(path: str | os.PathLike[str]) -> pa.Table | None:
    """A Parquet file, or ``None`` if it is missing or unreadable."""
    try:
        return pq.read_table(path)
    except FileNotFoundError:
        return None
    except Exception as exc:
        logger.warning("%s is unreadable (%s)", path, exc)
        return None


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as JSON at ``path``, atomically (not flushed to the disk: see the
    module docstring)."""
    from dagflow.io.atomic import atomic_path

    path = Path(path)
    with atomic_path(path, sync=False) as tmp:
        tmp.write_bytes(json.dumps(data, indent=1, default=str).encode())
    return path


def read_json(path: str | os.PathLike[str]) -> Any:
    """A JSON file, or ``None`` if it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except Exception as exc:
        logger.warning("%s is unreadable (%s)", path, exc)
        return None

"""The monitoring files of a run directory: their schemas, writing and reading.

``<run_dir>/metrics/`` holds:

``run.json``
    The run's plan: workflow name, item count, nodes with op, kind, parents and device
    (written by the client when the run starts).
``part-<first item>-<last item>.parquet``
    One part per chunk, one row per item and node (:data:`METRICS_SCHEMA`), written by
    the worker as the chunk's records are committed, atomically like the records.
``workers.parquet``, ``queue.parquet``, ``throughput.parquet``, ``scheduler.json``
    What only the scheduler knew (resource samples per worker, queue depth, Dask task
    counts, breaker states, Dask's CPU / non-CPU seconds per node), written at the end.

Every write goes through :func:`dagflow.io.atomic.atomic_path`. Nothing here imports
Dask or Bokeh.
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

__all__ = [
    "METRICS_DIR",
    "METRICS_SCHEMA",
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
])


def metrics_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir, METRICS_DIR)


def write_table(path: str | os.PathLike[str], table: pa.Table) -> Path:
    """Write ``table`` as Parquet at ``path``, atomically."""
    from dagflow.io.atomic import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def write_metrics(run_dir: str | os.PathLike[str],
                  metrics: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]) -> Path:
    """Write one chunk's metrics (rows, or columns by name) as a part named after its
    first and last item."""
    if isinstance(metrics, Mapping):
        ids = list(metrics["item_id"])
        table = pa.table({f.name: pa.array(metrics[f.name], type=f.type)
                          for f in METRICS_SCHEMA}, schema=METRICS_SCHEMA)
    else:
        ids = [r["item_id"] for r in metrics]
        table = pa.Table.from_pylist(list(metrics), schema=METRICS_SCHEMA)
    name = f"part-{min(ids):09d}-{max(ids):09d}.parquet"
    return write_table(metrics_dir(run_dir) / name, table)


def read_parts(paths: Sequence[Path], schema: pa.Schema) -> pa.Table | None:
    """Parquet parts read in parallel as one table; ``None`` if any part is unreadable."""
    if not paths:
        return schema.empty_table()
    import pyarrow.dataset as ds

    try:
        return ds.dataset([os.fspath(p) for p in paths], format="parquet",
                          schema=schema).to_table()
    except Exception:
        return None


def read_metrics(run_dir: str | os.PathLike[str]) -> pa.Table:
    """Every metrics part of a run (unreadable parts are skipped with a warning)."""
    paths = sorted(metrics_dir(run_dir).glob("part-*.parquet"))
    table = read_parts(paths, METRICS_SCHEMA)
    if table is not None:
        return table
    tables = []
    for p in paths:
        try:
            tables.append(pq.read_table(p))
        except Exception as exc:
            logger.warning("metrics part %s is unreadable (%s); skipped", p, exc)
    if not tables:
        return METRICS_SCHEMA.empty_table()
    return pa.concat_tables(tables, promote_options="default")


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
    from dagflow.io.atomic import atomic_write

    return atomic_write(path, json.dumps(data, indent=1, default=str).encode())


def read_json(path: str | os.PathLike[str]) -> Any:
    """A JSON file, or ``None`` if it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except Exception as exc:
        logger.warning("%s is unreadable (%s)", path, exc)
        return None

"""The checkpoint: records written as atomic Parquet parts, and what they say is done.

Records (one row per item and node) are the source of truth. Each chunk's records are
one part file, written to a temporary file in the same directory and moved into place
with ``os.replace``, so that a run killed at any moment leaves only whole parts. Parts are
not flushed to the disk one by one: after a power cut, a part that was lost or torn
(unreadable) only makes its items run again, and the outputs a part claims were made
durable before it was written. :func:`load_done` reads every part of every earlier run
under a state directory and answers, per ``(item key, node key)``, what finished; a part
that cannot be read is reported and its items simply run again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["RECORD_SCHEMA", "Checkpoint", "empty_table", "load_done", "read_records",
           "record_columns", "write_part", "write_records"]

logger = logging.getLogger(__name__)

RECORD_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("item_id", pa.int64()),
    ("item_key", pa.string()),
    ("input_path", pa.string()),
    ("rel", pa.string()),
    ("node_id", pa.string()),
    ("node_key", pa.string()),
    ("op", pa.string()),
    ("status", pa.string()),
    ("error_class", pa.string()),
    ("error_type", pa.string()),
    ("error_message", pa.string()),
    ("reason", pa.string()),
    ("attempts", pa.int32()),
    ("duration_s", pa.float64()),
    ("cpu_s", pa.float64()),
    ("started", pa.float64()),
    ("worker", pa.string()),
    ("device", pa.string()),
    ("output_path", pa.string()),
    ("width", pa.int64()),
    ("height", pa.int64()),
    # the item ran on the CPU although its node asked for the GPU (device cpu-fallback)
    ("degraded", pa.bool_()),
])

#: Statuses that count as finished for resume: the item need not run that node again.
DONE_STATUSES = frozenset({"ok", "skipped"})


def record_columns(rows: Sequence[Mapping[str, Any] | Sequence[Any]]) -> dict[str, list[Any]]:
    """Records as columns named after :data:`RECORD_SCHEMA`.

    ``rows`` are dicts (a missing field is ``None``) or tuples in the schema's order (the
    worker's records: transposed in C, not value by value).
    """
    names = RECORD_SCHEMA.names
    if rows and not isinstance(rows[0], Mapping):
        return dict(zip(names, map(list, zip(*rows, strict=True)), strict=True))
    return {name: [r.get(name) for r in rows] for name in names}  # type: ignore[union-attr]


def write_part(path: str | os.PathLike[str], columns: Mapping[str, Sequence[Any]],
               schema: pa.Schema) -> Path:
    """Write the ``schema`` fields that ``columns`` has as one Parquet part, atomically.

    A field missing from ``columns`` is left out of the part; readers that give the
    whole schema read it back as nulls.
    """
    from dagflow.io.atomic import atomic_path

    fields = [f for f in schema if f.name in columns]
    table = pa.table([_column(columns[f.name], f.type) for f in fields],
                     schema=pa.schema(fields))
    path = Path(path)
    # not flushed to the disk: a part lost to a power cut (or torn by it, and so
    # unreadable) only makes its chunk run again, and the outputs it claims were made
    # durable before it was written (dagflow.io.atomic.deferred_sync)
    with atomic_path(path, sync=False) as tmp:
        # zstd alone compresses the repeated values as well as dictionaries do, and
        # nothing filters parts by their statistics: both cost 40 % of the write
        pq.write_table(table, tmp, compression="zstd", use_dictionary=False,
                       write_statistics=False)
    return path


def empty_table(schema: pa.Schema) -> pa.Table:
    """A table of ``schema`` with no rows.

    Not ``schema.empty_table()``: that imports pandas (0.6 s), and a first run, which has
    no records to read, would pay it before anything runs.
    """
    return pa.Table.from_batches([], schema=schema)


def _column(values: Sequence[Any], type_: pa.DataType) -> pa.Array:
    """``values`` as an Arrow array; one repeated value without converting each copy.

    Most of a part's columns hold one value (the run, node, op, worker, status, the
    nulls of a chunk without errors): converting it once is ten times cheaper.
    """
    n = len(values)
    if n > 1 and values.count(values[0]) == n:
        first = values[0]
        return pa.nulls(n, type_) if first is None else pa.repeat(pa.scalar(first, type_), n)
    return pa.array(values, type=type_)


def write_records(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``rows`` as one Parquet part at ``path``, atomically."""
    return write_part(path, record_columns(rows), RECORD_SCHEMA)


def record_parts(state_dir: str | os.PathLike[str]) -> list[Path]:
    """Every record part under a state directory, oldest run first."""
    return sorted(Path(state_dir).glob("runs/*/records/part-*.parquet"))


def read_records(paths: Iterable[str | os.PathLike[str]],
                 columns: Sequence[str] | None = None) -> tuple[pa.Table, list[Path]]:
    """Read record parts; returns the table and the parts that could not be read."""
    tables, bad = [], []
    for p in paths:
        try:
            tables.append(pq.read_table(p, columns=list(columns) if columns else None))
        except Exception as e:
            logger.warning("checkpoint part %s is unreadable (%s); its items will run again", p, e)
            bad.append(Path(p))
    schema = RECORD_SCHEMA if columns is None else pa.schema(
        [RECORD_SCHEMA.field(c) for c in columns])
    if not tables:
        return empty_table(schema), bad
    return pa.concat_tables(tables, promote_options="default"), bad


@dataclass
class Checkpoint:
    """What earlier runs into an output directory finished.

    Attributes
    ----------
    done
        ``(item key, node key)`` pairs whose latest record is ``ok`` or ``skipped``.
    failed
        ``(item key, node key)`` pairs whose latest record is a failure, with its class.
    outputs
        Output path of each done sink or aggregate record.
    corrupt_parts
        Parts that could not be read (their items run again).
    """

    done: set[tuple[str, str]] = field(default_factory=set)
    failed: dict[tuple[str, str], str] = field(default_factory=dict)
    outputs: dict[tuple[str, str], str] = field(default_factory=dict)
    corrupt_parts: list[Path] = field(default_factory=list)

    def is_done(self, item_key: str, node_key: str) -> bool:
        return (item_key, node_key) in self.done


def load_done(state_dir: str | os.PathLike[str]) -> Checkpoint:
    """Read every record part under ``state_dir``; the latest record per key wins."""
    columns = ["item_key", "node_key", "status", "error_class", "output_path"]
    table, bad = read_records(record_parts(state_dir), columns)
    cp = Checkpoint(corrupt_parts=bad)
    if table.num_rows == 0:
        return cp
    # parts are read run by run in run-id (time) order, so later rows are later records
    data = table.to_pydict()
    for ik, nk, status, cls, out in zip(data["item_key"], data["node_key"], data["status"],
                                        data["error_class"], data["output_path"], strict=True):
        key = (ik, nk)
        if status in DONE_STATUSES:
            cp.done.add(key)
            cp.failed.pop(key, None)
            if out:
                cp.outputs[key] = out
        elif status in ("failed", "upstream_failed"):
            cp.done.discard(key)
            cp.failed[key] = cls or status
    return cp

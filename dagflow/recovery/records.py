"""The record: what happened to one item at one node, built here and nowhere else.

A run's account is one :class:`Record` per item and node: its status, its error, the
attempts it took, where it ran, and for a sink what proves its output (path relative to
the output root, size, modification time, a hash on request). Records are the
checkpoint (:mod:`dagflow.recovery.checkpoint`) and the metrics' rows. Workers build
them in the item loop; the client builds the few that no task can (refused and tiled
items, an item whose task failed as a whole), with the same functions:

* :func:`new_record` for any record, fields by keyword;
* :func:`ok_record` (:func:`output_record` for a sink), the same for a success, by
  position: it runs once per item and node on the item loop's short path, so it gives
  the record's values as a bare tuple in :class:`Record`'s order (``Record._make`` of
  it is the same record): building the named tuple costs a copy of the tuple, 0.1-0.2 µs
  an item and node, and nothing reads a success by name (its columns are transposed by
  position, :func:`record_columns`).

A record is a :class:`~typing.NamedTuple`, with names for everyone who reads one.
:data:`RECORD_SCHEMA`, the records parts' Parquet schema, is derived from its fields.

This module imports no Dask: it runs on workers and clients alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import pyarrow as pa

__all__ = ["RECORD_SCHEMA", "Record", "new_record", "ok_record", "output_record",
           "record_columns"]


class Record(NamedTuple):
    """One item at one node (see the module docstring; the README lists the columns)."""

    run_id: str
    item_id: int
    item_key: str | None
    input_path: str
    rel: str
    node_id: str
    node_key: str
    op: str
    #: ``ok``, ``failed``, ``upstream_failed``, ``skipped`` or ``not_run``.
    status: str
    error_class: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    reason: str | None = None
    attempts: int = 0
    duration_s: float = 0.0
    cpu_s: float = 0.0
    started: float = 0.0
    worker: str | None = None
    device: str | None = None
    #: A sink's output, relative to the output root (POSIX separators).
    output_path: str | None = None
    width: int | None = None
    height: int | None = None
    #: The item ran on the CPU although its node asked for the GPU.
    degraded: bool = False
    #: What proves a sink's output is still the one written: its size and modification
    #: time, and its BLAKE2b digest when ``dagflow.checkpoint.hash-outputs`` asks.
    output_size: int | None = None
    output_mtime_ns: int | None = None
    output_hash: str | None = None
    #: Every failed attempt of an item that was tried more than once, in order:
    #: ``{"error": "Type: message", "delay_s": seconds waited before the next attempt}``
    #: (``delay_s`` is null for the last one).
    attempt_log: list[dict[str, Any]] | None = None


_TYPES = {
    "run_id": pa.string(), "item_id": pa.int64(), "item_key": pa.string(),
    "input_path": pa.string(), "rel": pa.string(), "node_id": pa.string(),
    "node_key": pa.string(), "op": pa.string(), "status": pa.string(),
    "error_class": pa.string(), "error_type": pa.string(), "error_message": pa.string(),
    "reason": pa.string(), "attempts": pa.int32(), "duration_s": pa.float64(),
    "cpu_s": pa.float64(), "started": pa.float64(), "worker": pa.string(),
    "device": pa.string(), "output_path": pa.string(), "width": pa.int64(),
    "height": pa.int64(), "degraded": pa.bool_(), "output_size": pa.int64(),
    "output_mtime_ns": pa.int64(), "output_hash": pa.string(),
    "attempt_log": pa.list_(pa.struct([("error", pa.string()), ("delay_s", pa.float64())])),
}

#: The Parquet schema of records: :class:`Record`'s fields, in order.
RECORD_SCHEMA = pa.schema([(name, _TYPES[name]) for name in Record._fields])

def new_record(ctx: Any, task: Any, item: Mapping[str, Any], status: str,
               **fields: Any) -> Record:
    """The record of ``item`` at ``task``'s node in the run ``ctx``.

    ``ctx`` is the run's :class:`~dagflow.compile.RunContext`, ``task`` the node's
    :class:`~dagflow.compile.NodeTask` and ``item`` the item's dict; ``fields`` are any of
    :class:`Record`'s other fields.
    """
    return Record(ctx.run_id, item["item_id"], item["key"], item["path"], item["rel"],
                  task.id, task.key, task.op, status, **fields)


def ok_record(ctx: Any, task: Any, item: Mapping[str, Any], worker: str, attempts: int,
              duration_s: float, cpu_s: float, started: float, device: str,
              degraded: bool, width: int | None, height: int | None,
              attempt_log: list[dict[str, Any]] | None = None) -> tuple[Any, ...]:
    """:func:`new_record` of a success, by position, as a bare tuple in
    :class:`Record`'s order (see the module docstring)."""
    return (ctx.run_id, item["item_id"], item["key"], item["path"], item["rel"], task.id,
            task.key, task.op, "ok", None, None, None, None, attempts, duration_s, cpu_s,
            started, worker, device, None, width, height, degraded, None, None, None,
            attempt_log)


def output_record(ctx: Any, task: Any, item: Mapping[str, Any], worker: str, attempts: int,
                  duration_s: float, cpu_s: float, started: float, device: str,
                  degraded: bool, width: int | None, height: int | None,
                  output: tuple[str, int | None, int | None, str | None],
                  attempt_log: list[dict[str, Any]] | None = None) -> tuple[Any, ...]:
    """:func:`ok_record` of a sink, with what proves its ``output``: its path, size,
    modification time and digest."""
    path, size, mtime, digest = output
    return (ctx.run_id, item["item_id"], item["key"], item["path"], item["rel"], task.id,
            task.key, task.op, "ok", None, None, None, None, attempts, duration_s, cpu_s,
            started, worker, device, path, width, height, degraded, size, mtime, digest,
            attempt_log)


def record_columns(rows: Sequence[Record | tuple[Any, ...] | Mapping[str, Any]]
                   ) -> dict[str, list[Any]]:
    """Records as columns named after :data:`RECORD_SCHEMA`.

    ``rows`` are records (:class:`Record` values or bare tuples in its order: transposed
    in C, not value by value) or dicts by column name (a missing field is ``None``).
    """
    names = Record._fields
    if not rows:
        return {name: [] for name in names}
    if not isinstance(rows[0], Mapping):
        return dict(zip(names, map(list, zip(*rows, strict=True)), strict=True))
    return {name: [r.get(name) for r in rows] for name in names}  # type: ignore[union-attr]

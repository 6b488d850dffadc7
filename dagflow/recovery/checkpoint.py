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

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from dagflow.recovery import faults
from dagflow.recovery.records import RECORD_SCHEMA, Record, record_columns

__all__ = ["RECORD_SCHEMA", "Checkpoint", "OutputProof", "check_output", "empty_table",
           "load_done", "output_digest", "read_records", "record_columns", "write_part",
           "write_records"]

logger = logging.getLogger(__name__)

#: Statuses that count as finished for resume: the item need not run that node again.
DONE_STATUSES = frozenset({"ok", "skipped"})

#: How parts are written. LZ4 alone compresses the repeated values as well as
#: dictionaries do (and as zstd does, within 4 %), and nothing filters parts by their
#: statistics: dictionaries and statistics cost 40 % of the write, zstd over LZ4 twice
#: its time (a part of 80 rows: 2.4 against 0.9 ms; of 4,000: 11.5 against 5.2), once
#: per chunk on a worker. Parts written with zstd by earlier versions read the same.
PART_OPTIONS: dict[str, Any] = {"compression": "lz4", "use_dictionary": False,
                                "write_statistics": False}


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
    if isinstance(path, str) and "://" in path:  # an object: one PUT, whole or not at all
        return _put_part(path, table)  # type: ignore[return-value]
    path = Path(path)
    # not flushed to the disk: a part lost to a power cut (or torn by it, and so
    # unreadable) only makes its chunk run again, and the outputs it claims were made
    # durable before it was written (dagflow.io.atomic.deferred_sync)
    with atomic_path(path, sync=False) as tmp:
        pq.write_table(table, tmp, **PART_OPTIONS)
        faults.reached("in-part", path.name)
    return path


def _put_part(url: str, table: pa.Table) -> str:
    import io

    from dagflow.io.upload import put_object

    buffer = io.BytesIO()
    pq.write_table(table, buffer, **PART_OPTIONS)
    put_object(url, buffer.getvalue())
    return url


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


def write_records(path: str | os.PathLike[str],
                  rows: Sequence[Record | Mapping[str, Any]]) -> Path:
    """Write ``rows`` as one Parquet part at ``path``, atomically."""
    return write_part(path, record_columns(rows), RECORD_SCHEMA)


def record_parts(state_dir: str | os.PathLike[str]) -> list[Path]:
    """Every record part under a state directory, oldest run first (by when each run
    started: run ids sort by the second only, and a chosen id not at all), each run's
    parts in chunk order."""
    runs = sorted({p.parent.parent for p in Path(state_dir).glob("runs/*/records/part-*")},
                  key=lambda run: (_started(run), run.name))
    return [p for run in runs for p in sorted((run / "records").glob("part-*.parquet"))]


def _started(run_dir: Path) -> float:
    """When a run started: its event log's first event (else its directory's time)."""
    try:
        with open(run_dir / "events.jsonl", encoding="utf-8") as f:
            return float(json.loads(f.readline())["t"])
    except (OSError, ValueError, KeyError, TypeError):
        try:
            return run_dir.stat().st_mtime
        except OSError:
            return 0.0


def read_records(paths: Iterable[str | os.PathLike[str]],
                 columns: Sequence[str] | None = None) -> tuple[pa.Table, list[Path]]:
    """Read record parts; returns the table and the parts that could not be read."""
    schema = RECORD_SCHEMA if columns is None else pa.schema(
        [RECORD_SCHEMA.field(c) for c in columns])
    tables, bad = [], []
    for p in paths:
        try:
            tables.append(_read_part(p, schema if columns is not None else None))
        except Exception as e:
            logger.warning("checkpoint part %s is unreadable (%s); its items will run again", p, e)
            bad.append(Path(p))
    if not tables:
        return empty_table(schema), bad
    return pa.concat_tables(tables, promote_options="default"), bad


def _read_part(path: str | os.PathLike[str], schema: pa.Schema | None) -> pa.Table:
    """One part, whole, or ``schema``'s columns of it: a column the part lacks (written
    by an earlier version) is read as nulls."""
    if schema is None:
        return pq.read_table(path)
    part = pq.ParquetFile(path)
    present = set(part.schema_arrow.names)
    table = part.read(columns=[name for name in schema.names if name in present])
    for column in schema:
        if column.name not in present:
            table = table.append_column(column, pa.nulls(table.num_rows, column.type))
    return table.select(schema.names)


class OutputProof(NamedTuple):
    """What a record says about its output: the path (relative to the output root),
    its size and modification time, and its digest when one was asked for (``None``
    for what an earlier version recorded)."""

    path: str
    size: int | None = None
    mtime_ns: int | None = None
    digest: str | None = None


def output_digest(path: str | os.PathLike[str]) -> str:
    """The BLAKE2b digest (hex, 16 bytes) of a file's content."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def check_output(root: str | os.PathLike[str], proof: OutputProof) -> str | None:
    """``None`` when the output ``proof`` describes is still there as written, else
    what happened to it (``missing``, ``changed: ...``).

    Size and modification time decide; a recorded digest settles a file whose time
    changed but whose content did not (copied back, touched).
    """
    if "://" in os.fspath(root):  # a store's URL (file:// aside)
        from dagflow.io.storage import is_remote

        if is_remote(root):
            return check_object(root, proof)
    path = os.path.join(root, proof.path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if proof.size is None or (st.st_size == proof.size and st.st_mtime_ns == proof.mtime_ns):
        return None
    if proof.digest is not None and os.path.isfile(path):
        try:
            if output_digest(path) == proof.digest:
                return None
        except OSError:
            pass
    if st.st_size != proof.size:
        return f"changed: {st.st_size} bytes, {proof.size} when recorded"
    return "changed: modified since it was recorded"


#: How a record keeps an object's ETag in its digest column (a local file's digest is
#: the hex of its BLAKE2b).
ETAG_PREFIX = "etag:"


def object_proof(url: str) -> tuple[int | None, None, str | None]:
    """Size, (no) modification time and ``etag:<ETag>`` of an output on a store, as its
    record keeps them."""
    from dagflow.io.upload import written

    found = written(url)
    if found is None:
        return None, None, None
    return found.size, None, f"{ETAG_PREFIX}{found.etag}" if found.etag else None


#: The objects under each store's output root, listed once per check of what earlier
#: runs wrote (:func:`load_done` forgets them): one listing request per thousand outputs
#: instead of a ``HEAD`` per output.
_LISTED: dict[str, dict[str, Any]] = {}


def _listed(root: str) -> dict[str, Any]:
    from dagflow.io.storage import list_objects

    listing = _LISTED.get(root)
    if listing is None:
        cut = len(root.rstrip("/")) + 1
        listing = {url[cut:]: found for url, found in list_objects(root.rstrip("/") + "/")}
        _LISTED[root] = listing
    return listing


def check_object(root: str, proof: OutputProof) -> str | None:
    """:func:`check_output` for an output on a store: its size and its ETag decide."""
    from dagflow.exceptions import DagflowError
    from dagflow.io.atomic import clean_parts

    try:
        found = _listed(root).get("/".join(clean_parts(proof.path)))
    except DagflowError as exc:
        return f"unreadable: {exc}"
    if found is None:
        return "missing"
    if proof.size is None:
        return None
    if found.size != proof.size:
        return f"changed: {found.size} bytes, {proof.size} when recorded"
    recorded = proof.digest[len(ETAG_PREFIX):] \
        if proof.digest and proof.digest.startswith(ETAG_PREFIX) else None
    if recorded and found.etag and found.etag != recorded:
        return "changed: not the object written (another ETag)"
    return None


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
        What proves the output of each done sink or aggregate record.
    corrupt_parts
        Parts that could not be read (their items run again).
    """

    done: set[tuple[str, str]] = field(default_factory=set)
    failed: dict[tuple[str, str], str] = field(default_factory=dict)
    outputs: dict[tuple[str, str], OutputProof] = field(default_factory=dict)
    corrupt_parts: list[Path] = field(default_factory=list)

    def is_done(self, item_key: str, node_key: str) -> bool:
        return (item_key, node_key) in self.done


_DONE_COLUMNS = ["item_key", "node_key", "status", "error_class", "output_path",
                 "output_size", "output_mtime_ns", "output_hash"]


def load_done(state_dir: str | os.PathLike[str]) -> Checkpoint:
    """Read every record part under ``state_dir``; the latest record per key wins."""
    _LISTED.clear()  # what is on a store is listed again when asked
    table, bad = read_records(record_parts(state_dir), _DONE_COLUMNS)
    cp = Checkpoint(corrupt_parts=bad)
    if table.num_rows == 0:
        return cp
    # parts are read run by run in run-id (time) order, so later rows are later records
    data = table.to_pydict()
    for ik, nk, status, cls, out, size, mtime, digest in zip(
            *(data[c] for c in _DONE_COLUMNS), strict=True):
        key = (ik, nk)
        if status in DONE_STATUSES:
            cp.done.add(key)
            cp.failed.pop(key, None)
            if out:
                cp.outputs[key] = OutputProof(out, size, mtime, digest)
        elif status in ("failed", "upstream_failed"):
            cp.done.discard(key)
            cp.failed[key] = cls or status
    return cp

"""How an aggregate op's partials are kept between its map and its reduce: as data.

An aggregate node's map runs once per chunk; its partial is stored under
``<output>/_dagflow/aggregates/<node>/`` and read back by the reduce, in this run and in
later runs into the same output (items done earlier still belong in the statistics).
Anyone who can write the output directory can write there, so a partial is stored as
*data* and read back as data: a Parquet file, never a pickle, and nothing read from it
is ever executed.

The contract for an aggregate op (``partial="rows"``, the only storage, see
:func:`dagflow.ops.registry.register_op`): its map returns **one row per image** it was
given, in order, each a mapping of column names (``str``) to

* ``None``, ``bool``, ``int`` (64-bit), ``float``, ``str``, ``bytes``, a numpy scalar
  of those kinds;
* a numpy array of booleans or numbers (any shape, no objects).

A column holding ints and floats is stored as floats; arrays come back as writable
arrays of their dtype and shape. Anything else (a custom object, a list, a dict) is a
:class:`~dagflow.exceptions.PartialDataError` naming the row, the column and the value,
recorded for the chunk's items. Reading refuses a file that is not such a partial (a
foreign or tampered file, a dtype that is not numeric) with the same error.

This module imports no Dask.
"""

from __future__ import annotations

import logging
import math
import os
import stat
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dagflow.exceptions import PartialDataError

__all__ = ["FORMATS", "KEY_COLUMN", "collect_partials", "read_partial", "rows_table",
           "table_rows", "write_partial"]

logger = logging.getLogger(__name__)

#: The ways an aggregate's partial may be stored (``OpSpec.partial``).
FORMATS = ("rows",)

#: The column with each row's item key (a name no op's column may take).
KEY_COLUMN = "_dagflow_item_key"

_FORMAT_KEY, _FORMAT = b"dagflow.partial", b"rows/1"
_NODE_KEY = b"dagflow.node_key"
_ARRAY = pa.struct([("dtype", pa.string()), ("shape", pa.list_(pa.int64())),
                    ("data", pa.large_binary())])
_NUMERIC_KINDS = "biufc"
_MAX_DIMS = 32
_SCALARS: dict[str, pa.DataType] = {"bool": pa.bool_(), "int": pa.int64(),
                                    "float": pa.float64(), "str": pa.string(),
                                    "bytes": pa.large_binary()}


def _kind(value: Any) -> str:
    """The storage kind of one value, or ``""`` when it is not data."""
    if value is None:
        return "null"
    if isinstance(value, bool | np.bool_):
        return "bool"
    if isinstance(value, int | np.integer):
        return "int"
    if isinstance(value, float | np.floating):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, bytes):
        return "bytes"
    if isinstance(value, np.ndarray) and value.dtype.kind in _NUMERIC_KINDS \
            and not value.dtype.hasobject and value.ndim <= _MAX_DIMS:
        return "array"
    return ""


def _not_data(op: str, where: str, value: Any) -> PartialDataError:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return PartialDataError(
        f"aggregate op {op!r} returned a partial that is not data: {where} is "
        f"{type(value).__name__} {shown}. An aggregate's partial is stored as Parquet "
        "(never pickled): return one mapping per image, of column names to None, bool, "
        "int, float, str, bytes or a numeric numpy array")


def rows_table(rows: Any, keys: Sequence[str], *, op: str = "aggregate") -> pa.Table:
    """A map's rows as an Arrow table, one row per item key, or why they are not data.

    Raises
    ------
    PartialDataError
        Naming the row, the column and the value that is not data.
    """
    if not isinstance(rows, Sequence) or isinstance(rows, str | bytes):
        raise _not_data(op, "the partial", rows)
    if len(rows) != len(keys):
        raise PartialDataError(
            f"aggregate op {op!r} returned {len(rows)} rows for {len(keys)} images: an "
            "aggregate's partial is one row (a mapping) per image, in order")
    columns: dict[str, list[Any]] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise _not_data(op, f"row {i}", row)
        for name in row:
            if not isinstance(name, str) or name == KEY_COLUMN:
                raise _not_data(op, f"a column name of row {i}", name)
            columns.setdefault(name, [None] * len(rows))
        for name, value in row.items():
            columns[name][i] = value
    arrays = {KEY_COLUMN: pa.array(list(keys), pa.string())}
    for name, values in columns.items():
        arrays[name] = _column(op, name, values)
    return pa.table(arrays)


def _column(op: str, name: str, values: list[Any]) -> pa.Array:
    kinds = set()
    for i, value in enumerate(values):
        kind = _kind(value)
        if not kind:
            raise _not_data(op, f"column {name!r} of row {i}", value)
        kinds.add(kind)
    kinds.discard("null")
    if kinds == {"int", "float"}:
        kinds = {"float"}
    if len(kinds) > 1:
        raise PartialDataError(
            f"aggregate op {op!r}: column {name!r} mixes {' and '.join(sorted(kinds))}; a "
            "column holds one kind of value")
    kind = kinds.pop() if kinds else "null"
    if kind == "null":
        return pa.nulls(len(values))
    if kind == "array":
        return pa.array([None if v is None else {
            "dtype": v.dtype.str, "shape": list(v.shape),
            "data": np.ascontiguousarray(v).tobytes()} for v in values], _ARRAY)
    plain = [v.item() if isinstance(v, np.generic) else v for v in values]
    try:
        return pa.array(plain, _SCALARS[kind])
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, UnicodeError) as exc:
        raise PartialDataError(f"aggregate op {op!r}: column {name!r} cannot be stored: "
                               f"{exc}") from None


def write_partial(path: str | os.PathLike[str], rows: Any, keys: Sequence[str], *,
                  node_key: str, op: str = "aggregate",
                  root: str | os.PathLike[str] | None = None) -> Path:
    """Store a map's rows for the items ``keys`` at ``path``, atomically, as Parquet.

    ``root`` (the state directory) keeps the write from going through a symlink.

    Raises
    ------
    PartialDataError
        When the rows are not data (see the module docstring); nothing is written.
    """
    from dagflow.io.atomic import atomic_write

    table = rows_table(rows, keys, op=op)
    table = table.replace_schema_metadata({_FORMAT_KEY: _FORMAT, _NODE_KEY: node_key.encode()})
    return atomic_write(path, lambda f: pq.write_table(table, f), root=root)


def read_partial(path: str | os.PathLike[str]) -> tuple[str, list[str], list[dict[str, Any]]]:
    """The node key, item keys and rows a partial holds.

    Only data is read: Parquet columns of plain types, and arrays rebuilt from their
    bytes with a numeric dtype.

    Raises
    ------
    PartialDataError
        When the file is not a partial written by :func:`write_partial`.
    """
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    if meta.get(_FORMAT_KEY) != _FORMAT or _NODE_KEY not in meta \
            or KEY_COLUMN not in table.column_names:
        raise PartialDataError(f"{path} is not an aggregate partial of this dagflow")
    for field in table.schema:
        if field.type not in (*_SCALARS.values(), pa.null(), _ARRAY) \
                and field.name != KEY_COLUMN:
            raise PartialDataError(f"{path}: column {field.name!r} has the type {field.type}, "
                                   "which no partial holds")
    keys = [str(k) for k in table.column(KEY_COLUMN).to_pylist()]
    return meta[_NODE_KEY].decode(), keys, table_rows(table, where=os.fspath(path))


def table_rows(table: pa.Table, *, where: str = "the partial") -> list[dict[str, Any]]:
    """The rows of a table made by :func:`rows_table`, without its key column; arrays
    rebuilt (numeric dtypes only).

    Raises
    ------
    PartialDataError
        When an array's stored dtype, shape and bytes do not make a numeric array.
    """
    arrays = [f.name for f in table.schema if f.type == _ARRAY]
    rows = table.drop_columns([KEY_COLUMN]).to_pylist()
    for row in rows:
        for name in arrays:
            if row[name] is not None:
                row[name] = _array(where, name, row[name])
    return rows


def _array(where: str, name: str, cell: Mapping[str, Any]) -> np.ndarray:
    try:
        dtype = np.dtype(str(cell["dtype"]))
    except (TypeError, ValueError):
        dtype = None
    shape = cell["shape"]
    if dtype is None or dtype.kind not in _NUMERIC_KINDS or dtype.hasobject \
            or not isinstance(shape, list) or len(shape) > _MAX_DIMS \
            or not all(isinstance(s, int) and s >= 0 for s in shape) \
            or math.prod(shape) * dtype.itemsize != len(cell["data"] or b""):
        raise PartialDataError(f"{where}: column {name!r} holds an array that is not a "
                               "numeric array's bytes")
    return np.frombuffer(cell["data"], dtype=dtype).reshape(shape).copy()


def collect_partials(directory: str | os.PathLike[str], node_key: str,
                     item_keys: Collection[str], *, node: str = "aggregate"
                     ) -> list[list[dict[str, Any]]]:
    """The rows of every partial in ``directory`` for ``item_keys``, for a reduce.

    Partials of this run and of earlier runs into the same output count (items done
    earlier still belong in the result); each item's newest row wins; a partial of other
    parameters (another ``node_key``) is left out. Only regular files named
    ``*.parquet`` are read, as data (:func:`read_partial`): a torn one (a killed run:
    its items ran again) or one that is not a partial is skipped with a warning; pickles
    left by an earlier version are never loaded.

    Returns
    -------
    list of list of dict
        One list of rows per partial that holds any of the items.
    """
    directory = Path(directory)
    found = []
    for path in directory.glob("*.parquet"):
        st = path.lstat()
        if stat.S_ISREG(st.st_mode):  # a symlink planted here is not followed
            found.append((st.st_mtime_ns, path))
    partials = []
    seen: set[str] = set()
    for _, path in sorted(found, reverse=True):
        try:
            key, keys, rows = read_partial(path)
        except Exception as exc:
            logger.warning("aggregate %r: ignoring %s: %s", node, path, exc)
            continue
        if key != node_key:
            continue
        wanted = [k in item_keys and k not in seen for k in keys]
        if any(wanted):
            seen.update(k for k, w in zip(keys, wanted, strict=True) if w)
            partials.append([r for r, w in zip(rows, wanted, strict=True) if w])
    pickles = list(directory.glob("*.pkl"))
    if pickles:
        logger.warning("aggregate %r: %d partials in %s are pickles left by an earlier "
                       "dagflow; they are never loaded (a pickle can run code): run once "
                       "with --no-resume to count their items again", node, len(pickles),
                       directory)
    return partials

"""Which item each task is on, readable after its worker died.

A worker that dies (a segfault in a decoder, ``os._exit``, its nanny killing it for
memory) takes its tasks' state with it: Dask knows which tasks it was running, not which
item. So the run directory holds a small table, ``inflight.bin``, memory-mapped by the
workers: one cell per chunk and node (and the chunk's commit), where the task writes the
item it starts on (one store into shared memory per item) and clears when it ends. The
kernel keeps the page when a process dies, so:

* the client, told which tasks a dead worker was running, reads their cells
  (:func:`read_cell`) and knows which item was running where;
* a task that Dask runs again after its worker died finds its cell still set and
  refuses to run that item again (:class:`ItemSuspected`), instead of killing a second
  worker before the client has taken the chunk apart.

Cells are hints, never verdicts: seen from another host over shared storage they may be
stale or late, and a worker killed from outside names an innocent item. The run loop
only convicts an item that kills a worker while it runs alone
(:mod:`dagflow.runtime.loop`).

The client creates the table (:func:`create_table`, sparse, sized for the run's chunks)
and grows it when the run makes more chunks; workers map it when a task first needs it.
This module imports no Dask.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from pathlib import Path

__all__ = ["TABLE", "Cell", "ItemSuspected", "create_table", "open_cell", "read_cell"]

#: The table's file name in the run directory.
TABLE = "inflight.bin"
_CELL = 8  # bytes: the item id + 1 (0: no task is on an item there)


class ItemSuspected(Exception):
    """A task started again after its worker died: its cell says which item it was on.

    Raised by the task before it runs anything, so that the item does not kill a second
    worker; the client takes the item out of its chunk.
    """

    def __init__(self, chunk: int, position: int, item_id: int) -> None:
        self.chunk, self.position, self.item_id = chunk, position, item_id
        super().__init__(chunk, position, item_id)

    def __str__(self) -> str:
        return (f"chunk {self.chunk} was on item {self.item_id} at node position "
                f"{self.position} when its worker died")


def create_table(run_dir: str | os.PathLike[str], cells: int) -> None:
    """Create the run's table, or grow it, to hold ``cells`` cells (a sparse file: pages
    take room only once written). Only the client sizes it, and only upwards."""
    path = Path(run_dir, TABLE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        if os.fstat(fd).st_size < cells * _CELL:
            os.ftruncate(fd, cells * _CELL)
    finally:
        os.close(fd)


def read_cell(run_dir: str | os.PathLike[str], index: int) -> int | None:
    """The item a task was on at cell ``index`` (``None``: none, or no table)."""
    try:
        fd = os.open(Path(run_dir, TABLE), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        data = os.pread(fd, _CELL, index * _CELL)
    finally:
        os.close(fd)
    value = int.from_bytes(data, "little", signed=True) if len(data) == _CELL else 0
    return value - 1 if value > 0 else None


class _Table:
    """A worker process's mapping of one run's table."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.map: mmap.mmap | None = None
        self.cells: memoryview | None = None
        self.size = 0
        self.lock = threading.Lock()
        self.remap()

    def remap(self) -> None:
        fd = os.open(self.path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        try:
            size = os.fstat(fd).st_size // _CELL
            if size > self.size:
                self.map = mmap.mmap(fd, size * _CELL)  # the old one goes with its users
                self.cells = memoryview(self.map).cast("q")
                self.size = size
        finally:
            os.close(fd)


class Cell:
    """A task's cell: the item loop writes ``cells[index] = item_id + 1`` before each
    item; :meth:`close` clears it when the task ends. A task without a table (not on a
    worker, no table, beyond it) gets a cell that writes into a private list."""

    __slots__ = ("cells", "index")

    def __init__(self, cells: memoryview | list[int], index: int) -> None:
        self.cells, self.index = cells, index

    def close(self) -> None:
        self.cells[self.index] = 0


_TABLES: dict[Path, _Table] = {}
_TABLES_LOCK = threading.Lock()
#: Tables a process keeps mapped (the latest runs it has worked for).
_KEEP = 4


def _table(run_dir: str) -> _Table | None:
    path = Path(run_dir, TABLE)
    with _TABLES_LOCK:
        table = _TABLES.get(path)
        if table is None:
            try:
                table = _Table(path)
            except (OSError, ValueError):  # no table (yet), or an empty one
                return None
            _TABLES[path] = table
            while len(_TABLES) > _KEEP:
                _TABLES.pop(next(iter(_TABLES)))
    return table


def open_cell(run_dir: str, on_worker: bool, chunk: int, position: int,
              stride: int) -> Cell:
    """The cell of ``chunk``'s task at node ``position`` (``stride`` positions a chunk).

    Raises
    ------
    ItemSuspected
        The cell names an item: an earlier run of this task died on it.
    """
    index = chunk * stride + position
    table = _table(run_dir) if on_worker else None
    if table is not None and index >= table.size:
        with table.lock, contextlib.suppress(OSError, ValueError):
            table.remap()
    if table is None or table.cells is None or index >= table.size:
        return Cell([0], 0)
    cells = table.cells
    prior = cells[index]
    if prior > 0:
        raise ItemSuspected(chunk, position, prior - 1)
    return Cell(cells, index)

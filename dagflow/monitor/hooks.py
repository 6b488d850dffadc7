"""Where the runtime and the tasks tell monitoring what happens.

The runtime calls :func:`run_started` once connected and :func:`run_finished` at the
end; each chunk's records task calls :func:`chunk_done` on its worker with the chunk's
records. Monitoring (the scheduler plugin, metrics files, the report) hangs off these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["chunk_done", "run_finished", "run_started"]


def run_started(client: Any, ctx: Any, tasks: Mapping[str, Any]) -> None:
    """The run is connected to its cluster and about to submit chunks."""


def chunk_done(ctx: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """A chunk's records are written (runs on the worker)."""


def run_finished(client: Any, ctx: Any, result: Any) -> None:
    """Every chunk and aggregate is done; the summary is about to be written."""

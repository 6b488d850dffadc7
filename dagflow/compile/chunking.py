"""Grouping items into chunks: one Dask task per node and chunk, not per image.

A task costs about a millisecond of scheduling; an image costs tens. Chunks of a few
dozen items make that overhead vanish while still giving every worker thread several
chunks to balance the load.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from dagflow.compile.spec import Chunk

__all__ = ["choose_chunk_size", "make_chunks"]

#: Chunks per worker thread that "auto" aims for, so stragglers even out.
CHUNKS_PER_THREAD = 4


def choose_chunk_size(n_items: int, n_threads: int, *, minimum: int = 1,
                      maximum: int = 64) -> int:
    """Items per chunk for ``n_items`` on ``n_threads`` threads.

    Examples
    --------
    >>> choose_chunk_size(400, 2), choose_chunk_size(100_000, 2), choose_chunk_size(3, 8)
    (50, 64, 1)
    """
    if n_items <= 0:
        return max(1, minimum)
    target = math.ceil(n_items / max(1, n_threads * CHUNKS_PER_THREAD))
    return max(minimum, min(maximum, target))


def make_chunks(items: Sequence[Mapping[str, Any]], size: int, *, start: int = 0) -> list[Chunk]:
    """Split ``items`` into chunks of ``size``, numbered from ``start``."""
    return [Chunk(start + i, tuple(items[j:j + size]))
            for i, j in enumerate(range(0, len(items), size))]

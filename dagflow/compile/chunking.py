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

__all__ = ["choose_chunk_size", "make_chunks", "taper"]

#: Chunks per worker thread that "auto" aims for, so stragglers even out.
CHUNKS_PER_THREAD = 4


def choose_chunk_size(n_items: int, n_threads: int, *, minimum: int = 1,
                      maximum: int = 64, megapixels_per_item: float | None = None,
                      chunk_megapixels: float | None = None) -> int:
    """Items per chunk for ``n_items`` on ``n_threads`` threads.

    At least :data:`CHUNKS_PER_THREAD` chunks per thread, at most ``maximum`` items, and,
    given the megapixels an item goes through (summed over the nodes), at most
    ``chunk_megapixels`` of them per chunk: cheap items get large chunks (a chunk costs
    tens of milliseconds of its own), costly ones small chunks (a chunk is what a killed
    run redoes, and how often progress moves).

    Examples
    --------
    >>> choose_chunk_size(400, 2), choose_chunk_size(100_000, 2), choose_chunk_size(3, 8)
    (50, 64, 1)
    >>> choose_chunk_size(100_000, 2, maximum=4096, megapixels_per_item=3.7,
    ...                   chunk_megapixels=1000)
    270
    """
    if n_items <= 0:
        return max(1, minimum)
    target = math.ceil(n_items / max(1, n_threads * CHUNKS_PER_THREAD))
    if megapixels_per_item and chunk_megapixels:
        # (a mean summed over a batch carries rounding: 1 / 0.04000000001 is still 25)
        target = min(target, int(chunk_megapixels / megapixels_per_item * (1 + 1e-9)))
    return max(minimum, min(maximum, target))


def make_chunks(items: Sequence[Mapping[str, Any]], size: int, *, start: int = 0) -> list[Chunk]:
    """Split ``items`` into chunks of ``size``, numbered from ``start``."""
    return [Chunk(start + i, tuple(items[j:j + size]))
            for i, j in enumerate(range(0, len(items), size))]


#: The last chunks hold at most 1/TAPER of the items left per thread.
TAPER = 2


def taper(chunks: Sequence[Chunk], threads: int) -> list[Chunk]:
    """Split the last of ``chunks`` so that a batch ends with small chunks, not a long tail.

    Walking back from the end, a chunk is cut into pieces of at most
    ``ceil(items from its start to the end / (threads * TAPER))`` items, so that chunk
    sizes fall as the batch nears its end (guided scheduling): the threads finish
    together, however large the chunks before. Only the last ``TAPER * threads``
    chunks' worth of items is affected; indices are renumbered from the first chunk's.

    Examples
    --------
    >>> chunks = make_chunks(list(range(400)), 50)
    >>> [len(c) for c in taper(chunks, 2)]
    [50, 50, 50, 50, 50, 25, 25, 25, 25, 12, 13, 12, 13]
    >>> [c.index for c in taper(chunks, 2)][-3:]
    [10, 11, 12]
    """
    pieces: list[tuple[Mapping[str, Any], ...]] = []
    remaining = 0
    for chunk in reversed(chunks):
        remaining += len(chunk)
        limit = max(1, math.ceil(remaining / (max(1, threads) * TAPER)))
        parts = max(1, math.ceil(len(chunk) / limit))
        bounds = [len(chunk) * k // parts for k in range(parts + 1)]  # as even as can be
        pieces.extend(chunk.items[bounds[k - 1]:bounds[k]] for k in range(parts, 0, -1))
    start = chunks[0].index if chunks else 0
    return [Chunk(start + i, tuple(items)) for i, items in enumerate(reversed(pieces))]

"""Workflow + items -> Dask graph: resolving nodes, chunking items, building layers.

Compiling computes nothing; the result runs on any scheduler, the synchronous one
included.
"""

from dagflow.compile.chunking import choose_chunk_size, make_chunks
from dagflow.compile.graph import COMMIT_PREFIX, CompiledGraph, compile_chunks, layer_name
from dagflow.compile.spec import Chunk, NodeTask, RunContext, node_tasks

__all__ = [
    "COMMIT_PREFIX",
    "Chunk",
    "CompiledGraph",
    "NodeTask",
    "RunContext",
    "choose_chunk_size",
    "compile_chunks",
    "layer_name",
    "make_chunks",
    "node_tasks",
]

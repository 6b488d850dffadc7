"""Compile resolved nodes and chunks of items into a Dask graph. Computes nothing.

The graph has one layer per node, named ``"<node id>-<token>"`` so that Dask's
``key_split`` (and so the dashboard) groups tasks by node, and one task per node and
chunk, keyed ``(layer name, chunk index)``. Each node's annotations (resources, Dask
retries, priority) are attached to its own layer, where the scheduler reads them. A last
layer, ``dagflow-records``, has one task per chunk that writes the chunk's records and
returns its summary: those are the keys the runtime waits on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dask._task_spec import Task, TaskRef
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

# the module, not its names: importing dagflow.execute first imports this package
# (through dagflow.compile.spec), while execute is still half-initialised
from dagflow import execute
from dagflow.compile.spec import Chunk, NodeTask, RunContext

__all__ = ["COMMIT_PREFIX", "CompiledGraph", "compile_chunks", "layer_name"]

COMMIT_PREFIX = "dagflow-records"

#: ``annotations(node_task, chunk) -> dict`` for per-chunk annotations (e.g. MEMORY).
ChunkAnnotations = Callable[[NodeTask, Chunk], Mapping[str, Any]]


def layer_name(node_id: str, token: str) -> str:
    """The layer (and task-key prefix) of a node: ``key_split`` gives back ``node_id``."""
    if token.isalpha():  # an all-letter token would be kept by key_split as part of the name
        token = "0" + token[1:]
    return f"{node_id}-{token}"


@dataclass
class CompiledGraph:
    """A compiled window of chunks.

    Attributes
    ----------
    graph
        The high-level graph, one layer per node plus the records layer.
    commit_keys
        One key per chunk; its result is the chunk's :class:`~dagflow.execute.ChunkSummary`.
    layers
        Node id to layer name.
    """

    graph: HighLevelGraph
    commit_keys: list[tuple[str, int]]
    layers: dict[str, str]

    def __len__(self) -> int:
        return sum(len(layer) for layer in self.graph.layers.values())


def compile_chunks(
    tasks: Mapping[str, NodeTask],
    ctx: RunContext,
    chunks: Sequence[Chunk],
    *,
    token: str,
    annotations: Mapping[str, Mapping[str, Any]] | None = None,
    chunk_annotations: ChunkAnnotations | None = None,
) -> CompiledGraph:
    """Build the graph for ``chunks``.

    Parameters
    ----------
    tasks
        Resolved nodes in topological order (from :func:`~dagflow.compile.spec.node_tasks`).
    ctx
        The run's context, passed to every task.
    chunks
        The chunks to compile; their ``index`` is part of every key.
    token
        Identifies the run in layer names.
    annotations
        Per node id, annotations for its whole layer (``resources``, ``retries``...).
    chunk_annotations
        A function giving per-chunk annotations, merged over the layer's; a resource
        that varies per chunk (``MEMORY``) goes here.
    """
    layers: dict[str, MaterializedLayer] = {}
    dependencies: dict[str, set[str]] = {}
    names = {nid: layer_name(nid, token) for nid in tasks}
    for nid, task in tasks.items():
        name = names[nid]
        mapping = {}
        for chunk in chunks:
            key = (name, chunk.index)
            # a root node's task gets the chunk, the others take it from their parents'
            # state: the items are serialised once per chunk, not once per node
            parents = [TaskRef((names[p], chunk.index)) for p in task.parents] or [chunk]
            mapping[key] = Task(key, execute.run_node, task, ctx, *parents)
        layer_annotations = dict((annotations or {}).get(nid, {}))
        if chunk_annotations is not None:
            # computed here, for this window's keys: the annotation travels with the
            # graph, and a function calling chunk_annotations would carry the whole batch
            static = layer_annotations.get("resources", {})
            by_key = {(name, c.index): {**static, **chunk_annotations(task, c).get("resources", {})}
                      for c in chunks}
            layer_annotations = {**layer_annotations, "resources": by_key.__getitem__}
        layers[name] = MaterializedLayer(mapping, annotations=layer_annotations or None)
        dependencies[name] = {names[p] for p in task.parents}
    leaves = tuple(nid for nid, t in tasks.items() if t.leaf)
    commit = layer_name(COMMIT_PREFIX, token)
    commit_mapping = {}
    for chunk in chunks:
        key = (commit, chunk.index)
        refs = [TaskRef((names[nid], chunk.index)) for nid in leaves]
        commit_mapping[key] = Task(key, execute.commit_chunk, ctx, leaves, *refs)
    layers[commit] = MaterializedLayer(commit_mapping)
    dependencies[commit] = {names[nid] for nid in leaves}
    graph = HighLevelGraph(layers, dependencies)
    return CompiledGraph(graph, list(commit_mapping), names)

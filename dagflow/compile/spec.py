"""What a task needs to know, resolved on the client: :class:`NodeTask`, :class:`RunContext`.

A remote worker sees neither the workflow nor the client's configuration, so everything
is resolved here once (parameters with defaults, retry policy, timeout, checkpoint keys)
and travels inside the graph as small frozen values.

A node's *key* is a hash of its op, its version, its resolved parameters, its condition
and its parents' keys: an item's checkpoint key for a node is ``(item key, node key)``,
so a changed input re-runs that item and a changed parameter re-runs that node and
everything after it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dagflow import config
from dagflow.ops.registry import OpSpec, get_op
from dagflow.recovery.policy import RetryPolicy
from dagflow.workflow.conditions import Condition
from dagflow.workflow.node import Node
from dagflow.workflow.workflow import Workflow

__all__ = ["SKIP_KEY", "Chunk", "NodeTask", "RunContext", "node_tasks"]

#: The item field naming the nodes an item skips in this run: done by an earlier run,
#: and needed by none of the nodes it runs (see :mod:`dagflow.runtime.selection`).
SKIP_KEY = "skip"


@dataclass(frozen=True)
class NodeTask:
    """One node, resolved for execution.

    It carries its :class:`~dagflow.ops.registry.OpSpec`, so an op registered only in the
    client (in a notebook, say) still runs on remote workers.
    """

    id: str
    op: str
    kind: str
    params: Mapping[str, Any]
    parents: tuple[str, ...]
    key: str
    policy: RetryPolicy
    timeout: float | None = None
    when: Condition | None = None
    device: str = "auto"
    leaf: bool = False
    #: Consecutive failures (not bad input) after which the rest of a chunk is not run.
    breaker_failures: int = 10
    #: The node's place in the workflow's topological order (0 for the first).
    position: int = 0
    spec: OpSpec | None = field(default=None, repr=False, compare=False)

    @property
    def op_spec(self) -> OpSpec:
        return self.spec if self.spec is not None else get_op(self.op)

    @functools.cached_property
    def guards_pixels(self) -> bool:
        """Whether the op is a source with a ``max_pixels`` limit, which an item planned
        without its header lowers to its guard (asked once per node, not per item)."""
        spec = self.op_spec
        return spec.kind == "source" and spec.param("max_pixels") is not None

    @functools.cached_property
    def op_params(self) -> dict[str, Any]:
        """The parameters passed to the op (``subdir`` belongs to the node, not the op);
        built once, not per item."""
        return {k: v for k, v in self.params.items() if k != "subdir"}


@dataclass(frozen=True)
class RunContext:
    """The run-wide facts every task needs."""

    run_id: str
    run_dir: str
    #: Absolute: outputs are written here, and recorded relative to it.
    output_dir: str
    state_dir: str
    workflow: str
    checkpoint: bool = True
    #: Record each output's digest as well as its size and time (``output_hash``).
    hash_outputs: bool = False
    #: Nodes in the workflow: a chunk's cells in the in-flight table
    #: (:mod:`dagflow.recovery.inflight`), one per node.
    nodes: int = 0


class Chunk:
    """A group of items processed by one task per node.

    Kept as an object (not a list) so that Dask treats it as a literal and does not walk
    its items looking for task keys. Pickled, its items are one byte string, unpickled
    only where they are first used: the scheduler a chunk passes through on its way to a
    worker copies those bytes instead of unpickling and pickling every item again.
    """

    __slots__ = ("_blob", "_items", "_skips", "index")

    def __init__(self, index: int, items: Sequence[Mapping[str, Any]]) -> None:
        self.index = index
        self._items: tuple[Mapping[str, Any], ...] | None = tuple(items)
        self._blob: bytes | None = None
        self._skips: dict[int, frozenset[str]] | None = None

    @property
    def skips(self) -> dict[int, frozenset[str]]:
        """The nodes each item skips (:data:`SKIP_KEY`), by item id; read once per chunk
        (its tasks on one worker share the chunk), empty for most chunks."""
        if self._skips is None:
            self._skips = {i["item_id"]: i[SKIP_KEY] for i in self.items if SKIP_KEY in i}
        return self._skips

    @property
    def items(self) -> tuple[Mapping[str, Any], ...]:
        if self._items is None:
            self._items = pickle.loads(self._blob)  # type: ignore[arg-type]
            self._blob = None  # the items may change (fingerprints): pickled anew
        return self._items

    def __reduce__(self) -> tuple[Any, ...]:
        blob = self._blob if self._items is None else pickle.dumps(self._items, protocol=5)
        return _chunk_from_pickle, (self.index, blob)

    def __len__(self) -> int:
        return len(self.items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Chunk):
            return NotImplemented
        return self.index == other.index and self.items == other.items

    __hash__ = None  # type: ignore[assignment]  # items are dicts

    def __repr__(self) -> str:
        return f"Chunk(index={self.index})"


def _chunk_from_pickle(index: int, blob: bytes) -> Chunk:
    """A chunk from its pickled items, left unpickled until used (see :class:`Chunk`)."""
    chunk = Chunk.__new__(Chunk)
    chunk.index, chunk._items, chunk._blob, chunk._skips = index, None, blob, None
    return chunk


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _input_long_side(node: Node) -> int | None:
    """The longest input side ``node``'s op makes use of, as its declaration says."""
    rule = get_op(node.op).input_long_side
    return rule(node.params) if rule is not None else None


def node_tasks(workflow: Workflow, *, max_pixels: int | None = None) -> dict[str, NodeTask]:
    """Resolve every node of a validated workflow, in topological order.

    ``max_pixels`` fills ``load``'s limit when the workflow leaves it unset; a ``load``
    feeding only ops that use at most a long side of their input (a ``resize`` by
    ``long_side``: its declaration's ``input_long_side``) is told to decode at reduced
    scale (``reduce_to``), so a JPEG is never decoded at full size only to be shrunk.
    """
    retry_defaults = config.get("retry")
    default_timeout = config.get("timeout")
    children = workflow.children()
    by_id = {n.id: n for n in workflow.nodes}
    out: dict[str, NodeTask] = {}
    for node in workflow.topological_order():
        spec = get_op(node.op)
        params, _ = spec.resolve_params(node.params)
        if spec.kind == "source":
            if params.get("max_pixels", 0) is None:
                params["max_pixels"] = max_pixels or config.get("max-pixels")
            kids = [by_id[c] for c in children.get(node.id, [])]
            sides = [_input_long_side(k) for k in kids]
            if "reduce_to" in params and params["reduce_to"] is None and kids and all(sides):
                params["reduce_to"] = max(int(side) for side in sides)  # type: ignore[arg-type]
        key = _digest({
            "op": node.op, "version": spec.version,
            # reduce_to changes how, not what, is computed: keep it out of the key
            "params": {k: v for k, v in params.items() if k != "reduce_to"},
            "when": str(node.when) if node.when is not None else None,
            "parents": [out[p].key for p in node.after],
        })
        out[node.id] = NodeTask(
            id=node.id, op=node.op, kind=spec.kind, params=params, parents=node.after, key=key,
            policy=RetryPolicy.from_config(node.retry, retry_defaults),
            timeout=node.timeout if node.timeout is not None else default_timeout,
            when=node.when, device=node.device, leaf=not children.get(node.id),
            breaker_failures=int(config.get("breaker.failures")), position=len(out),
            spec=spec,
        )
    return out

"""Validation of a workflow before anything runs.

Every problem found is collected and raised together as one
:class:`~dagflow.exceptions.WorkflowValidationError`, one line each, naming the node and
what to fix: duplicate ids, ids that Dask's key naming would mangle, ``after`` naming no
node, cycles (with the nodes on them), unknown ops (with the closest names), missing,
unknown or ill-typed parameters, wrong number of inputs, and outputs that would collide.

It imports the op registry but not Dask: the rule for ids mirrors ``dask.utils.key_split``
(a test checks the two agree).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from graphlib import CycleError, TopologicalSorter
from typing import TYPE_CHECKING

from dagflow.exceptions import UnknownOpError, WorkflowValidationError
from dagflow.ops.registry import get_op
from dagflow.workflow.node import DEVICES

if TYPE_CHECKING:
    from dagflow.workflow.workflow import Workflow

__all__ = ["RETRY_KEYS", "find_problems", "survives_key_split", "topological_ids", "validate"]

_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(-[A-Za-z]+)*$")
_HEX8_RE = re.compile(r"^[a-f0-9]{8}$")
_HEX32_RE = re.compile(r"^[a-f0-9]{32}$")

RETRY_KEYS = {"attempts", "delay", "multiplier", "max-delay", "jitter", "on"}


def survives_key_split(node_id: str) -> bool:
    """Whether Dask's ``key_split`` gives back ``node_id`` for the node's task keys.

    Task keys are ``"<id>-<token>"``; the dashboard names task groups with
    ``key_split``, which drops hyphenated words that are not purely alphabetic or that
    look like 8-digit hex. ASCII ids starting with a letter, with hyphens only before
    alphabetic words that are not hex-like, survive.

    Examples
    --------
    >>> survives_key_split("thumb_512"), survives_key_split("make-thumbs")
    (True, True)
    >>> survives_key_split("resize-2"), survives_key_split("2x")
    (False, False)
    """
    if not _ID_RE.match(node_id) or _HEX32_RE.match(node_id):
        return False
    return not any(_HEX8_RE.match(word) for word in node_id.split("-")[1:])


def topological_ids(workflow: Workflow) -> list[str]:
    """Node ids in an order where parents come first; raises on a cycle."""
    order = {n.id: i for i, n in enumerate(workflow.nodes)}
    sorter = TopologicalSorter({n.id: [a for a in n.after if a in order] for n in workflow.nodes})
    try:
        sorter.prepare()
    except CycleError as e:
        cycle = e.args[1]
        raise WorkflowValidationError(
            [f"cycle between nodes: {' -> '.join(cycle)}"], workflow.name
        ) from None
    out: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=order.__getitem__)
        out.extend(ready)
        sorter.done(*ready)
    return out


def _check_run_options(node, problems: list[str]) -> None:
    where = f"node {node.id!r}"
    if node.device not in DEVICES:
        problems.append(f"{where}: device must be one of {', '.join(DEVICES)}, got {node.device!r}")
    if node.timeout is not None and (
        not isinstance(node.timeout, int | float) or isinstance(node.timeout, bool)
        or node.timeout <= 0
    ):
        problems.append(f"{where}: timeout must be a positive number of seconds, "
                        f"got {node.timeout!r}")
    if node.concurrency is not None and (
        not isinstance(node.concurrency, int) or isinstance(node.concurrency, bool)
        or node.concurrency < 1
    ):
        problems.append(f"{where}: concurrency must be a positive integer, "
                        f"got {node.concurrency!r}")
    if node.retry is not None:
        unknown = set(node.retry) - RETRY_KEYS
        if unknown:
            problems.append(f"{where}: unknown retry keys {sorted(unknown)}; "
                            f"valid: {', '.join(sorted(RETRY_KEYS))}")
        attempts = node.retry.get("attempts", 1)
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            problems.append(f"{where}: retry attempts must be an integer >= 1, got {attempts!r}")


def validate(workflow: Workflow) -> None:
    """Check ``workflow``; raise :class:`WorkflowValidationError` listing every problem."""
    problems = find_problems(workflow)
    if problems:
        raise WorkflowValidationError(problems, workflow.name)


def find_problems(workflow: Workflow, *, unbuilt: Collection[str] = ()) -> list[str]:
    """Every problem of ``workflow``, one line each (empty when it is valid).

    Parameters
    ----------
    unbuilt
        Ids of nodes the workflow's file declares but that could not be built (their own
        problems are reported by the loader): 'after' may name them, and the workflow
        may lack its source because of them, without a problem reported here.
    """
    problems: list[str] = []
    ids = [n.id for n in workflow.nodes]
    seen: set[str] = set()
    for nid in ids:
        if nid in seen:
            problems.append(f"duplicate node id {nid!r}: node ids must be unique")
        seen.add(nid)
    for node in workflow.nodes:
        if not survives_key_split(node.id):
            problems.append(
                f"node id {node.id!r} would not survive Dask's task naming: use letters, digits "
                "and '_' starting with a letter (a '-' only before a word of letters), "
                f"e.g. {re.sub(r'[^A-Za-z0-9_]', '_', node.id).lstrip('_0123456789') or 'node'!r}"
            )
        for parent in node.after:
            if parent not in seen and parent not in unbuilt:
                problems.append(f"node {node.id!r}: 'after' names {parent!r}, which is not a node "
                                f"of this workflow (nodes: {', '.join(ids)})")
    try:
        topological_ids(workflow)
    except WorkflowValidationError as e:
        problems.extend(e.problems)

    children = workflow.children()
    outputs: dict[tuple[str, ...], str] = {}
    has_source = False
    for node in workflow.nodes:
        where = f"node {node.id!r}"
        _check_run_options(node, problems)
        try:
            spec = get_op(node.op)
        except UnknownOpError as e:
            problems.append(f"{where}: {e}")
            continue
        _, param_problems = spec.resolve_params(node.params)
        problems.extend(f"{where} (op {node.op!r}): {p}" for p in param_problems)
        has_source = has_source or spec.kind == "source"
        if len(node.after) != spec.inputs:
            expected = {0: "no 'after' (it reads the input files)",
                        1: "exactly one node in 'after'"}
            problems.append(f"{where}: op {node.op!r} takes "
                            f"{expected.get(spec.inputs, f'{spec.inputs} nodes in after')}, "
                            f"got {len(node.after)}")
        if spec.kind in ("sink", "aggregate") and children.get(node.id):
            problems.append(f"{where}: op {node.op!r} produces files, not images; nodes "
                            f"{children[node.id]} cannot run after it")
        if spec.kind == "sink" and not param_problems:
            resolved = spec.resolve_params(node.params)[0]
            subdir = str(resolved.get("subdir") or "")
            name = str(resolved.get("name") or "{rel}")
            suffix = spec.suffix(resolved) if spec.suffix else ""
            # the same directory, name and suffix for every item: the same files (what
            # else collides, item by item, is found when the run is planned)
            where_to = (subdir, name, suffix) if "{node}" not in name else (node.id,)
            other = outputs.get(where_to)
            if other is not None:
                problems.append(f"nodes {other!r} and {node.id!r} would write the same output "
                                f"files; give one of them a different 'subdir' or 'name' "
                                "parameter")
            outputs[where_to] = node.id
    if workflow.nodes and not has_source and not unbuilt:
        problems.append("the workflow has no source node: add a node with op 'load'")
    return problems

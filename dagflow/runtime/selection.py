"""What a run is asked to do: its workflow, its inputs, and what of them is left to do.

Shared by :func:`dagflow.run` and :func:`dagflow.plan` (a plan shows what a run would
do), so that neither imports the other. Which items run, and which of their nodes, is
decided from the records of earlier runs into the same output
(:class:`~dagflow.recovery.checkpoint.Checkpoint`):

* an item runs when one of its nodes is not done: never recorded ``ok`` or ``skipped``
  with this node key (a changed parameter changes the key of its node and of every node
  after it), or its output is missing or changed since it was recorded (size and
  modification time, a digest where one was recorded);
* such an item runs only the nodes that are not done and the nodes they need (upstream
  nodes recomputed in memory): a done sink is neither written nor recorded again; the
  others are named in the item's ``skip``;
* an item quarantined as a bad input is not run again until its file changes (a new
  fingerprint) or ``retry_failed`` asks for it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dagflow import config
from dagflow.compile import NodeTask
from dagflow.compile.spec import SKIP_KEY
from dagflow.inputs import InputSet, resolve_inputs
from dagflow.io.storage import is_remote
from dagflow.ops.registry import get_op
from dagflow.recovery.checkpoint import Checkpoint, check_output, record_parts
from dagflow.workflow import Workflow

__all__ = ["SKIP_KEY", "WorkflowLike", "fingerprints_needed", "load_workflow", "run_inputs",
           "select_items"]

WorkflowLike = Workflow | str | os.PathLike[str]

#: Kinds of node whose records point at an output that must still be there.
_WITH_OUTPUT = ("sink", "aggregate")


def load_workflow(workflow: WorkflowLike) -> Workflow:
    """A validated workflow from a :class:`Workflow`, a YAML path or YAML text."""
    if not isinstance(workflow, Workflow):
        workflow = Workflow.from_yaml(Path(workflow) if not isinstance(workflow, str)
                                      or "\n" not in workflow else workflow)
    return workflow.validate()


def run_inputs(workflow: Workflow, inputs: Any, output: Path | str, resume: bool) -> InputSet:
    """``inputs`` resolved for a run of ``workflow`` into ``output`` (``run`` and ``plan``
    alike): the output directory left out, fingerprints read only where
    :func:`fingerprints_needed` says so; an :class:`InputSet` is taken as it is."""
    if isinstance(inputs, InputSet):
        return inputs
    return resolve_inputs(inputs, exclude=output,
                          defer_fingerprint=not fingerprints_needed(workflow, output, resume))


def fingerprints_needed(workflow: Workflow, output: Path | str, resume: bool) -> bool:
    """Whether a run must read its inputs' fingerprints before it starts.

    It must when it resumes or retries into an ``output`` that holds records (to compare
    them with those), and when the workflow has an aggregate node (its partials are
    combined by item at the end). A first run need not: its tasks read each item's
    fingerprint where they read the item (in parallel, on the workers), and the records
    carry it to the next run.
    """
    if any(get_op(n.op).kind == "aggregate" for n in workflow.nodes):
        return True
    if is_remote(output):  # a store's URL: its records are read once it is locked
        return resume
    return resume and bool(record_parts(output / config.get("state-dir")))


def _ancestors(tasks: Mapping[str, NodeTask]) -> dict[str, frozenset[str]]:
    """Per node, itself and every node upstream of it (``tasks`` in topological order)."""
    out: dict[str, frozenset[str]] = {}
    for nid, task in tasks.items():
        out[nid] = frozenset({nid}).union(*(out[p] for p in task.parents))
    return out


def select_items(
    items: Sequence[Mapping[str, Any]],
    tasks: Mapping[str, NodeTask],
    checkpoint: Checkpoint,
    *,
    retry_failed: bool = False,
    output: str | os.PathLike[str] = ".",
) -> tuple[list[Mapping[str, Any]], int]:
    """The items to run, and how many are already done (see the module docstring).

    Parameters
    ----------
    items
        The run's items.
    tasks
        Its resolved nodes, in topological order.
    checkpoint
        The records of earlier runs into ``output``.
    retry_failed
        Run only the items with a failure on record, quarantined ones included.
    output
        The output root that recorded outputs are relative to.

    Returns
    -------
    list, int
        The items to run (an item that skips nodes is a copy naming them under
        :data:`SKIP_KEY`), and the number of items already done.
    """
    if not retry_failed and not checkpoint.done and not checkpoint.failed:
        return list(items), 0  # nothing on record (a first run): every item runs
    root = os.fspath(output) if is_remote(output) else os.path.abspath(output)
    upstream = _ancestors(tasks)
    every = frozenset(tasks)
    checked = [(nid, t.key, t.kind in _WITH_OUTPUT) for nid, t in tasks.items()]
    to_run: list[Mapping[str, Any]] = []
    done = 0
    for item in items:
        ik = item["key"]
        if not retry_failed and any(checkpoint.failed.get((ik, key)) == "bad_input"
                                    for _, key, _ in checked):
            done += 1
            continue
        left = [nid for nid, key, with_output in checked
                if not checkpoint.is_done(ik, key)
                or (with_output and _output_changed(checkpoint, root, ik, key))]
        if not left:
            done += 1
            continue
        if retry_failed and not any((ik, key) in checkpoint.failed for _, key, _ in checked):
            continue
        needed = frozenset().union(*(upstream[nid] for nid in left))
        if needed != every:
            item = {**item, SKIP_KEY: every - needed}
        to_run.append(item)
    return to_run, done


def _output_changed(checkpoint: Checkpoint, root: str, item_key: str, node_key: str) -> bool:
    proof = checkpoint.outputs.get((item_key, node_key))
    return proof is not None and check_output(root, proof) is not None

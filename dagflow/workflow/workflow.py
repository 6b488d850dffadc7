"""The :class:`Workflow`: a named DAG of nodes, and its YAML form.

A workflow is pure data. It can be built in Python or loaded from YAML (both give equal
objects), validated (:meth:`Workflow.validate`, see :mod:`dagflow.workflow.validate`),
sliced and rendered; compiling it into a Dask graph is :mod:`dagflow.compile`'s job.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dagflow.exceptions import WorkflowValidationError
from dagflow.workflow.conditions import ConditionError, parse_condition
from dagflow.workflow.node import Node

__all__ = ["Workflow"]

_NODE_KEYS = {"id", "op", "params", "after", "when", "device", "retry", "timeout", "concurrency"}


@dataclass(frozen=True)
class Workflow:
    """A named DAG of :class:`Node` objects.

    Parameters
    ----------
    name
        The workflow's name (used in run ids and reports).
    nodes
        The nodes, in any order; dependencies are given by each node's ``after``.

    Examples
    --------
    >>> wf = Workflow("thumbnails", [
    ...     Node("load", "load", {"auto_orient": True}),
    ...     Node("small", "resize", {"long_side": 512}, after=["load"]),
    ...     Node("save", "save", {"format": "jpeg", "quality": 85}, after=["small"]),
    ... ])
    >>> [n.id for n in wf.topological_order()]
    ['load', 'small', 'save']
    """

    name: str
    nodes: tuple[Node, ...]

    def __init__(self, name: str, nodes: Iterable[Node]) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "nodes", tuple(nodes))

    # -- structure -------------------------------------------------------------------------

    def node(self, node_id: str) -> Node:
        """The node with id ``node_id``."""
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(f"workflow {self.name!r} has no node {node_id!r}")

    def children(self) -> dict[str, list[str]]:
        """For each node id, the ids of the nodes that run after it."""
        out: dict[str, list[str]] = {n.id: [] for n in self.nodes}
        for n in self.nodes:
            for parent in n.after:
                out.setdefault(parent, []).append(n.id)
        return out

    def topological_order(self) -> list[Node]:
        """The nodes, parents before children (ties keep declaration order)."""
        from dagflow.workflow.validate import topological_ids

        by_id = {n.id: n for n in self.nodes}
        return [by_id[i] for i in topological_ids(self)]

    def leaves(self) -> list[Node]:
        """The nodes nothing runs after."""
        children = self.children()
        return [n for n in self.nodes if not children.get(n.id)]

    def descendants(self, node_id: str) -> set[str]:
        """Every node that depends on ``node_id``, directly or not."""
        children = self.children()
        seen: set[str] = set()
        stack = list(children.get(node_id, []))
        while stack:
            nid = stack.pop()
            if nid not in seen:
                seen.add(nid)
                stack.extend(children.get(nid, []))
        return seen

    def to_outputs(self, *node_ids: str) -> Workflow:
        """The sub-workflow needed to compute ``node_ids`` (they and their ancestors)."""
        by_id = {n.id: n for n in self.nodes}
        keep: set[str] = set()
        stack = list(node_ids)
        while stack:
            nid = stack.pop()
            if nid not in by_id:
                raise KeyError(f"workflow {self.name!r} has no node {nid!r}")
            if nid not in keep:
                keep.add(nid)
                stack.extend(by_id[nid].after)
        return Workflow(self.name, [n for n in self.nodes if n.id in keep])

    def validate(self) -> Workflow:
        """Check the workflow; raise one :class:`WorkflowValidationError` listing every problem.

        Returns the workflow itself, so ``Workflow.from_yaml(p).validate()`` chains.
        """
        from dagflow.workflow.validate import validate

        validate(self)
        return self

    # -- YAML ------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "workflow") -> Workflow:
        """Build a workflow from its mapping form (as loaded from YAML)."""
        problems: list[str] = []
        if not isinstance(data, Mapping):
            raise WorkflowValidationError([f"{source}: expected a mapping with 'name' and 'nodes'"])
        unknown = set(data) - {"name", "nodes", "description"}
        if unknown:
            problems.append(f"{source}: unknown top-level keys {sorted(unknown)}; "
                            "expected 'name', 'nodes' and optionally 'description'")
        name = data.get("name")
        if not isinstance(name, str) or not name:
            problems.append(f"{source}: 'name' must be a non-empty string")
            name = "workflow"
        raw_nodes = data.get("nodes")
        if not isinstance(raw_nodes, Sequence) or isinstance(raw_nodes, str) or not raw_nodes:
            problems.append(f"{source}: 'nodes' must be a non-empty list")
            raise WorkflowValidationError(problems, name)
        nodes = []
        unbuilt: set[str] = set()  # declared, but not buildable: reported above
        for i, raw in enumerate(raw_nodes):
            where = f"node #{i + 1}"
            if not isinstance(raw, Mapping):
                problems.append(f"{where}: expected a mapping with 'id' and 'op', got {raw!r}")
                continue
            where = f"node {raw.get('id', '#' + str(i + 1))!r}"
            if isinstance(raw.get("id"), str):
                unbuilt.add(raw["id"])
            extra = set(raw) - _NODE_KEYS
            if extra:
                problems.append(f"{where}: unknown keys {sorted(extra)}; "
                                f"valid keys: {', '.join(sorted(_NODE_KEYS))}")
            if not isinstance(raw.get("id"), str) or not isinstance(raw.get("op"), str):
                problems.append(f"{where}: 'id' and 'op' are required strings")
                continue
            params = raw.get("params") or {}
            if not isinstance(params, Mapping):
                problems.append(f"{where}: 'params' must be a mapping, got {params!r}")
                continue
            after = raw.get("after") or ()
            if isinstance(after, str):
                after = [after]
            if not isinstance(after, Sequence) or not all(isinstance(a, str) for a in after):
                problems.append(f"{where}: 'after' must be a list of node ids, got {after!r}")
                continue
            when = raw.get("when")
            try:
                parse_condition(when)
            except ConditionError as e:
                # the node is still checked (without its condition) with all the others
                problems.append(f"{where}: 'when': {e}")
                when = None
            nodes.append(Node(
                raw["id"], raw["op"], params, after=after, when=when,
                device=raw.get("device", "auto"), retry=raw.get("retry"),
                timeout=raw.get("timeout"), concurrency=raw.get("concurrency"),
            ))
            unbuilt.discard(raw["id"])
        if problems:
            # one report of everything: what the nodes that could be built would give
            from dagflow.workflow.validate import find_problems

            problems.extend(find_problems(cls(name, nodes), unbuilt=unbuilt))
            raise WorkflowValidationError(problems, name)
        return cls(name, nodes)

    @classmethod
    def from_yaml(cls, source: str | Path) -> Workflow:
        """Load a workflow from a YAML file path or a YAML string.

        Raises
        ------
        WorkflowValidationError
            When the text is not valid YAML or not a workflow's shape.
        """
        text, where = source, "workflow"
        if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source
                                        and source.endswith((".yaml", ".yml"))):
            path = Path(source)
            if not path.is_file():
                raise WorkflowValidationError([f"workflow file {str(path)!r} does not exist"])
            text, where = path.read_text(encoding="utf-8"), str(path)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise WorkflowValidationError([f"{where}: not valid YAML: {e}"]) from None
        except RecursionError:  # the YAML parser recurses once per level of nesting
            raise WorkflowValidationError(
                [f"{where}: nested too deeply to be a workflow"]) from None
        return cls.from_dict(data, source=where)

    def to_dict(self) -> dict[str, Any]:
        """The workflow's mapping form; ``Workflow.from_dict(wf.to_dict()) == wf``."""
        return {"name": self.name, "nodes": [n.to_dict() for n in self.nodes]}

    def to_yaml(self) -> str:
        """The workflow as YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # -- display ---------------------------------------------------------------------------

    def __str__(self) -> str:
        lines = [f"Workflow {self.name!r} ({len(self.nodes)} nodes)"]
        for n in self.topological_order() if self._acyclic() else self.nodes:
            params = ", ".join(f"{k}={v!r}" for k, v in n.params.items())
            after = f" <- {', '.join(n.after)}" if n.after else ""
            when = f" when {n.when}" if n.when is not None else ""
            lines.append(f"  {n.id}: {n.op}({params}){after}{when}")
        return "\n".join(lines)

    def _acyclic(self) -> bool:
        try:
            self.topological_order()
        except (WorkflowValidationError, KeyError):
            return False
        return True

    def _repr_html_(self) -> str:
        from dagflow.workflow.render import workflow_svg

        table_rows = "".join(
            f"<tr><td><b>{html.escape(n.id)}</b></td><td>{html.escape(n.op)}</td>"
            f"<td>{html.escape(', '.join(f'{k}={v!r}' for k, v in n.params.items()))}</td>"
            f"<td>{html.escape(', '.join(n.after))}</td>"
            f"<td>{html.escape(str(n.when) if n.when is not None else '')}</td></tr>"
            for n in self.nodes
        )
        return (
            f"<div><b>Workflow {html.escape(self.name)}</b>{workflow_svg(self)}"
            "<table><tr><th>id</th><th>op</th><th>params</th><th>after</th><th>when</th></tr>"
            f"{table_rows}</table></div>"
        )

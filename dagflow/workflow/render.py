"""A picture of a workflow's DAG as inline SVG, with no system graphviz needed.

Nodes are placed in layers by their depth (longest path from a source) and drawn as
boxes naming the node, its op and its condition; edges are straight lines.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dagflow.workflow.workflow import Workflow

__all__ = ["workflow_svg"]

_BOX_W, _BOX_H, _GAP_X, _GAP_Y = 170, 46, 30, 34
# Characters that fit in a box at 12 px (bold label, plain subtitle); longer text is cut
# with an ellipsis, and shown whole in the box's tooltip.
_LABEL_CHARS, _SUB_CHARS = 20, 25


def _fit(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (before escaping: an entity is never split).

    Examples
    --------
    >>> _fit("when width >= 256 and channels >= 3", 25)
    'when width >= 256 and ch…'
    """
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _depths(workflow: Workflow) -> dict[str, int]:
    by_id = {n.id: n for n in workflow.nodes}
    depth: dict[str, int] = {}

    def visit(nid: str, seen: tuple[str, ...] = ()) -> int:
        if nid in depth:
            return depth[nid]
        if nid in seen or nid not in by_id:  # cycles and dangling refs: draw, don't recurse
            return 0
        parents = by_id[nid].after
        depth[nid] = 1 + max((visit(p, (*seen, nid)) for p in parents), default=-1)
        return depth[nid]

    for n in workflow.nodes:
        visit(n.id)
    return depth


def workflow_svg(workflow: Workflow) -> str:
    """The workflow drawn top to bottom as an SVG string.

    Examples
    --------
    >>> from dagflow.workflow import Node, Workflow
    >>> svg = workflow_svg(Workflow("w", [Node("load", "load")]))
    >>> svg.startswith("<svg") and "load" in svg
    True
    """
    depth = _depths(workflow)
    layers: dict[int, list[str]] = {}
    for n in workflow.nodes:
        layers.setdefault(depth.get(n.id, 0), []).append(n.id)
    width = max(len(v) for v in layers.values()) * (_BOX_W + _GAP_X) + _GAP_X
    height = (max(layers) + 1) * (_BOX_H + _GAP_Y) + _GAP_Y
    pos: dict[str, tuple[float, float]] = {}
    for level, ids in layers.items():
        row_w = len(ids) * (_BOX_W + _GAP_X) - _GAP_X
        x0 = (width - row_w) / 2
        for i, nid in enumerate(ids):
            pos[nid] = (x0 + i * (_BOX_W + _GAP_X), _GAP_Y / 2 + level * (_BOX_H + _GAP_Y))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}"'
             ' font-family="sans-serif" font-size="12">']
    for n in workflow.nodes:
        for parent in n.after:
            if parent in pos:
                (x1, y1), (x2, y2) = pos[parent], pos[n.id]
                parts.append(f'<line x1="{x1 + _BOX_W / 2:.0f}" y1="{y1 + _BOX_H:.0f}" '
                             f'x2="{x2 + _BOX_W / 2:.0f}" y2="{y2:.0f}" stroke="#888"/>')
    for n in workflow.nodes:
        x, y = pos[n.id]
        fill = "#fff4d6" if n.when is not None else "#e8f0fe"
        full_label = f"{n.id}: {n.op}"
        full_sub = (f"when {n.when}" if n.when is not None else
                    ", ".join(f"{k}={v}" for k, v in n.params.items()))
        label, sub = _fit(full_label, _LABEL_CHARS), _fit(full_sub, _SUB_CHARS)
        parts.append(
            f'<g><title>{html.escape(full_label)}\n{html.escape(full_sub)}</title>'
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{_BOX_W}" height="{_BOX_H}" rx="6" '
            f'fill="{fill}" stroke="#456"/>'
            f'<text x="{x + 8:.0f}" y="{y + 18:.0f}" font-weight="bold">{html.escape(label)}'
            f'</text><text x="{x + 8:.0f}" y="{y + 35:.0f}" fill="#555">{html.escape(sub)}'
            "</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)

"""The small workflow many tests run: load, a 32-px thumbnail, PNG."""

from __future__ import annotations

from typing import Any

import dagflow
from dagflow import Node, Workflow

THUMBS = Workflow("thumbs", [
    Node("load", "load"),
    Node("small", "resize", {"long_side": 32}, after="load"),
    Node("save", "save", {"format": "png"}, after="small"),
])


def run(wf: Workflow, inputs: Any, out: Any, client: Any, **kw: Any) -> Any:
    """``dagflow.run`` on ``client``, without a progress bar."""
    return dagflow.run(wf, inputs, out, client=client, progress=False, **kw)

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

#: :data:`THUMBS` as a workflow file, for the command line.
THUMBS_YAML = """\
name: thumbs
nodes:
  - {id: load, op: load}
  - {id: small, op: resize, after: [load], params: {long_side: 32}}
  - {id: save, op: save, after: [small], params: {format: png}}
"""


def run(wf: Workflow, inputs: Any, out: Any, client: Any, **kw: Any) -> Any:
    """``dagflow.run`` on ``client``, without a progress bar."""
    return dagflow.run(wf, inputs, out, client=client, progress=False, **kw)

"""The :class:`Node`: one step of a workflow, as a frozen value.

A node says *what* to compute (``op`` and ``params``), *after what* (``after``), *for
which items* (``when``) and *how* to run it (``device``, ``retry``, ``timeout``,
``concurrency``). It knows nothing of Dask or of the items it will see.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dagflow.workflow.conditions import Condition, parse_condition

__all__ = ["DEVICES", "Node"]

DEVICES = ("auto", "cpu", "gpu")


@dataclass(frozen=True)
class Node:
    """One node of a workflow.

    Parameters
    ----------
    id
        Unique name in the workflow; also the name of its tasks in the Dask dashboard.
    op
        The registered op to run (see ``dagflow ops``).
    params
        The op's parameters.
    after
        Ids of the nodes whose output this node takes (one, or two for ``composite``).
    when
        A condition on the item's fields (expression string or predicate); items for
        which it is false skip this node and everything after it.
    device
        ``"auto"``, ``"cpu"`` or ``"gpu"``.
    retry
        Retry policy overrides for this node (``attempts``, ``delay``, ``multiplier``,
        ``max-delay``, ``jitter``); ``None`` uses the configured defaults.
    timeout
        Per-item timeout in seconds; ``None`` uses the configured default.
    concurrency
        At most this many of the node's tasks at once per worker; ``None`` for no cap.

    Examples
    --------
    >>> Node("small", "resize", {"long_side": 512}, after=["load"])
    Node(id='small', op='resize', params={'long_side': 512}, after=('load',))
    """

    id: str
    op: str
    params: Mapping[str, Any] = field(default_factory=dict)
    after: tuple[str, ...] = ()
    when: Condition | None = None
    device: str = "auto"
    retry: Mapping[str, Any] | None = None
    timeout: float | None = None
    concurrency: int | None = None

    def __init__(
        self,
        id: str,
        op: str,
        params: Mapping[str, Any] | None = None,
        *,
        after: Iterable[str] | str = (),
        when: str | Callable[..., bool] | Condition | None = None,
        device: str = "auto",
        retry: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        concurrency: int | None = None,
    ) -> None:
        setter = object.__setattr__
        setter(self, "id", id)
        setter(self, "op", op)
        setter(self, "params", dict(params or {}))
        setter(self, "after", (after,) if isinstance(after, str) else tuple(after))
        setter(self, "when", parse_condition(when))
        setter(self, "device", device)
        setter(self, "retry", dict(retry) if retry is not None else None)
        setter(self, "timeout", timeout)
        setter(self, "concurrency", concurrency)

    def __repr__(self) -> str:
        parts = [f"id={self.id!r}", f"op={self.op!r}", f"params={dict(self.params)!r}"]
        if self.after:
            parts.append(f"after={self.after!r}")
        for name in ("when", "retry", "timeout", "concurrency"):
            if getattr(self, name) is not None:
                parts.append(f"{name}={getattr(self, name)!r}")
        if self.device != "auto":
            parts.append(f"device={self.device!r}")
        return f"Node({', '.join(parts)})"

    def __hash__(self) -> int:
        return hash((self.id, self.op, self.after))

    def to_dict(self) -> dict[str, Any]:
        """The node in its YAML form (only the fields that differ from the defaults)."""
        out: dict[str, Any] = {"id": self.id, "op": self.op}
        if self.after:
            out["after"] = list(self.after)
        if self.params:
            out["params"] = dict(self.params)
        if self.when is not None:
            if self.when.expression is None:
                raise ValueError(f"node {self.id!r} has a Python predicate; it has no YAML form")
            out["when"] = self.when.expression
        if self.device != "auto":
            out["device"] = self.device
        for name in ("retry", "timeout", "concurrency"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

"""OpenTelemetry spans per chunk and node, when ``opentelemetry`` is installed.

After a chunk's records are committed, :func:`emit_spans` sends one ``dagflow.chunk``
span covering the chunk and, inside it, one ``dagflow.node`` span per node, with the
times the records measured (so nothing is timed twice). Spans go to whatever tracer
provider the worker process configured (``opentelemetry-sdk`` with an exporter, for
example through ``opentelemetry-instrument`` or a worker preload); without one the API
is a no-op. Install with ``pip install 'dagflow[otel]'``; switch off with
``dagflow.monitor.opentelemetry: false``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["available", "emit_spans"]


@functools.cache
def available() -> bool:
    """Whether the OpenTelemetry API can be imported."""
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return False
    return True


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def emit_spans(ctx: Any, metrics: Sequence[Mapping[str, Any]], *, tracer: Any = None) -> int:
    """Emit the chunk's spans; returns how many were sent (0 without OpenTelemetry).

    ``tracer`` defaults to ``opentelemetry.trace.get_tracer("dagflow")`` (the process's
    tracer provider).
    """
    if not metrics or not available():
        return 0
    from opentelemetry import trace

    if tracer is None:
        tracer = trace.get_tracer("dagflow")
    by_node: dict[str, list[Mapping[str, Any]]] = {}
    for m in metrics:
        by_node.setdefault(m["node_id"], []).append(m)
    timed = [m for m in metrics if m.get("started")]
    start = min((m["started"] for m in timed), default=0.0)
    end = max((m["started"] + m["duration_s"] for m in timed), default=start)
    items = sorted({m["item_id"] for m in metrics})
    chunk = tracer.start_span(
        "dagflow.chunk", start_time=_ns(start),
        attributes={"dagflow.run_id": str(getattr(ctx, "run_id", "")),
                    "dagflow.workflow": str(getattr(ctx, "workflow", "")),
                    "dagflow.items": len(items), "dagflow.first_item": int(items[0])})
    parent = trace.set_span_in_context(chunk)
    sent = 1
    for node, rows in by_node.items():
        ran = [r for r in rows if r.get("started")]
        if not ran:
            continue
        n_start = min(r["started"] for r in ran)
        n_end = max(r["started"] + r["duration_s"] for r in ran)
        failed = sum(r["status"] == "failed" for r in rows)
        span = tracer.start_span(
            "dagflow.node", context=parent, start_time=_ns(n_start),
            attributes={"dagflow.node": node, "dagflow.op": str(rows[0].get("op")),
                        "dagflow.items": len(rows), "dagflow.failed": failed,
                        "dagflow.seconds": float(sum(r["duration_s"] for r in rows))})
        if failed:
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{failed} items failed"))
        span.end(end_time=_ns(n_end))
        sent += 1
    chunk.end(end_time=_ns(end))
    return sent

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


def _configured() -> bool:
    """Whether the process has a tracer provider of its own (else every span is a no-op)."""
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    return type(provider).__name__ not in ("ProxyTracerProvider", "NoOpTracerProvider")


def emit_spans(ctx: Any, metrics: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
               *, tracer: Any = None) -> int:
    """Emit the chunk's spans; returns how many were sent (0 without OpenTelemetry).

    ``metrics`` are the chunk's metric rows or columns
    (:func:`dagflow.monitor.hooks.metric_columns`). ``tracer`` defaults to
    ``opentelemetry.trace.get_tracer("dagflow")`` (the process's tracer provider); when
    the process configured none, nothing is built.
    """
    if not metrics or not available():
        return 0
    from opentelemetry import trace

    if tracer is None:
        if not _configured():
            return 0
        tracer = trace.get_tracer("dagflow")
    from dagflow.monitor.hooks import _columns

    names = ("node_id", "op", "status", "item_id", "started", "duration_s")
    rows = [dict(zip(names, v, strict=True))
            for v in zip(*_columns(metrics, *names), strict=True)]
    if not rows:
        return 0
    by_node: dict[str, list[Mapping[str, Any]]] = {}
    for m in rows:
        by_node.setdefault(m["node_id"], []).append(m)
    timed = [m for m in rows if m.get("started")]
    start = min((m["started"] for m in timed), default=0.0)
    end = max((m["started"] + m["duration_s"] for m in timed), default=start)
    items = sorted({m["item_id"] for m in rows})
    chunk = tracer.start_span(
        "dagflow.chunk", start_time=_ns(start),
        attributes={"dagflow.run_id": str(getattr(ctx, "run_id", "")),
                    "dagflow.workflow": str(getattr(ctx, "workflow", "")),
                    "dagflow.items": len(items), "dagflow.first_item": int(items[0])})
    parent = trace.set_span_in_context(chunk)
    sent = 1
    for node, node_rows in by_node.items():
        ran = [r for r in node_rows if r.get("started")]
        if not ran:
            continue
        n_start = min(r["started"] for r in ran)
        n_end = max(r["started"] + r["duration_s"] for r in ran)
        failed = sum(r["status"] == "failed" for r in node_rows)
        span = tracer.start_span(
            "dagflow.node", context=parent, start_time=_ns(n_start),
            attributes={"dagflow.node": node, "dagflow.op": str(node_rows[0].get("op")),
                        "dagflow.items": len(node_rows), "dagflow.failed": failed,
                        "dagflow.seconds": float(sum(r["duration_s"] for r in node_rows))})
        if failed:
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{failed} items failed"))
        span.end(end_time=_ns(n_end))
        sent += 1
    chunk.end(end_time=_ns(end))
    return sent

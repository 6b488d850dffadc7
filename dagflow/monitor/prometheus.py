"""``dagflow_*`` metrics on the scheduler's existing ``/metrics`` endpoint.

Dask's ``/metrics`` handler writes ``prometheus_client``'s global registry; one
:class:`DagflowCollector` is registered there (once per process) and reads the latest
installed :class:`~dagflow.monitor.plugin.DagflowMonitor` when scraped:

=================================== =========== =============================================
``dagflow_items_total``             counter     items by ``node`` and ``status``
``dagflow_item_duration_seconds``   histogram   item durations by ``node``
``dagflow_item_retries_total``      counter     retried attempts inside tasks, by ``node``
``dagflow_task_retries_total``      counter     whole-task retries by Dask, by ``node``
``dagflow_errors_total``            counter     failed items by ``node`` and ``error_class``
``dagflow_breaker_state``           gauge       1 for each ``node``'s current ``state``
``dagflow_tasks``                   gauge       dagflow tasks by ``node`` and ``state`` now
``dagflow_chunks_in_flight``        gauge       chunks being processed
``dagflow_bytes_read_total``        counter     input bytes by ``node``
``dagflow_bytes_written_total``     counter     output bytes by ``node``
``dagflow_megapixels_total``        counter     megapixels processed by ``node``
=================================== =========== =============================================

Counters are cumulative over every run the scheduler has seen. Nothing happens when
``prometheus_client`` is not installed (Dask then serves no metrics either).
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from dagflow.monitor.plugin import DURATION_BUCKETS, TASK_STATES, DagflowMonitor

__all__ = ["DagflowCollector", "register"]

logger = logging.getLogger(__name__)

BREAKER_STATES = ("closed", "half-open", "open")

_lock = threading.Lock()
_collector: DagflowCollector | None = None


class DagflowCollector:
    """A ``prometheus_client`` collector reading a :class:`DagflowMonitor`."""

    def __init__(self, plugin: DagflowMonitor | None = None) -> None:
        self._plugin: weakref.ref[DagflowMonitor] | None = None
        if plugin is not None:
            self.attach(plugin)

    def attach(self, plugin: DagflowMonitor) -> None:
        self._plugin = weakref.ref(plugin)

    @property
    def plugin(self) -> DagflowMonitor | None:
        return self._plugin() if self._plugin is not None else None

    def describe(self) -> list[Any]:
        return []  # names are dynamic; do not collect at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        plugin = self.plugin
        if plugin is None:
            return
        totals = dict(plugin.totals)
        items = CounterMetricFamily("dagflow_items", "Items processed, by node and status",
                                    labels=["node", "status"])
        hist = HistogramMetricFamily("dagflow_item_duration_seconds",
                                     "Item duration per node (seconds)", labels=["node"])
        item_retries = CounterMetricFamily("dagflow_item_retries",
                                           "Retried attempts of items inside tasks",
                                           labels=["node"])
        task_retries = CounterMetricFamily("dagflow_task_retries",
                                           "Whole-task retries by Dask", labels=["node"])
        errors = CounterMetricFamily("dagflow_errors", "Failed items by error class",
                                     labels=["node", "error_class"])
        bytes_read = CounterMetricFamily("dagflow_bytes_read", "Input bytes read",
                                         labels=["node"])
        bytes_written = CounterMetricFamily("dagflow_bytes_written", "Output bytes written",
                                            labels=["node"])
        megapixels = CounterMetricFamily("dagflow_megapixels", "Megapixels processed",
                                         labels=["node"])
        for name, s in totals.items():
            for status, n in s.counts.items():
                items.add_metric([name, status], n)
            cumulative = s.histogram()
            buckets = [("+Inf" if math.isinf(le) else repr(float(le)), float(c))
                       for le, c in zip(DURATION_BUCKETS, cumulative, strict=True)]
            hist.add_metric([name], buckets, sum_value=s.sum)
            item_retries.add_metric([name], s.item_retries)
            task_retries.add_metric([name], s.task_retries)
            for cls, n in s.errors.items():
                errors.add_metric([name, cls], n)
            bytes_read.add_metric([name], s.bytes_in)
            bytes_written.add_metric([name], s.bytes_out)
            megapixels.add_metric([name], s.megapixels)
        yield from (items, hist, item_retries, task_retries, errors, bytes_read,
                    bytes_written, megapixels)

        breaker = GaugeMetricFamily("dagflow_breaker_state",
                                    "Circuit breaker state per node (1 for the current one)",
                                    labels=["node", "state"])
        for name, state in dict(plugin.breakers).items():
            for st in BREAKER_STATES:
                breaker.add_metric([name, st], 1.0 if st == state else 0.0)
        yield breaker

        tasks = GaugeMetricFamily("dagflow_tasks", "dagflow tasks by node and state, now",
                                  labels=["node", "state"])
        try:
            depth = plugin.queue_depth()
        except Exception:  # never break the scrape
            depth = {"by_node": {}}
        for name, states in depth["by_node"].items():
            for st in TASK_STATES:
                tasks.add_metric([name, st], states.get(st, 0))
        yield tasks
        yield GaugeMetricFamily("dagflow_chunks_in_flight", "Chunks being processed",
                                value=len(plugin.chunks))


def register(plugin: DagflowMonitor) -> bool:
    """Export ``plugin``'s figures on ``/metrics``; ``False`` without prometheus_client."""
    global _collector
    try:
        import prometheus_client
    except ImportError:
        return False
    with _lock:
        if _collector is None:
            _collector = DagflowCollector()
            prometheus_client.REGISTRY.register(_collector)
        _collector.attach(plugin)
    return True

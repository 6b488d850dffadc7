"""Performance monitoring: collection, the live dashboard page, Prometheus, the run report.

=====================  ==============================================================
``hooks``              what the runtime and the tasks call (kept import-light)
``plugin``             the scheduler plugin that collects (no Bokeh)
``sampling``           CPU / memory / GPU samples
``store``              the metrics files of a run directory
``metrics``            pure aggregation: percentiles, anomalies, critical path, advice
``analysis``           a run directory read into a :class:`RunAnalysis`
``history``            per-node history of finished runs, for planning
``prometheus``         ``dagflow_*`` metrics on the scheduler's ``/metrics``
``http``               JSON routes under ``/dagflow/api/``
``dashboard``          the ``/individual-dagflow`` page (Bokeh)
``report``             the self-contained HTML report (Bokeh)
``preload``            ``dask scheduler --preload dagflow.monitor.preload``
``otel``               OpenTelemetry spans, when installed
=====================  ==============================================================

Importing this package imports none of them; the names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DagflowMonitor", "RunAnalysis", "analyze", "write_report"]

_LAZY = {
    "DagflowMonitor": "dagflow.monitor.plugin",
    "RunAnalysis": "dagflow.monitor.analysis",
    "analyze": "dagflow.monitor.analysis",
    "write_report": "dagflow.monitor.report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Scheduler preload: dagflow's monitoring on any Dask cluster.

::

    dask scheduler --preload dagflow.monitor.preload

or, in a Dask configuration file (cluster configs, Helm values, dask-gateway)::

    distributed:
      scheduler:
        preload: [dagflow.monitor.preload]

Importing this module (which Dask does while the scheduler is constructed, before its
dashboard starts) registers the ``/individual-dagflow`` page, so the dashboard lists it
among its pages. :func:`dask_setup` then installs the
:class:`~dagflow.monitor.plugin.DagflowMonitor` plugin, the JSON routes under
``/dagflow/api/`` and the ``dagflow_*`` Prometheus metrics. :func:`install` does the
same on a running scheduler (``dagflow.run`` calls it through ``run_on_scheduler``, so
the embedded cluster needs no preload); everything is idempotent.
"""

from __future__ import annotations

import logging
from typing import Any

from dagflow.monitor.plugin import DagflowMonitor, ensure_plugin

__all__ = ["bokeh_prefix", "dask_setup", "install"]

logger = logging.getLogger(__name__)


def bokeh_prefix(scheduler: Any) -> str | None:
    """The dashboard's URL prefix, or ``None`` if the scheduler has no dashboard."""
    try:
        from dagflow.monitor.dashboard import _bokeh_server
    except ImportError:
        return None
    server = _bokeh_server(scheduler)
    return None if server is None else (server._prefix or "/")


def install(scheduler: Any, *, page: bool = True, routes: bool = True,
            prometheus: bool = True) -> DagflowMonitor:
    """Install the plugin, the JSON routes, the Prometheus metrics and the page."""
    plugin = ensure_plugin(scheduler)
    if prometheus:
        try:
            from dagflow.monitor.prometheus import register

            register(plugin)
        except Exception:
            logger.warning("dagflow Prometheus metrics unavailable", exc_info=True)
    if routes:
        try:
            from dagflow.monitor.http import install_routes

            install_routes(scheduler)
        except Exception:
            logger.warning("dagflow JSON routes unavailable", exc_info=True)
    if page:
        try:
            from dagflow.monitor.dashboard import install_page

            install_page(scheduler)
        except ImportError:
            pass  # no Bokeh: no dashboard at all
        except Exception:
            logger.warning("dagflow dashboard page unavailable", exc_info=True)
    return plugin


def dask_setup(scheduler: Any) -> None:
    """Dask's preload entry point (scheduler only)."""
    if not hasattr(scheduler, "task_groups"):
        logger.warning("dagflow.monitor.preload is a scheduler preload; ignored on %r",
                       type(scheduler).__name__)
        return
    install(scheduler)


def _register_page() -> None:
    try:
        from dagflow.monitor.dashboard import register_page
    except ImportError:
        return
    register_page()


_register_page()

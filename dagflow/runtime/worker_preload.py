"""Worker preload: what a chunk needs, imported once as each worker process starts.

A worker of the embedded cluster would otherwise import dagflow's ops, its I/O, Parquet,
OpenCV and the codecs when it unpickles the run's plugins and its first task: about a
second and a half of CPU per process, spent while the driver waits for it. Imported as
the worker starts (``distributed.worker.preload``, added by
:func:`~dagflow.runtime.cluster.start_local_cluster`), the same work happens while the
driver is still planning (the cluster starts in the background,
:class:`~dagflow.runtime.cluster.LocalClusterStart`). A module that is missing (an
optional codec) is skipped: the task that needs it says so, as without the preload.
"""

from __future__ import annotations

import contextlib
import importlib

__all__ = ["MODULES"]

#: What a worker imports for a run's plugins and chunks, heaviest first.
MODULES = (
    "dagflow.ops",  # numpy, scipy.ndimage, OpenCV, Pillow: every built-in op
    "dagflow.execute",
    "dagflow.compile",
    "dagflow.io.read",
    "dagflow.io.write",
    "dagflow.recovery.checkpoint",  # pyarrow: the records parts
    "dagflow.runtime.capacity",  # the run's plugins
    "dagflow.runtime.worker_gc",
    "dagflow.monitor.sampling",
    "simplejpeg",  # optional codecs the readers and writers pick first
    "imagecodecs",
)

for _name in MODULES:
    with contextlib.suppress(ImportError):
        importlib.import_module(_name)
with contextlib.suppress(ImportError):
    from dagflow._opencv import cv2

    cv2()  # OpenCV, its thread pool sized as the kernels will have it

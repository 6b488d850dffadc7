"""Worker preload: what a chunk needs, imported once as each worker process starts.

A worker of the embedded cluster would otherwise import dagflow's ops, its I/O, Parquet,
pandas, OpenCV and the codecs when the run's plugins and its first chunk reach it: about
a second and a half of CPU per process, spent while the driver waits for it. Imported as
the worker starts (``distributed.worker.preload``, added by
:func:`~dagflow.runtime.cluster.start_local_cluster` unless
``dagflow.cluster.worker-preload`` is false), the same work happens while the driver is
still planning (the cluster starts in the background,
:class:`~dagflow.runtime.cluster.LocalClusterStart`). The startup objects are then
frozen out of full collections (:mod:`dagflow.runtime.worker_gc`) here rather than when
the run's plugin arrives. A module that is missing (an optional codec) is skipped: the
task that needs it says so, as without the preload.
"""

from __future__ import annotations

import contextlib
import importlib

from dagflow import config
from dagflow.runtime import worker_gc

__all__ = ["MODULES"]

#: What a worker imports for a run's plugins and chunks (with worker_gc's list).
MODULES = (
    "dagflow.ops",  # numpy, scipy.ndimage, Pillow: every built-in op
    "dagflow.execute",
    "dagflow.compile",
    "dagflow.io.read",
    "dagflow.io.write",
    "dagflow.recovery.checkpoint",  # pyarrow: the records parts
    "dagflow.runtime.capacity",  # the run's plugins
    "simplejpeg",  # optional codecs the readers and writers pick first
    "imagecodecs",
)

for _name in MODULES:
    with contextlib.suppress(ImportError):
        importlib.import_module(_name)
with contextlib.suppress(ImportError):
    from dagflow._opencv import cv2

    cv2()  # OpenCV, its thread pool sized as the kernels will have it
if config.get("runtime.worker-gc-freeze"):
    worker_gc.freeze_startup_objects()  # imports the rest of what tasks use

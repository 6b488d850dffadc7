"""OpenCV, imported once for the kernels and codecs that use it.

:func:`cv2` imports ``cv2`` on first use (so that importing dagflow does not) and sizes
OpenCV's own thread pool the way Dask sizes every other native thread pool of a worker:
a Dask worker's nanny sets ``OMP_NUM_THREADS=1`` (``distributed.nanny.pre-spawn-environ``)
so that its task threads are the only parallelism, and OpenCV's pthreads pool does not
read that variable. Where it is set, OpenCV gets that many threads; elsewhere (a notebook)
OpenCV keeps its default. The kernels dagflow uses are bit-exact whatever the thread count:
this is about not oversubscribing the cores, never about results.

This module owns that import only.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

__all__ = ["cv2"]


@lru_cache(maxsize=1)
def cv2() -> Any:
    """The ``cv2`` module, its thread pool following ``OMP_NUM_THREADS`` when set."""
    import cv2 as _cv2

    threads = os.environ.get("OMP_NUM_THREADS", "").strip()
    if threads.isdigit() and int(threads) >= 1:
        _cv2.setNumThreads(int(threads))
    return _cv2

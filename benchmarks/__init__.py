"""dagflow's benchmarks: dagflow against the pipelines people write instead, side by side.

Run ``python -m benchmarks --help`` (or ``make bench``). Every benchmark measures
dagflow and its baselines in the same process run, repeats each measurement and reports
medians and ratios, because a shared machine is noisy. Data is generated
deterministically into ``benchmarks/.data/`` and reused; results are printed as tables
and written to ``benchmarks/results/<benchmark>-<time>.json`` (kept: the history), from
which ``python -m benchmarks.readme`` writes ``benchmarks/README.md``.

=================  =====================================================================
``thumbnails``     the thumbnail workload: dagflow vs OpenCV, Pillow, simplejpeg and
                   pyvips pools, and the per-core decode limit
``cold``           ``dagflow run`` as a fresh process against a fresh Pillow-draft pool
                   script; dagflow's fixed cost; ``dagflow --help``
``s3``             the thumbnail workload from and to a local S3 server (moto, its own
                   process) against local files; requests and bytes per image
``microscopy``     16-bit TIFF -> normalize -> Gaussian -> 8-bit PNG: dagflow vs a
                   tifffile + OpenCV/scipy pool
``overhead``       a no-op workflow over many items: dagflow's cost per item
``planning``       planning and compiling a million-item manifest: time, client memory
``safety``         throughput with checkpoints and monitoring on and off
``memory``         peak worker RSS against the configured budget
``large-image``    memory on big images (needs ``benchmarks/large_image.py``)
``gpu``            ``local-cuda`` against the CPU (needs a CUDA GPU)
``env``            the worker allocator environment (``MALLOC_*``) on the kernels
=================  =====================================================================

This package is not part of the installed library and imports nothing from it at
import time.
"""

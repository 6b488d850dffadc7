"""CPU/GPU dispatch: on which device an op runs for a node, and the fall back to the CPU.

An op runs on a GPU when its declaration says its function accepts cupy arrays
(``"cupy" in OpSpec.backends``): the built-in ops whose array functions have cupy
implementations (:mod:`dagflow.ops.backends`, :mod:`dagflow.ops.gpu`), or a user's op
written for both. The GPU path copies the item's image to the device, runs the op's own
function on it -- its array functions choose the cupy implementations by the array's
type -- and copies the result back (:func:`dagflow.ops.gpu.run_on_device`). Nothing here
knows an op by its name, and nothing imports cupy before a GPU node runs: a machine
without cupy never imports it.

:func:`call` runs one op for one item on the device its node asked for:

================  ==================================  ================================
device            usable GPU, op runs on cupy         otherwise
================  ==================================  ================================
``cpu``           CPU                                 CPU
``auto``          GPU                                 CPU (not degraded)
``gpu``           GPU                                 CPU, recorded ``cpu-fallback``
``cpu-fallback``  CPU, recorded ``cpu-fallback``      CPU, recorded ``cpu-fallback``
================  ==================================  ================================

``cpu-fallback`` is what planning decides for a ``gpu`` node on a cluster without GPU
workers, or for an op without a GPU implementation (:func:`resolve_device`), so that
``dagflow plan`` shows the device its items will use.

A GPU is *usable* (:func:`gpu_problem`) once cupy imports, sees a device and runs what
the implementations rely on, on a tiny image (:func:`dagflow.ops.gpu.check_device`): an
installed cupy that sees a device can still lack the CUDA libraries its kernels load
(NVRTC, cuSPARSE). The GPU implementation falls back to the CPU for an item, recorded
``cpu-fallback`` and ``degraded`` (its status stays ``ok``), when

* the item would not fit the device's memory (:func:`dagflow.resources.device_bytes`
  against the device's total less ``dagflow.resources.memory-margin``);
* it fails with CUDA out-of-memory (cupy's memory pool is freed first);
* it fails because the GPU stack cannot run here (:func:`is_gpu_unusable`: a CUDA
  library that does not load, a driver or runtime error, a kernel that does not
  compile): the process then stops trying its GPU, and later items run on the CPU.

Any other error is the item's error as usual.

This module imports neither cupy nor the workflow, compile or runtime layers.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import MutableMapping
from typing import Any

from dagflow.ops.registry import OpSpec

__all__ = [
    "GPU_LIBRARY",
    "call",
    "gpu_available",
    "gpu_problem",
    "is_cuda_oom",
    "is_gpu_unusable",
    "resolve_device",
    "runs_on_gpu",
]

logger = logging.getLogger(__name__)

#: The array library of the GPU implementations.
GPU_LIBRARY = "cupy"


def runs_on_gpu(spec: OpSpec) -> bool:
    """Whether ``spec``'s function accepts the pixels on the GPU (its declaration's
    ``backends`` name cupy).

    Examples
    --------
    >>> from dagflow.ops.registry import get_op
    >>> runs_on_gpu(get_op("gaussian")), runs_on_gpu(get_op("flip"))
    (True, False)
    """
    return GPU_LIBRARY in spec.backends


@functools.cache
def gpu_problem() -> str | None:
    """Why this process cannot run the GPU implementations; ``None`` when it can.

    Checked once per process (imports cupy only if it is installed): cupy imports, sees
    a CUDA device, and runs :func:`dagflow.ops.gpu.check_device` (compiled kernels, an
    ndimage filter, a sparse product, compared with the CPU on a tiny image).
    """
    if importlib.util.find_spec("cupy") is None:
        return "cupy is not installed"
    try:
        from dagflow.ops import gpu

        gpu.check_device()
    except Exception as exc:  # no driver, no device, a CUDA library that does not load
        problem = f"{type(exc).__name__}: {exc}"
        logger.info("cupy is installed but the GPU is not usable: %s", problem)
        return problem
    return None


def gpu_available() -> bool:
    """Whether this process can run the GPU implementations (see :func:`gpu_problem`)."""
    return _gpu_lost is None and gpu_problem() is None


#: Why this process stopped using its GPU after a GPU implementation failed (see
#: :func:`is_gpu_unusable`); ``None`` while it has not.
_gpu_lost: str | None = None


def _lose_gpu(why: str) -> None:
    global _gpu_lost
    if _gpu_lost is None:
        logger.warning("the GPU is not usable in this process (%s): its GPU nodes run on "
                       "the CPU from now on, recorded cpu-fallback", why)
        _gpu_lost = why


@functools.cache
def _device_budget() -> int:
    """Bytes of device memory an item may plan with: the device's total less the margin
    (0: unknown)."""
    from dagflow.resources import worker_budget

    try:
        from dagflow.ops import gpu

        return worker_budget(gpu.device_memory())
    except Exception:  # the GPU implementation then says what is wrong
        logger.debug("the device's memory is unknown", exc_info=True)
        return 0


def _device_need(spec: OpSpec, args: tuple[Any, ...], params: dict[str, Any]) -> int:
    """The device memory ``spec``'s GPU implementation needs for its image (0: unknown)."""
    from dagflow.resources import device_bytes

    data = getattr(args[0], "data", None) if args else None
    shape = getattr(data, "shape", None)
    if shape is None or len(shape) != 3:
        return 0
    header = {"width": int(shape[1]), "height": int(shape[0]), "channels": int(shape[2]),
              "itemsize": int(data.dtype.itemsize), "dtype": str(data.dtype)}
    try:
        return device_bytes(header, spec.output_header(header, params))
    except Exception:  # parameters the output rule cannot read: the op will say so
        return 0


def is_cuda_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is a GPU out-of-memory error (cupy, RMM or a CUDA runtime error)."""
    name = type(exc).__name__
    module = type(exc).__module__ or ""
    if name == "OutOfMemoryError" and module.startswith(("cupy", "cupy_backends")):
        return True
    text = str(exc).lower()
    if isinstance(exc, MemoryError) and ("bad_alloc" in text or "cuda" in text
                                         or "rmm" in text):
        return True
    if module.startswith(("cupy", "cupy_backends")) and "out of memory" in text:
        return True
    return "cudaerrormemoryallocation" in text


#: Exception types of cupy and CUDA that say the GPU stack cannot run here.
_GPU_STACK_ERRORS = frozenset({
    "CUDARuntimeError", "CUDADriverError", "NVRTCError", "CompileException", "CUSPARSEError",
    "CUBLASError", "CUFFTError", "CURANDError", "CUSOLVERError", "CUDAError",
})
#: What the message of an OSError or RuntimeError says when a CUDA library is missing.
_MISSING_LIBRARY = ("cannot open shared object", "cupy failed to load", "failed to load lib",
                    "could not find module")


def is_gpu_unusable(exc: BaseException) -> bool:
    """Whether ``exc`` says the GPU stack cannot run here, rather than that the item or
    the op is at fault: an import that fails, a CUDA library that does not load, a
    driver, runtime or library error, a kernel that does not compile.

    Examples
    --------
    >>> is_gpu_unusable(OSError("libnvrtc.so.12: cannot open shared object file"))
    True
    >>> is_gpu_unusable(ModuleNotFoundError("No module named 'cupy_backends'"))
    True
    >>> is_gpu_unusable(ValueError("sigma must be positive"))
    False
    """
    if isinstance(exc, ImportError):
        return True
    module = type(exc).__module__ or ""
    if (module.startswith(("cupy", "cupyx", "cupy_backends", "cuda"))
            and type(exc).__name__ in _GPU_STACK_ERRORS):
        return True
    text = str(exc).lower()
    return isinstance(exc, OSError | RuntimeError) and any(m in text for m in _MISSING_LIBRARY)


def _free_gpu_memory() -> None:
    try:
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
    except Exception:  # nothing to free, or cupy itself is in trouble
        logger.debug("could not free cupy's memory pool", exc_info=True)


def resolve_device(requested: str, spec: OpSpec, *, cluster_has_gpu: bool) -> str:
    """The device a node runs on, decided on the client: ``cpu``, ``gpu`` or
    ``cpu-fallback``.

    ``auto`` becomes ``gpu`` only when the cluster has GPU workers and the op a GPU
    implementation, else ``cpu``; ``gpu`` stays ``gpu`` there, and becomes
    ``cpu-fallback`` elsewhere (its items run on the CPU, recorded degraded).

    Examples
    --------
    >>> from dagflow.ops.registry import get_op
    >>> resolve_device("auto", get_op("gaussian"), cluster_has_gpu=True)
    'gpu'
    >>> resolve_device("auto", get_op("save"), cluster_has_gpu=True)
    'cpu'
    >>> resolve_device("auto", get_op("gaussian"), cluster_has_gpu=False)
    'cpu'
    >>> resolve_device("gpu", get_op("gaussian"), cluster_has_gpu=False)
    'cpu-fallback'
    >>> resolve_device("gpu", get_op("flip"), cluster_has_gpu=True)
    'cpu-fallback'
    """
    usable = cluster_has_gpu and runs_on_gpu(spec)
    if requested == "gpu":
        return "gpu" if usable else "cpu-fallback"
    if requested == "auto" and usable:
        return "gpu"
    return "cpu"


def call(spec: OpSpec, device: str, args: tuple[Any, ...], params: dict[str, Any],
         used: MutableMapping[str, Any] | None = None) -> Any:
    """Run ``spec`` on ``args`` on ``device`` (see the module docstring).

    Parameters
    ----------
    spec
        The op.
    device
        ``cpu``, ``gpu``, ``auto`` or ``cpu-fallback`` (the node's, as resolved by the
        runtime).
    args, params
        The op's positional arguments and parameters.
    used
        Filled with ``device`` (``cpu``, ``gpu`` or ``cpu-fallback``), ``degraded`` and,
        for a fall back, ``fallback`` (why).

    Returns
    -------
    Any
        What the implementation returned.
    """
    used = used if used is not None else {}
    on_gpu_too = runs_on_gpu(spec)

    def on_cpu(why: str | None) -> Any:
        if why is None:
            used.update(device="cpu", degraded=False)
        else:
            used.update(device="cpu-fallback", degraded=True, fallback=why)
        return spec.func(*args, **params)

    if device == "cpu-fallback":
        return on_cpu("no GPU worker in the cluster" if on_gpu_too
                      else "no GPU implementation")
    want_gpu = device == "gpu" or (device == "auto" and on_gpu_too and gpu_available())
    if not want_gpu:
        return on_cpu(None)
    if not on_gpu_too:
        return on_cpu("no GPU implementation")
    if not gpu_available():
        problem = _gpu_lost or gpu_problem()
        return on_cpu("no usable GPU in this worker" + (f" ({problem})" if problem else ""))
    need = _device_need(spec, args, params)
    if need and _device_budget() and need > _device_budget():
        from dagflow.resources import format_bytes

        return on_cpu(f"needs {format_bytes(need)} of GPU memory, the device has "
                      f"{format_bytes(_device_budget())} to plan with")
    try:
        value = _run_on_gpu(spec, args, params)
    except Exception as exc:
        if is_cuda_oom(exc):
            _free_gpu_memory()
            logger.warning("%s ran out of GPU memory (%s); running it on the CPU",
                           spec.name, exc)
            return on_cpu(f"GPU out of memory: {type(exc).__name__}")
        if is_gpu_unusable(exc):
            why = f"{type(exc).__name__}: {exc}"
            _lose_gpu(why)
            return on_cpu(f"GPU not usable: {why}")
        raise
    used.update(device="gpu", degraded=False)
    return value


def _run_on_gpu(spec: OpSpec, args: tuple[Any, ...], params: dict[str, Any]) -> Any:
    """The op's own function on the device (its array functions pick cupy's)."""
    from dagflow.ops import gpu

    return gpu.run_on_device(spec.func, args, params)

"""CPU/GPU dispatch: which implementation of an op runs, and the fall back to the CPU.

Every op has a CPU implementation (``OpSpec.func``). Some also have a GPU one
(``OpSpec.gpu_func``), written with cupy and ``cupyx.scipy.ndimage`` in
:mod:`dagflow.ops.gpu`. That module imports cupy at its top, so it is never imported
here: the built-in GPU implementations are registered as :class:`LazyGpuFunc` stand-ins
(the ``register_lazy("cupy")`` pattern of dask-image's dispatchers), which import it on
first call, on a worker that runs a GPU node. A machine without cupy never imports it;
``OpSpec.gpu_func is not None`` still tells the planner and the report that an op can
run on a GPU.

:func:`call` runs one op for one item on the device its node asked for:

==========  ==========================================  ===============================
device      GPU present, op has a GPU implementation    otherwise
==========  ==========================================  ===============================
``cpu``     CPU                                         CPU
``auto``    GPU                                         CPU (not degraded)
``gpu``     GPU                                         CPU, recorded ``cpu-fallback``
==========  ==========================================  ===============================

A GPU implementation that fails with CUDA out-of-memory on an item frees cupy's memory
pool and runs the CPU implementation for that item, recorded ``cpu-fallback`` and
``degraded`` (its status stays ``ok``). Any other error is the item's error as usual.

This module imports neither cupy nor the workflow, compile or runtime layers.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable, MutableMapping
from typing import Any

from dagflow.ops.registry import OpSpec, set_gpu_func

__all__ = [
    "GPU_OPS",
    "Dispatcher",
    "LazyGpuFunc",
    "call",
    "gpu_available",
    "gpu_dispatch",
    "is_cuda_oom",
    "resolve_device",
]

logger = logging.getLogger(__name__)

#: Built-in ops with a cupy implementation in :mod:`dagflow.ops.gpu`.
GPU_OPS = ("resize", "gaussian", "median", "unsharp", "normalize", "convert")


class Dispatcher:
    """Implementations by key, with modules registered lazily (imported on first lookup).

    Examples
    --------
    >>> d = Dispatcher("demo")
    >>> @d.register_lazy("json")
    ... def _load():
    ...     d.register("dumps", lambda v: "lazy " + repr(v))
    >>> d("dumps")(1)
    'lazy 1'
    >>> d("missing") is None
    True
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._impls: dict[str, Callable[..., Any]] = {}
        self._lazy: dict[str, Callable[[], None]] = {}

    def register(self, key: str, func: Callable[..., Any]) -> Callable[..., Any]:
        self._impls[key] = func
        return func

    def register_lazy(self, module: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
        """Register ``loader`` to run the first time a key is missing and ``module`` is
        installed; the loader imports it and registers its implementations."""

        def decorator(loader: Callable[[], None]) -> Callable[[], None]:
            self._lazy[module] = loader
            return loader

        return decorator

    def __call__(self, key: str) -> Callable[..., Any] | None:
        if key not in self._impls:
            for module in list(self._lazy):
                if importlib.util.find_spec(module) is None:
                    continue
                self._lazy.pop(module)()
        return self._impls.get(key)


#: GPU implementations by op name.
gpu_dispatch = Dispatcher("gpu")


@gpu_dispatch.register_lazy("cupy")
def _register_cupy() -> None:
    from dagflow.ops import gpu

    for name, func in gpu.IMPLEMENTATIONS.items():
        gpu_dispatch.register(name, func)


class LazyGpuFunc:
    """A picklable stand-in for a built-in GPU implementation, resolved when called."""

    def __init__(self, op: str) -> None:
        self.op = op

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        func = gpu_dispatch(self.op)
        if func is None:
            raise ModuleNotFoundError(f"the GPU implementation of {self.op!r} needs cupy "
                                      "(pip install 'dagflow[gpu]')")
        return func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"LazyGpuFunc({self.op!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LazyGpuFunc) and other.op == self.op

    def __hash__(self) -> int:
        return hash(("LazyGpuFunc", self.op))


def register_builtin_gpu_funcs() -> None:
    """Attach the lazy GPU implementations to the built-in ops (done on import)."""
    for op in GPU_OPS:
        set_gpu_func(op, LazyGpuFunc(op))


@functools.cache
def gpu_available() -> bool:
    """Whether this process can run cupy on a CUDA device (imports cupy only if installed)."""
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception as exc:  # driver missing, no device visible
        logger.debug("cupy is installed but no GPU is usable: %s", exc)
        return False


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


def _free_gpu_memory() -> None:
    try:
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
    except Exception:  # nothing to free, or cupy itself is in trouble
        logger.debug("could not free cupy's memory pool", exc_info=True)


def resolve_device(requested: str, spec: OpSpec, *, cluster_has_gpu: bool) -> str:
    """The device a node runs on, decided on the client: ``cpu`` or ``gpu``.

    ``auto`` becomes ``gpu`` only when the cluster has GPU workers and the op a GPU
    implementation; ``gpu`` stays ``gpu`` (on a cluster without GPUs its items fall back
    to the CPU, degraded).

    Examples
    --------
    >>> from dagflow.ops.registry import get_op
    >>> resolve_device("auto", get_op("gaussian"), cluster_has_gpu=True)
    'gpu'
    >>> resolve_device("auto", get_op("save"), cluster_has_gpu=True)
    'cpu'
    >>> resolve_device("auto", get_op("gaussian"), cluster_has_gpu=False)
    'cpu'
    """
    if requested == "gpu":
        return "gpu"
    if requested == "auto" and cluster_has_gpu and spec.gpu_func is not None:
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
        ``cpu``, ``gpu`` or ``auto`` (the node's, as resolved by the runtime).
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
    gpu_func = spec.gpu_func
    want_gpu = device == "gpu" or (device == "auto" and gpu_func is not None
                                   and gpu_available())
    if not want_gpu:
        used.update(device="cpu", degraded=False)
        return spec.func(*args, **params)
    if gpu_func is None or not gpu_available():
        why = ("no GPU implementation" if gpu_func is None
               else "no usable GPU in this worker")
        used.update(device="cpu-fallback", degraded=True, fallback=why)
        return spec.func(*args, **params)
    try:
        value = gpu_func(*args, **params)
    except Exception as exc:
        if not is_cuda_oom(exc):
            raise
        _free_gpu_memory()
        logger.warning("%s ran out of GPU memory (%s); running it on the CPU", spec.name, exc)
        used.update(device="cpu-fallback", degraded=True,
                    fallback=f"GPU out of memory: {type(exc).__name__}")
        return spec.func(*args, **params)
    used.update(device="gpu", degraded=False)
    return value

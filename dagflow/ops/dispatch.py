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

================  ==================================  ================================
device            usable GPU, op has a GPU version    otherwise
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
import threading
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
    "gpu_problem",
    "is_cuda_oom",
    "is_gpu_unusable",
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
        self._loading = threading.Lock()

    def register(self, key: str, func: Callable[..., Any]) -> Callable[..., Any]:
        self._impls[key] = func
        return func

    def register_lazy(self, module: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
        """Register ``loader`` to run the first time a key is missing and ``module`` is
        installed; the loader imports it and registers its implementations (it must not
        look keys up itself)."""

        def decorator(loader: Callable[[], None]) -> Callable[[], None]:
            self._lazy[module] = loader
            return loader

        return decorator

    def __call__(self, key: str) -> Callable[..., Any] | None:
        impl = self._impls.get(key)
        if impl is None and self._lazy:
            self._load_lazy()
            impl = self._impls.get(key)
        return impl

    def _load_lazy(self) -> None:
        """Run the loaders of the installed modules, one thread at a time.

        A loader is forgotten only once it has run: a lookup made meanwhile (a worker's
        other threads, on their first GPU item too) waits for it instead of finding
        nothing, and a loader that fails raises its own error to the caller, and runs
        again at the next lookup.
        """
        with self._loading:
            for module, loader in list(self._lazy.items()):
                if importlib.util.find_spec(module) is None:
                    continue
                loader()
                del self._lazy[module]


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
    from dagflow.resources import device_bytes, output_header

    data = getattr(args[0], "data", None) if args else None
    shape = getattr(data, "shape", None)
    if shape is None or len(shape) != 3:
        return 0
    header = {"width": int(shape[1]), "height": int(shape[0]), "channels": int(shape[2]),
              "itemsize": int(data.dtype.itemsize), "dtype": str(data.dtype)}
    try:
        return device_bytes(header, output_header(spec.name, header, params))
    except Exception:  # parameters output_header cannot read: the op will say so
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
    usable = cluster_has_gpu and spec.gpu_func is not None
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
    gpu_func = spec.gpu_func

    def on_cpu(why: str | None) -> Any:
        if why is None:
            used.update(device="cpu", degraded=False)
        else:
            used.update(device="cpu-fallback", degraded=True, fallback=why)
        return spec.func(*args, **params)

    if device == "cpu-fallback":
        return on_cpu("no GPU implementation" if gpu_func is None
                      else "no GPU worker in the cluster")
    want_gpu = device == "gpu" or (device == "auto" and gpu_func is not None
                                   and gpu_available())
    if not want_gpu:
        return on_cpu(None)
    if gpu_func is None:
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
        value = gpu_func(*args, **params)
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

"""A numpy-backed stand-in for cupy and cupyx, as strict about the host as cupy is.

:func:`numpy_as_cupy` puts ``cupy``, ``cupy.cuda``, ``cupyx``, ``cupyx.scipy``,
``cupyx.scipy.ndimage`` and ``cupyx.scipy.sparse`` stand-ins into ``sys.modules`` and
imports a fresh :mod:`dagflow.ops.gpu` on them, so that the GPU code runs (and is
compared with the CPU ops) on a machine without a GPU. Its arrays
(:class:`DeviceArray`) behave as cupy's where code could go wrong without noticing:

* no silent transfer to the host: ``numpy.asarray(a)`` (and so any scipy or numpy code
  that is not cupy-aware) raises ``TypeError``, as cupy's ``__array__`` does; only
  ``cupy.asnumpy`` and ``.get()`` copy back;
* no silent transfer to the device: a numpy array given to a cupy function other than
  ``asarray``/``array``, to a ufunc with a device array, to an ndimage filter, or as the
  value of an item assignment raises ``TypeError`` (cupy's "Unsupported type");
* numpy functions that cupy overrides (``__array_function__``, ``__array_ufunc__``) run
  on the device array and return one, as they do with cupy.

Its arrays claim cupy's module (``type(a).__module__ == "cupy"``, as ``cupy.ndarray``'s
does), so the ops' array functions (:mod:`dagflow.ops.backends`) load and pick the cupy
implementations for them, as they would for cupy's.

On leaving, everything is as it was: ``sys.modules``, the ``dagflow.ops.gpu`` attribute
of :mod:`dagflow.ops` (a later ``from dagflow.ops import gpu`` must get the real cupy
module, not this one), the array functions' registrations and caches, and the dispatch
layer's.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import scipy.ndimage
import scipy.sparse
from numpy.lib.mixins import NDArrayOperatorsMixin

__all__ = ["DeviceArray", "numpy_as_cupy"]

#: cupy's own words for an implicit transfer to the host.
HOST_TRANSFER = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` "
                 "to construct a NumPy array explicitly.")
#: cupy functions that take host data (explicit transfers).
TRANSFERS = ("asarray", "array", "asnumpy")


class DeviceArray(NDArrayOperatorsMixin):
    """An array "on the device": numpy underneath, no implicit way back to the host."""

    __module__ = "cupy"  # dispatch by array type finds cupy's implementations for it
    __slots__ = ("_host",)

    def __init__(self, host: np.ndarray) -> None:
        self._host = host

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError(HOST_TRANSFER)

    def get(self) -> np.ndarray:
        """A copy on the host (cupy's ``ndarray.get``)."""
        return self._host.copy()

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = tuple(_on_device(o) for o in out)
        result = getattr(ufunc, method)(*(_on_device(x) for x in inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        return _wrap(func(*_on_device(args), **_on_device(kwargs)))

    def __getitem__(self, key: Any) -> Any:
        return _wrap(self._host[_on_device(key)])

    def __setitem__(self, key: Any, value: Any) -> None:
        self._host[_on_device(key)] = _on_device(value)

    def __getattr__(self, name: str) -> Any:  # shape, dtype, T, astype, copy, ravel...
        if name.startswith("__"):  # __array_interface__ and the like: a way to the host
            raise AttributeError(name)
        value = getattr(self._host, name)
        if callable(value):
            return lambda *args, **kwargs: _wrap(value(*_on_device(args),
                                                       **_on_device(kwargs)))
        return _wrap(value)

    def __len__(self) -> int:
        return len(self._host)

    def __float__(self) -> float:  # a scalar's value, as cupy allows (a synchronising copy)
        return float(self._host)

    def __int__(self) -> int:
        return int(self._host)

    def __bool__(self) -> bool:
        return bool(self._host)

    def __repr__(self) -> str:
        return f"DeviceArray({self._host!r})"


def _wrap(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return DeviceArray(value)
    if isinstance(value, np.generic):  # cupy's reductions give 0-d arrays, not scalars
        return DeviceArray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _on_device(value: Any) -> Any:
    """The numpy arrays under device arrays; a numpy array that is not one is refused."""
    if isinstance(value, DeviceArray):
        return value._host
    if isinstance(value, np.ndarray) and value.ndim > 0:
        raise TypeError(f"Unsupported type {type(value)} (a host array where cupy wants a "
                        "device array: use cupy.asarray)")
    if isinstance(value, tuple):
        return tuple(_on_device(v) for v in value)
    if isinstance(value, list):
        return [_on_device(v) for v in value]
    if isinstance(value, dict):
        return {k: _on_device(v) for k, v in value.items()}
    return value


def _device_function(func: Callable[..., Any]) -> Callable[..., Any]:
    def on_device(*args: Any, **kwargs: Any) -> Any:
        return _wrap(func(*_on_device(args), **_on_device(kwargs)))

    on_device.__name__ = getattr(func, "__name__", "func")
    return on_device


def _asarray(value: Any, dtype: Any = None, **kwargs: Any) -> DeviceArray:
    if isinstance(value, DeviceArray):
        return DeviceArray(value._host if dtype is None else value._host.astype(dtype))
    return DeviceArray(np.array(value, dtype=dtype, **kwargs))


def _asnumpy(value: Any) -> np.ndarray:
    if isinstance(value, DeviceArray):
        return value._host.copy()
    return np.asarray(value)


class _CsrMatrix:
    """``cupyx.scipy.sparse.csr_matrix``: from a host scipy matrix (an explicit transfer)
    or a device array; its products take device arrays."""

    def __init__(self, arg: Any) -> None:
        if scipy.sparse.issparse(arg):
            self._host = scipy.sparse.csr_matrix(arg)
        elif isinstance(arg, DeviceArray):
            self._host = scipy.sparse.csr_matrix(arg._host)
        else:
            raise ValueError("Unsupported initializer format")

    @property
    def shape(self) -> tuple[int, int]:
        return self._host.shape

    def __matmul__(self, other: Any) -> DeviceArray:
        return DeviceArray(np.asarray(self._host @ _on_device_strict(other)))


def _on_device_strict(value: Any) -> np.ndarray:
    if not isinstance(value, DeviceArray):
        raise TypeError(f"Unsupported type {type(value)}: a device array was expected")
    return value._host


def _module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    return module


def _cupy(total_memory: int) -> dict[str, types.ModuleType]:
    cp = _module("cupy")
    for name in dir(np):
        if name.startswith("_"):
            continue
        value = getattr(np, name)
        if isinstance(value, type) or not callable(value):  # dtypes, constants
            setattr(cp, name, value)
        else:
            setattr(cp, name, _device_function(value))
    cp.ndarray = DeviceArray
    cp.asarray = cp.array = _asarray
    cp.asnumpy = _asnumpy
    pool = types.SimpleNamespace(free_all_blocks=lambda: None, used_bytes=lambda: 0,
                                 total_bytes=lambda: 0)
    cp.get_default_memory_pool = lambda: pool
    cuda = _module("cupy.cuda")
    cuda.runtime = types.SimpleNamespace(getDeviceCount=lambda: 1,
                                         memGetInfo=lambda: (total_memory, total_memory))
    cuda.Device = lambda *args: types.SimpleNamespace(synchronize=lambda: None)
    cp.cuda = cuda

    ndimage = _module("cupyx.scipy.ndimage")
    for name in ("gaussian_filter", "median_filter", "uniform_filter", "convolve",
                 "correlate", "correlate1d"):
        setattr(ndimage, name, _device_function(getattr(scipy.ndimage, name)))
    sparse = _module("cupyx.scipy.sparse")
    sparse.csr_matrix = _CsrMatrix
    cupyx, cupyx_scipy = _module("cupyx"), _module("cupyx.scipy")
    cupyx.scipy, cupyx_scipy.ndimage, cupyx_scipy.sparse = cupyx_scipy, ndimage, sparse
    return {"cupy": cp, "cupy.cuda": cuda, "cupyx": cupyx, "cupyx.scipy": cupyx_scipy,
            "cupyx.scipy.ndimage": ndimage, "cupyx.scipy.sparse": sparse}


_MISSING = object()


@contextlib.contextmanager
def numpy_as_cupy(*, total_memory: int = 16 * 2**30,
                  sparse_error: BaseException | None = None) -> Iterator[types.ModuleType]:
    """Run the GPU code on the stand-in; yields a fresh :mod:`dagflow.ops.gpu` on it.

    Parameters
    ----------
    total_memory
        The stand-in device's memory, in bytes.
    sparse_error
        Raised by every sparse product, as a CUDA library that does not load would be.
    """
    import dagflow.ops
    from dagflow.ops import backends, dispatch

    modules = _cupy(total_memory)
    if sparse_error is not None:
        def broken(self: Any, other: Any) -> Any:
            raise sparse_error

        modules["cupyx.scipy.sparse"].csr_matrix = type(
            "csr_matrix", (_CsrMatrix,), {"__matmul__": broken})
    names = [*modules, "dagflow.ops.gpu"]
    saved_modules = {name: sys.modules.get(name, _MISSING) for name in names}
    saved_attr = getattr(dagflow.ops, "gpu", _MISSING)
    functions = backends.array_functions()
    saved_functions = [(dict(f._registry), dict(f._lazy)) for f in functions]
    saved_lost = dispatch._gpu_lost

    def forget_gpu() -> None:
        dispatch.gpu_problem.cache_clear()
        dispatch._device_budget.cache_clear()

    sys.modules.update(modules)
    sys.modules.pop("dagflow.ops.gpu", None)
    if saved_attr is not _MISSING:
        delattr(dagflow.ops, "gpu")
    forget_gpu()
    dispatch._gpu_lost = None
    try:
        yield importlib.import_module("dagflow.ops.gpu")
    finally:
        for name, module in saved_modules.items():
            if module is _MISSING:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        if saved_attr is _MISSING:
            if hasattr(dagflow.ops, "gpu"):
                delattr(dagflow.ops, "gpu")
        else:
            dagflow.ops.gpu = saved_attr
        for func, (registry, lazy) in zip(functions, saved_functions, strict=True):
            func._registry, func._lazy, func._cache = registry, lazy, {}
        dispatch._gpu_lost = saved_lost
        forget_gpu()

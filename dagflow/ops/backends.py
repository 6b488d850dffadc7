"""Array backends: pixel functions whose implementation is chosen by the array's type.

An op's pixel work is a function of a ``(y, x, c)`` array. Written once for numpy, it can
have other implementations for other array types (cupy's, on a GPU): an
:class:`ArrayFunction` holds them and calls the one registered for the type of its first
argument, as :func:`functools.singledispatch` does and as dask-image dispatches its
filters. Implementations for a library that may be absent are registered *lazily*
(:meth:`ArrayFunction.register_lazy`): the loader runs the first time an array of that
library is given, so a machine without cupy never imports it -- it can have no cupy
array to give.

The built-in ops' cupy implementations live in :mod:`dagflow.ops.gpu`, registered by
:data:`CUPY` (a loader every built-in array function with a cupy version names). An op
declares the array libraries its function accepts (:attr:`OpSpec.backends
<dagflow.ops.registry.OpSpec.backends>`), for a built-in op
:func:`common_backends` of the array functions it calls; the GPU path
(:func:`dagflow.ops.dispatch.call`) moves an image to the device and runs the op's own
function on it, and its array functions pick the cupy implementations.

Examples
--------
>>> import numpy as np
>>> @array_function
... def double(arr):
...     '''Twice ``arr``.'''
...     return arr * 2
>>> double(np.arange(3)).tolist(), double.backends
([0, 2, 4], ('numpy',))
>>> double([1, 2]).tolist()  # anything numpy takes goes to the numpy implementation
[2, 4]

This module imports neither cupy nor Dask.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "CUPY",
    "ArrayFunction",
    "array_function",
    "array_functions",
    "common_backends",
]

#: The library the default implementation serves (numpy arrays and whatever
#: :func:`numpy.asarray` takes).
DEFAULT_LIBRARY = "numpy"

#: Every :class:`ArrayFunction` made, in order (the GPU tests save and restore their
#: registrations around a stand-in cupy).
_ALL: list[ArrayFunction] = []


def _library(cls: type) -> str:
    """The top-level package that defines ``cls`` (``cupy`` for ``cupy.ndarray``)."""
    if cls is object:
        return DEFAULT_LIBRARY
    return (getattr(cls, "__module__", "") or "").partition(".")[0]


class ArrayFunction:
    """A function of an array, implemented per array type.

    Parameters
    ----------
    default
        The numpy implementation: registered for :class:`numpy.ndarray`, and for any
        other type (``object``) after :func:`numpy.asarray`. Its name, docstring and
        signature become this function's.

    Notes
    -----
    Lookups are cached per type. The first lookup of a type whose library has a lazy
    loader runs the loader under a lock: lookups made meanwhile (a worker's other
    threads) wait for it rather than find the numpy implementation, and a loader that
    fails raises its own error to the caller and runs again at the next lookup.
    """

    def __init__(self, default: Callable[..., Any]) -> None:
        functools.update_wrapper(self, default)
        self._registry: dict[type, Callable[..., Any]] = {}
        self._cache: dict[type, Callable[..., Any]] = {}
        self._lazy: dict[str, Callable[[], None]] = {}
        self._loading = threading.Lock()

        def any_array(arr: Any, *args: Any, **kwargs: Any) -> Any:
            return default(np.asarray(arr), *args, **kwargs)

        self.register(np.ndarray, default)
        self.register(object, any_array)
        _ALL.append(self)

    def register(self, cls: type, func: Callable[..., Any] | None = None) -> Any:
        """Register ``func`` for arrays of type ``cls`` (and its subclasses); as a
        decorator without ``func``."""

        def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
            self._registry[cls] = func
            self._cache.clear()
            return func

        return decorator(func) if func is not None else decorator

    def register_lazy(self, library: str, loader: Callable[[], None] | None = None) -> Any:
        """Run ``loader`` (which registers implementations for ``library``'s array types)
        the first time an array of ``library`` is given; as a decorator without it."""

        def decorator(loader: Callable[[], None]) -> Callable[[], None]:
            self._lazy[library] = loader
            self._cache.clear()
            return loader

        return decorator(loader) if loader is not None else decorator

    @property
    def backends(self) -> tuple[str, ...]:
        """The array libraries this function has an implementation for, registered or
        lazily: ``("numpy", "cupy")``."""
        found = {_library(cls) for cls in self._registry} | set(self._lazy)
        return (DEFAULT_LIBRARY, *sorted(found - {DEFAULT_LIBRARY}))

    def dispatch(self, cls: type) -> Callable[..., Any]:
        """The implementation for arrays of type ``cls``."""
        impl = self._cache.get(cls)
        if impl is not None:
            return impl
        with self._loading:
            for base in cls.__mro__:  # a lazy library of the type's: load it first
                loader = self._lazy.get(_library(base))
                if loader is not None and base is not object:
                    loader()
                    del self._lazy[_library(base)]
            impl = next(self._registry[base] for base in cls.__mro__
                        if base in self._registry)
            self._cache[cls] = impl
        return impl

    def __reduce__(self) -> Any:
        """By reference when importable (the built-in ones: a worker's own, with its
        registrations), else by value (one defined in a notebook)."""
        module = sys.modules.get(self.__module__)
        if self.__module__ != "__main__" and getattr(module, self.__name__, None) is self:
            return self.__qualname__
        return super().__reduce__()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_cache={}, _loading=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _loading=threading.Lock())

    def __call__(self, arr: Any, *args: Any, **kwargs: Any) -> Any:
        impl = self._cache.get(type(arr)) or self.dispatch(type(arr))
        return impl(arr, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<array function {self.__name__} for {', '.join(self.backends)}>"


def array_function(default: Callable[..., Any] | None = None, *,
                   lazy: Mapping[str, Callable[[], None]] | None = None) -> Any:
    """Make ``default`` (the numpy implementation) an :class:`ArrayFunction`; with
    ``lazy``, register a loader per library. Used as a decorator, with or without
    arguments."""

    def make(default: Callable[..., Any]) -> ArrayFunction:
        func = ArrayFunction(default)
        for library, loader in (lazy or {}).items():
            func.register_lazy(library, loader)
        return func

    return make(default) if default is not None else make


def array_functions() -> list[ArrayFunction]:
    """Every array function made so far."""
    return list(_ALL)


def common_backends(*functions: ArrayFunction) -> tuple[str, ...]:
    """The array libraries every one of ``functions`` has an implementation for: what an
    op that calls them can run on.

    Examples
    --------
    >>> common_backends()
    ('numpy',)
    """
    found: set[str] = {DEFAULT_LIBRARY}
    for i, func in enumerate(functions):
        found = set(func.backends) if i == 0 else found & set(func.backends)
    return (DEFAULT_LIBRARY, *sorted(found - {DEFAULT_LIBRARY}))


def _load_builtin_cupy() -> None:
    from dagflow.ops import gpu

    gpu.register()


#: The lazy loader of the built-in cupy implementations (:mod:`dagflow.ops.gpu`), for
#: ``array_function(lazy=CUPY)``.
CUPY: Mapping[str, Callable[[], None]] = {"cupy": _load_builtin_cupy}

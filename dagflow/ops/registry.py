"""The op registry: what an op is, how it declares its parameters, and how to find one.

An op is a plain function plus an :class:`OpSpec` describing it, the one place that
knows about the op: its kind, its parameters (:class:`Param`, checked before anything
runs), how many images it takes, the header of the image it produces from its input's
(``output``), its working set (``memory``), how it runs block by block on an image larger
than memory (``tiling``, see :mod:`dagflow.ops.tiling`) and the array libraries its
function accepts (``backends``, see :mod:`dagflow.ops.backends`). The memory model
(:mod:`dagflow.resources`), the tiled path (:mod:`dagflow.tiled`) and the GPU path
(:mod:`dagflow.ops.dispatch`) read these; none of them knows an op by its name.
Built-in ops register themselves when :mod:`dagflow.ops` is imported; users register
their own with :func:`register_op`.

The calling convention by kind:

``source``     ``func(path, **params) -> Image``                     (``load``)
``transform``  ``func(image, **params) -> Image``; two-input ops take ``(a, b, **params)``
``sink``       ``func(image, dest, **params) -> str``: writes ``dest`` + its suffix
               atomically, returns the path written (``save``)
``aggregate``  ``func(images, items, **params) -> partial`` over one chunk, and
               ``reduce(partials, dest, **params) -> str`` over all chunks; the
               partial is one row of plain data per image (``partial="rows"``: stored
               as Parquet, never pickled, see :mod:`dagflow.ops.partials`)

This module imports neither the workflow layer nor Dask.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from dagflow.exceptions import UnknownOpError
from dagflow.ops.tiling import TRANSFORM_KINDS, Tiling, as_tiling

__all__ = [
    "REQUIRED",
    "OpKind",
    "OpSpec",
    "Param",
    "get_op",
    "list_ops",
    "register_op",
]

OpKind = Literal["source", "transform", "sink", "aggregate"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"

    def __reduce__(self) -> str:  # one instance, unpickled too: ``default is REQUIRED``
        return "REQUIRED"


#: Default of a parameter that has none: the user must give it.
REQUIRED: Any = _Required()

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               list: "a list", dict: "a mapping", type(None): "null"}


def _describe_type(types: tuple[type, ...]) -> str:
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


@dataclass(frozen=True)
class Param:
    """One parameter of an op.

    Parameters
    ----------
    name
        The parameter's name in ``params``.
    type
        Accepted Python type(s). ``float`` accepts integers; ``bool`` is never an integer.
    default
        The default, or :data:`REQUIRED`.
    doc
        One line for ``dagflow ops`` and the docs.
    choices
        The allowed values, if the set is closed.
    minimum, maximum
        Inclusive bounds for numbers (and for each element of a list of numbers).
    nullable
        Whether ``None`` is accepted (implied by a ``None`` default).
    """

    name: str
    type: type | tuple[type, ...]
    default: Any = REQUIRED
    doc: str = ""
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    nullable: bool = False

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def types(self) -> tuple[type, ...]:
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        if float in types and int not in types:
            types = (*types, int)
        return types

    def check(self, value: Any) -> str | None:
        """Return why ``value`` is not acceptable, or ``None`` when it is."""
        if value is None and (self.nullable or self.default is None):
            return None
        types = self.types
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            declared = self.type if isinstance(self.type, tuple) else (self.type,)
            return f"expected {_describe_type(declared)}, got {value!r}"
        if self.choices is not None and value not in self.choices:
            return f"expected one of {', '.join(map(repr, self.choices))}, got {value!r}"
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            if isinstance(v, int | float) and not isinstance(v, bool):
                if self.minimum is not None and v < self.minimum:
                    return f"expected a value >= {self.minimum}, got {value!r}"
                if self.maximum is not None and v > self.maximum:
                    return f"expected a value <= {self.maximum}, got {value!r}"
        return None

    def describe(self) -> str:
        """A one-line description for listings."""
        typ = _describe_type(self.type if isinstance(self.type, tuple) else (self.type,))
        default = "required" if self.required else f"default {self.default!r}"
        extra = f", one of {list(self.choices)}" if self.choices else ""
        return f"{self.name}: {typ} ({default}{extra}){' - ' + self.doc if self.doc else ''}"


MemoryModel = Callable[[Mapping[str, Any], Mapping[str, Any]], float]
#: ``output(header, params) -> the fields of the output's header that differ``.
OutputRule = Callable[[Mapping[str, Any], Mapping[str, Any]], Mapping[str, Any]]


@dataclass(frozen=True)
class OpSpec:
    """A registered op: its function and everything dagflow needs to know about it.

    Parameters
    ----------
    name
        The name used in workflows (``op: resize``).
    func
        The implementation, called as described in the module docstring.
    kind
        ``source``, ``transform``, ``sink`` or ``aggregate``.
    params
        The declared parameters; anything else in a node's ``params`` is an error.
    inputs
        How many upstream images the op takes (0 for sources, 2 for ``composite``).
    memory_factor
        Peak working set as a multiple of the decoded input's bytes, used when no
        ``memory`` model is given.
    memory
        ``memory(header, params) -> bytes``: peak working set from the input header
        (``width``, ``height``, ``channels``, ``itemsize``) and the parameters.
    output
        ``output(header, params) -> changes``: the fields of the produced image's header
        that differ from the input's (``width``, ``height``, ``channels``, ``dtype``,
        ``space``; ``itemsize`` follows ``dtype``), from the input header and the
        parameters, before anything is decoded (see :meth:`output_header`). ``None``:
        the op keeps its input's size, channels and dtype.
    tiling
        How the op runs block by block on an image larger than memory
        (:mod:`dagflow.ops.tiling`); ``None``: it does not.
    backends
        The array libraries ``func`` accepts the image's pixels from: ``("numpy",)``,
        or ``("numpy", "cupy")`` for an op whose array functions have cupy
        implementations (:mod:`dagflow.ops.backends`); a node with ``device: gpu`` runs
        such an op on the device.
    input_long_side
        ``input_long_side(params) -> pixels or None``: the longest input side the op
        makes use of (a ``resize`` by ``long_side``); a source whose every child
        declares one decodes at the reduced scale that keeps at least the largest.
    check
        ``check(params) -> list of problems`` for rules across parameters.
    reduce
        For aggregates: combines the per-chunk partials and writes the output.
    suffix
        For sinks and aggregates: ``suffix(params) -> ".jpg"``, the output extension.
    version
        Bump when the op's output changes, so checkpoints re-run what it affects.
    partial
        For aggregates: how the map's partial is stored between the map and the reduce.
        ``"rows"`` (the only storage): one mapping of plain data per image, kept as
        Parquet (:mod:`dagflow.ops.partials`).
    """

    name: str
    func: Callable[..., Any]
    kind: OpKind = "transform"
    params: tuple[Param, ...] = ()
    inputs: int = 1
    memory_factor: float = 2.0
    memory: MemoryModel | None = None
    check: Callable[[Mapping[str, Any]], list[str]] | None = None
    reduce: Callable[..., Any] | None = None
    suffix: Callable[[Mapping[str, Any]], str] | None = None
    version: str = "1"
    partial: str | None = None
    output: OutputRule | None = None
    tiling: Tiling | None = None
    backends: tuple[str, ...] = ("numpy",)
    input_long_side: Callable[[Mapping[str, Any]], int | None] | None = None

    @property
    def doc(self) -> str:
        """The first paragraph of the function's docstring."""
        return (inspect.getdoc(self.func) or "").split("\n\n")[0].replace("\n", " ")

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def resolve_params(self, params: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Check ``params`` and fill in defaults.

        Returns
        -------
        resolved, problems
            The parameters with defaults applied, and one line per problem found
            (empty when the parameters are valid).
        """
        problems: list[str] = []
        known = {p.name for p in self.params}
        for name in params:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=2)
                hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
                valid = ", ".join(sorted(known)) or "none"
                problems.append(f"unknown parameter {name!r}{hint}; valid parameters: {valid}")
        resolved: dict[str, Any] = {}
        for p in self.params:
            if p.name in params:
                value = params[p.name]
                why = p.check(value)
                if why:
                    problems.append(f"parameter {p.name!r}: {why}")
                resolved[p.name] = value
            elif p.required:
                problems.append(f"missing required parameter {p.name!r} ({p.describe()})")
            else:
                resolved[p.name] = p.default
        if not problems and self.check is not None:
            problems.extend(self.check(resolved))
        return resolved, problems

    def output_header(self, header: Mapping[str, Any], params: Mapping[str, Any]
                      ) -> dict[str, Any]:
        """The header of the image this op produces from an input with ``header``.

        ``width``, ``height`` and ``channels`` as integers (3 channels when unknown),
        updated by the op's ``output`` rule; ``itemsize`` follows a new ``dtype``; the
        other fields (``format``, ``orientation``...) are kept.

        Examples
        --------
        >>> h = {"width": 4000, "height": 3000, "channels": 3, "itemsize": 1,
        ...      "dtype": "uint8"}
        >>> out = get_op("resize").output_header(h, {"long_side": 1000})
        >>> out["width"], out["height"]
        (1000, 750)
        >>> get_op("convert").output_header(h, {"dtype": "uint16", "space": None})["itemsize"]
        2
        """
        out = dict(header)
        out["width"] = int(header.get("width", 0))
        out["height"] = int(header.get("height", 0))
        out["channels"] = int(header.get("channels", 3))
        if self.output is not None:
            changes = self.output(out, params)
            out.update(changes)
            if "dtype" in changes and "itemsize" not in changes:
                out["itemsize"] = int(np.dtype(changes["dtype"]).itemsize)
        return out

    def estimate_memory(self, header: Mapping[str, Any], params: Mapping[str, Any]) -> int:
        """Peak bytes this op needs for an input with ``header``."""
        if self.memory is not None:
            return int(self.memory(header, params))
        decoded = (header.get("width", 0) * header.get("height", 0)
                   * header.get("channels", 3) * header.get("itemsize", 1))
        return int(decoded * self.memory_factor)


_REGISTRY: dict[str, OpSpec] = {}


def register_op(
    name: str,
    *,
    kind: OpKind = "transform",
    params: Sequence[Param] = (),
    inputs: int | None = None,
    memory_factor: float = 2.0,
    memory: MemoryModel | None = None,
    check: Callable[[Mapping[str, Any]], list[str]] | None = None,
    reduce: Callable[..., Any] | None = None,
    suffix: Callable[[Mapping[str, Any]], str] | None = None,
    version: str = "1",
    partial: str | None = None,
    output: OutputRule | None = None,
    tiling: Tiling | str | None = None,
    backends: Sequence[str] = ("numpy",),
    input_long_side: Callable[[Mapping[str, Any]], int | None] | None = None,
    replace: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``func`` as the op ``name``; use as a decorator.

    Parameters
    ----------
    name
        The op's name in workflows.
    kind, params, inputs, memory_factor, memory, check, reduce, suffix, version, partial
        See :class:`OpSpec`. ``inputs`` defaults to 0 for sources and 1 otherwise;
        ``partial`` to ``"rows"`` for aggregates, which must also give ``reduce``.
    output, tiling, backends, input_long_side
        See :class:`OpSpec`. ``tiling`` takes a :mod:`dagflow.ops.tiling` declaration
        (``"pointwise"`` is short for ``tiling.pointwise()``) fitting the op's kind;
        ``backends`` must include ``"numpy"`` (the CPU implementation).
    replace
        Allow replacing an op registered under the same name.

    Raises
    ------
    ValueError
        For a declaration that contradicts itself (an aggregate without ``reduce``, a
        tiling that does not fit the kind, backends without numpy).

    Examples
    --------
    >>> from dagflow.ops.registry import Param, register_op
    >>> @register_op("invert_demo", params=[Param("maximum", int, 255)],
    ...              tiling="pointwise", replace=True)
    ... def invert_demo(image, maximum):
    ...     '''Invert pixel values.'''
    ...     return image.replace(maximum - image.data)
    >>> spec = get_op("invert_demo")
    >>> spec.params[0].name, spec.tiling.kind, spec.backends
    ('maximum', 'pointwise', ('numpy',))
    """

    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY and not replace and _REGISTRY[name].func is not func:
            raise ValueError(f"an op named {name!r} is already registered; pass replace=True")
        n_inputs = inputs if inputs is not None else (0 if kind == "source" else 1)
        storage = partial
        if kind == "aggregate":
            from dagflow.ops.partials import FORMATS

            storage = partial or "rows"
            if storage not in FORMATS or reduce is None:
                raise ValueError(
                    f"aggregate op {name!r} needs reduce= and partial= one of "
                    f"{', '.join(map(repr, FORMATS))} (its partial is stored as data)")
        elif partial is not None:
            raise ValueError(f"op {name!r}: partial= applies to aggregate ops only")
        declared = as_tiling(tiling)
        problem = _tiling_problem(kind, n_inputs, declared)
        if problem:
            raise ValueError(f"op {name!r}: {problem}")
        libraries = tuple(backends)
        if "numpy" not in libraries:
            raise ValueError(f"op {name!r}: backends= must include 'numpy' (the function "
                             f"runs on the CPU too), got {libraries!r}")
        _REGISTRY[name] = OpSpec(
            name=name, func=func, kind=kind, params=tuple(params), inputs=n_inputs,
            memory_factor=memory_factor, memory=memory, check=check, reduce=reduce,
            suffix=suffix, version=version, partial=storage, output=output,
            tiling=declared, backends=libraries, input_long_side=input_long_side,
        )
        return func

    return decorator


def _tiling_problem(kind: str, inputs: int, tiling: Tiling | None) -> str | None:
    """Why ``tiling`` does not fit an op of ``kind`` with ``inputs`` images."""
    if tiling is None:
        return None
    fits = {"source": ("source",), "sink": ("sink",),
            "transform": tuple(TRANSFORM_KINDS) if inputs == 1 else ()}.get(kind, ())
    if tiling.kind in fits:
        return None
    if kind == "transform" and inputs != 1:
        return f"a transform of {inputs} images does not tile"
    return f"a {tiling.kind} tiling does not fit a {kind} op"


def _ensure_builtins() -> None:
    import dagflow.ops  # noqa: F401  (registers the built-in ops)


def get_op(name: str) -> OpSpec:
    """The registered op ``name``.

    Raises
    ------
    UnknownOpError
        With the closest registered names as suggestions.
    """
    _ensure_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, sorted(_REGISTRY), n=3)
        raise UnknownOpError(name, close) from None


def list_ops() -> list[OpSpec]:
    """Every registered op, sorted by name."""
    _ensure_builtins()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]

"""Per-item conditions (``when:``): a safe expression language and Python predicates.

In YAML a condition is an expression over the fields of the image as it enters the node::

    when: "width > 2000 and format in ['jpeg', 'png']"

It is parsed once with :mod:`ast` and only comparisons, ``and``/``or``/``not``,
literals, lists and the known field names are accepted: no calls, attributes or
subscripts, so a workflow file can never run code. In Python any callable
``predicate(fields: dict) -> bool`` works too.

This module imports neither Dask nor the ops.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FIELDS", "MAX_DEPTH", "Condition", "ConditionError", "parse_condition"]

#: The fields a condition can test, with what they mean.
FIELDS: dict[str, str] = {
    "width": "width in pixels of the image entering the node",
    "height": "height in pixels",
    "channels": "number of channels (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA)",
    "dtype": "pixel type name, e.g. 'uint8', 'uint16'",
    "format": "format of the source file, e.g. 'jpeg', 'png', 'tiff'",
    "orientation": "EXIF orientation of the source file (1-8)",
    "space": "colour space: 'gray', 'graya', 'rgb', 'rgba'",
    "megapixels": "width x height / 1e6",
}

_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}


class ConditionError(ValueError):
    """A condition expression that is not valid; the message says what to fix."""


#: Deepest nesting a condition may have (operators inside operators): far beyond any
#: condition a person writes, and far below what would exhaust the interpreter's stack
#: when the condition is checked or evaluated.
MAX_DEPTH = 64


def _check(tree: ast.AST, source: str) -> None:
    """Refuse anything but the safe subset, and nesting deeper than :data:`MAX_DEPTH`.

    Walks the tree with its own stack (not by recursion), so that a hostile expression
    (thousands of nested ``not``) gets a :class:`ConditionError`, not a RecursionError.
    """
    stack: list[tuple[ast.AST, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ConditionError(
                f"condition {_shorten(source)!r} is nested more than {MAX_DEPTH} levels deep: "
                "write it flatter (e.g. 'not' once, 'and'/'or' over several comparisons)")
        stack.extend((child, depth + 1) for child in _children(node, source))


def _children(node: ast.AST, source: str) -> list[ast.AST]:
    """The sub-expressions of an accepted ``node``; raise on anything not accepted."""
    if isinstance(node, ast.Expression):
        return [node.body]
    if isinstance(node, ast.BoolOp):
        return list(node.values)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
        return [node.operand]
    if isinstance(node, ast.Compare):
        if not all(type(op) in _COMPARE for op in node.ops):
            raise ConditionError(f"unsupported comparison in {_shorten(source)!r}")
        return [node.left, *node.comparators]
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        return list(node.elts)
    if isinstance(node, ast.Name):
        if node.id not in FIELDS and node.id not in ("true", "false"):
            raise ConditionError(
                f"unknown field {node.id!r} in condition {_shorten(source)!r}; "
                f"known fields: {', '.join(FIELDS)}"
            )
        return []
    if isinstance(node, ast.Constant):
        if not isinstance(node.value, int | float | str | bool) and node.value is not None:
            raise ConditionError(f"unsupported literal {node.value!r} in {_shorten(source)!r}")
        return []
    raise ConditionError(
        f"unsupported syntax {type(node).__name__} in condition {_shorten(source)!r}: use "
        "comparisons of fields with literals, 'and', 'or', 'not', 'in'"
    )


def _shorten(source: str, limit: int = 200) -> str:
    """``source`` for a message: a hostile one can be megabytes long."""
    return source if len(source) <= limit else f"{source[:limit - 20]}...{source[-16:]}"


def _evaluate(node: ast.AST, fields: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, fields)
    if isinstance(node, ast.BoolOp):
        values = (_evaluate(v, fields) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand, fields)
        return (not value) if isinstance(node.op, ast.Not) else -value
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, fields)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(right_node, fields)
            try:
                if not _COMPARE[type(op)](left, right):
                    return False
            except TypeError:
                return False
            left = right
        return True
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        return [_evaluate(v, fields) for v in node.elts]
    if isinstance(node, ast.Name):
        if node.id in ("true", "false"):
            return node.id == "true"
        return fields.get(node.id)
    if isinstance(node, ast.Constant):
        return node.value
    raise ConditionError(f"unsupported syntax {type(node).__name__}")  # pragma: no cover


@dataclass(frozen=True)
class Condition:
    """A per-item condition: an expression string or a Python predicate.

    Parameters
    ----------
    expression
        The safe expression (YAML form), or ``None`` for a predicate.
    predicate
        A callable taking the fields dict and returning a bool.

    Examples
    --------
    >>> c = parse_condition("width > 100 and format == 'jpeg'")
    >>> c({"width": 200, "format": "jpeg"}), c({"width": 50, "format": "jpeg"})
    (True, False)
    """

    expression: str | None = None
    predicate: Callable[[Mapping[str, Any]], bool] | None = None

    def __call__(self, fields: Mapping[str, Any]) -> bool:
        if self.predicate is not None:
            return bool(self.predicate(fields))
        return bool(_evaluate(_parse(self.expression or "true"), fields))

    def __str__(self) -> str:
        if self.expression is not None:
            return self.expression
        return getattr(self.predicate, "__name__", "predicate")


def _parse(source: str) -> ast.Expression:
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as e:
        raise ConditionError(f"condition {_shorten(source)!r} is not a valid expression: "
                             f"{e.msg}") from None
    except (RecursionError, MemoryError):  # Python's own parser gives up on deep nesting
        raise ConditionError(
            f"condition {_shorten(source)!r} is nested too deeply to parse (at most "
            f"{MAX_DEPTH} levels)") from None
    _check(tree, source)
    return tree


def parse_condition(value: str | Callable[..., bool] | Condition | None) -> Condition | None:
    """Build a :class:`Condition` from an expression, a callable or ``None``.

    Raises
    ------
    ConditionError
        When the expression uses anything but fields, literals and comparisons.
    """
    if value is None or isinstance(value, Condition):
        return value
    if callable(value):
        return Condition(predicate=value)
    if isinstance(value, bool):
        return Condition(expression="true" if value else "false")
    if not isinstance(value, str):
        raise ConditionError(f"a condition must be an expression string, got {value!r}")
    _parse(value)
    return Condition(expression=value)

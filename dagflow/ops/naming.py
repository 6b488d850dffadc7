"""Where a sink writes an item's output: its ``subdir`` and its ``name`` template.

A sink node writes each item's output at ``<output dir>/<subdir>/<name><suffix>``:
``subdir`` is the node's optional sub-directory, ``suffix`` the format's (``.png``), and
``name`` a template over the item's input path, by default ``{rel}``: the input's path
relative to the input root without its extension, so that ``photos/a/x.jpg`` gives
``a/x.png``. The template's fields (:data:`FIELDS`) are all of the item's input path or
the node, so an output's path depends only on the item, the node and its parameters
(a task run again overwrites its own output and nothing else).

The template is checked before anything runs (:func:`check_name`): known fields only,
relative, no ``..``; the runtime joins the result under the output directory with
:func:`dagflow.io.atomic.safe_join`, which refuses anything that would leave it.

This module is pure: it imports no Dask and touches no file.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DEFAULT_NAME", "FIELDS", "check_name", "check_subdir", "output_name",
           "output_names", "relative_output"]

#: The fields a ``name`` template may use, with what they hold (for ``in/a/x.jpg``
#: under the input root ``in/``).
FIELDS: dict[str, str] = {
    "rel": "the input's path relative to the input root, without its extension (a/x)",
    "dir": "the input's directory relative to the input root ('a'; empty at the root)",
    "stem": "the input's file name without its extension (x)",
    "ext": "the input's extension without the dot, as written (jpg; empty if none)",
    "file": "the input's file name (x.jpg)",
    "parent": "the name of the directory that holds the input file (a), wherever it is",
    "hash": "8 hex digits of a hash of the input's absolute path",
    "node": "the id of the node that writes the output",
}

#: The template every sink uses unless its ``name`` parameter says otherwise.
DEFAULT_NAME = "{rel}"

_FORMATTER = string.Formatter()
_DRIVE = re.compile(r"^[A-Za-z]:")
_SAMPLES = (  # inputs the template is tried on when it is checked
    {"rel": "a/b/x.jpg", "path": "/in/a/b/x.jpg"}, {"rel": "x.jpg", "path": "/in/x.jpg"},
    {"rel": "x", "path": "/x"}, {"rel": ".hidden", "path": "/in/.hidden"},
)


def _fields(item: Mapping[str, Any], node: str) -> dict[str, str]:
    rel = str(item["rel"])
    directory, file = posixpath.split(rel)
    stem, ext = posixpath.splitext(file)
    path = str(item.get("path") or rel)
    return {"rel": posixpath.join(directory, stem), "dir": directory, "stem": stem,
            "ext": ext[1:], "file": file, "node": node,
            "parent": os.path.basename(os.path.dirname(path)),
            "hash": hashlib.blake2b(path.encode("utf-8", "surrogatepass"),
                                    digest_size=4).hexdigest()}


def output_name(template: str | None, item: Mapping[str, Any], node: str) -> str:
    """The ``name`` template filled in for ``item`` (its ``rel``), before any cleaning.

    Examples
    --------
    >>> item = {"rel": "a/x.jpg"}
    >>> output_name(None, item, "save"), output_name("{rel}_{ext}", item, "save")
    ('a/x', 'a/x_jpg')
    >>> output_name("{node}/{dir}/{stem}", {"rel": "x.tif"}, "thumbs")
    'thumbs//x'
    """
    if template is None or template == DEFAULT_NAME:  # the common case, kept fast
        rel = str(item["rel"])
        stem = posixpath.splitext(rel)[0]
        return stem
    return template.format_map(_fields(item, node))


def output_names(template: str | None, items: Sequence[Mapping[str, Any]], node: str
                 ) -> list[str]:
    """:func:`output_name` for every item: the same names, made faster for the default
    template (a million items are named when a run is planned).

    Examples
    --------
    >>> output_names(None, [{"rel": "a.b/x.jpg"}, {"rel": "a.b/y"}, {"rel": ".z.png"}], "n")
    ['a.b/x', 'a.b/y', '.z']
    """
    if template is not None and template != DEFAULT_NAME:
        return [output_name(template, item, node) for item in items]
    rels = [str(item["rel"]) for item in items]
    if any(r.startswith(".") or "/." in r for r in rels):  # dot files: splitext's rules
        return [posixpath.splitext(r)[0] for r in rels]
    # without dot files, splitext cuts at the last dot when it is in the file name
    return [r[:dot] if (dot := r.rfind(".")) > r.rfind("/") else r for r in rels]


def relative_output(params: Mapping[str, Any], item: Mapping[str, Any], node: str) -> str:
    """The output's path under the output directory, without its suffix: ``subdir``
    joined with the filled ``name`` template (``params`` are the sink node's)."""
    name = output_name(params.get("name"), item, node)
    subdir = params.get("subdir")
    return f"{subdir}/{name}" if subdir else name


def check_subdir(subdir: Any) -> list[str]:
    """Why ``subdir`` is not a relative directory inside the output directory (or ``[]``)."""
    if subdir is None:
        return []
    parts = subdir.replace("\\", "/").split("/")
    if not subdir or posixpath.isabs(subdir.replace("\\", "/")) or ".." in parts \
            or ":" in subdir:
        return [f"parameter 'subdir': expected a relative directory inside the output "
                f"directory (no '..', not absolute), got {subdir!r}"]
    return []


def check_name(template: Any) -> list[str]:
    """Why ``template`` cannot name outputs (or ``[]``): unknown fields, conversions,
    an absolute path, a ``..`` component, control characters, or a name that is empty.

    Examples
    --------
    >>> check_name("{rel}_{ext}")
    []
    >>> check_name("../{stem}")  # doctest: +ELLIPSIS
    ["parameter 'name': '../{stem}': the name must stay inside the output directory ..."]
    """
    if template is None:
        return []
    where = f"parameter 'name': {template!r}"
    if not isinstance(template, str) or not template.strip():
        return [f"{where}: expected a non-empty template such as {DEFAULT_NAME!r}"]
    try:
        pieces = list(_FORMATTER.parse(template))
    except ValueError as exc:
        return [f"{where} is not a valid template ({exc}); write a literal brace as "
                "'{{' or '}}'"]
    problems = []
    for literal, field, spec, conversion in pieces:
        if field is not None and field not in FIELDS:
            problems.append(f"{where}: unknown field {{{field}}}; known fields: "
                            + ", ".join(f"{{{f}}}" for f in FIELDS))
        elif field is not None and (spec or conversion):
            problems.append(f"{where}: a field takes no format or conversion "
                            f"({{{field}}} only)")
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in literal):
            problems.append(f"{where}: control characters are not allowed")
        if "\\" in literal:
            problems.append(f"{where}: use '/' between directories, not '\\'")
    if problems:
        return problems
    literal_parts = "/".join(piece[0] for piece in pieces).split("/")
    if template.startswith("/") or _DRIVE.match(template) or ".." in literal_parts:
        return [f"{where}: the name must stay inside the output directory (relative, no "
                "'..' component)"]
    for sample in _SAMPLES:
        filled = output_name(template, sample, "node")
        parts = [p for p in filled.split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            return [f"{where}: gives {filled!r} for the input {sample['rel']!r}, which names "
                    "no file; include {rel}, {stem} or {file}"]
    return []

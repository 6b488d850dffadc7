"""Output collisions, found when a run is planned, before anything runs.

Every sink node writes one file per item (``<subdir>/<name><suffix>``, see
:mod:`dagflow.ops.naming`) and every aggregate node one file (``<node id><suffix>``).
Two writers of one path would overwrite each other silently: ``x.jpg``, ``x.png`` and
``x.tif`` saved as PNG are all ``x.png``; two manifest entries with the same file name
in different directories are too. :func:`check_outputs` computes every path the way
the workers will (the same cleaning as :func:`dagflow.io.atomic.safe_join`) and refuses
the run with an :class:`~dagflow.exceptions.OutputCollisionError` naming each path and
what would write it when

* two writers (items of one node, or two nodes) share a path,
* a path is also the directory of another path (``a.png`` and ``a.png/b.png``),
* a path lies in dagflow's own state directory (``_dagflow/...``).

It looks at every item of the run's inputs, not only those still to run: an item done
earlier owns its output as much as one that runs now. This module imports no Dask.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from dagflow.exceptions import BadInputError, OutputCollisionError
from dagflow.io.atomic import MAX_COMPONENT_BYTES, clean_parts
from dagflow.ops.naming import output_names
from dagflow.ops.registry import get_op

__all__ = ["check_outputs", "find_collisions", "output_paths"]

def output_paths(workflow: Any, items: Sequence[Mapping[str, Any]]
                 ) -> list[tuple[str, str, list[str | None]]]:
    """Every output path of ``workflow`` over ``items``, per writing node.

    Returns
    -------
    list of (node id, kind, paths)
        For a sink, one path per item (relative to the output directory, POSIX, cleaned
        as the workers clean it), ``None`` for an item whose output cannot be named (its
        sink records that failure when it runs); for an aggregate, its one path.
    """
    out = []
    names_by_template: dict[str | None, list[str]] = {}
    for node in workflow.nodes:
        spec = get_op(node.op)
        if spec.kind not in ("sink", "aggregate"):
            continue
        params = spec.resolve_params(node.params)[0]
        suffix = spec.suffix(params) if spec.suffix is not None else ""
        if spec.kind == "aggregate":
            out.append((node.id, "aggregate", [node.id + suffix]))
            continue
        template = params.get("name")
        if template is not None and "{node}" in template:
            names = output_names(template, items, node.id)
        else:  # the same names for every node with this template: made once
            names = names_by_template.get(template)
            if names is None:
                names = names_by_template[template] = output_names(template, items, node.id)
        subdir = params.get("subdir")
        cleaned = _cleaned([f"{subdir}/{n}" for n in names] if subdir else names)
        out.append((node.id, "sink", [None if c is None else c + suffix for c in cleaned]))
    return out


def _cleaned(names: list[str]) -> list[str | None]:
    """``names`` as :func:`~dagflow.io.atomic.clean_parts` leaves them (``None`` where it
    refuses one).

    The names are first checked together, with a few searches over their joined text:
    when they are plain (printable ASCII; no empty, ``.`` or ``..`` component, backslash,
    drive or component long enough to be shortened), cleaning would change none of them
    and is skipped (a million items: a second saved).
    """
    text = "\n".join(names)
    if text.isascii() and text.replace("\n", "").isprintable() and not text.startswith(
            (".", "/")) and not any(s in text for s in (
                "//", "/.", "\n.", "\n/", "/\n", "\\", ":")) and not text.endswith("/") \
            and max(map(len, text.replace("\n", "/").split("/"))) * 4 <= MAX_COMPONENT_BYTES:
        return names  # type: ignore[return-value]
    out: list[str | None] = []
    for name in names:
        try:
            out.append("/".join(clean_parts(name)))
        except BadInputError:
            out.append(None)
    return out


def find_collisions(workflow: Any, items: Sequence[Mapping[str, Any]], *,
                    state_dir: str = "_dagflow") -> dict[str, list[str]]:
    """The output paths that would be written more than once, or where they must not be.

    Returns
    -------
    dict
        Per colliding path (relative to the output directory): one readable line per
        writer (``"<input path> (node 'save')"``, ``"aggregate node 'stats'"``), and the
        reason where the path cannot be written. Empty when every output has its own
        path.
    """
    per_node = output_paths(workflow, items)
    every = [p for _, _, paths in per_node for p in paths if p is not None]
    unique = set(every)
    text = "\n" + "\n".join(unique)
    # a file where another output needs a directory: only possible where a writer's
    # file name (its suffix, an aggregate's whole name) ends a directory of some path
    ends = {p.rpartition("/")[2] if kind == "aggregate" else p[p.rfind("."):]
            for _, kind, paths in per_node for p in paths[:1] if p is not None}
    wrong: set[str] = set()
    if not ends or any(("." not in e and e) or e + "/" in text for e in ends):
        directories: set[str] = set()
        for parent in {p.rpartition("/")[0] for p in unique}:
            while parent and parent not in directories:
                directories.add(parent)
                parent = parent.rpartition("/")[0]
        wrong = unique & directories
    if f"\n{state_dir}/" in text:
        wrong.update(p for p in unique if p.split("/", 1)[0] == state_dir)
    if len(unique) == len(every) and not wrong:
        return {}  # the common case: found with set operations and searches only
    # something collides: who writes what, for the paths at fault only
    writers: dict[str, list[str]] = {}
    for node, kind, paths in per_node:
        for index, path in enumerate(paths):
            if path is not None:
                who = f"aggregate node {node!r}" if kind == "aggregate" \
                    else f"{items[index]['path']} (node {node!r})"
                writers.setdefault(path, []).append(who)
    found = {path: who for path, who in writers.items() if len(who) > 1}
    for path in sorted(wrong):
        reasons = found.setdefault(path, list(writers[path]))
        inner = next((p for p in sorted(unique) if p.startswith(path + "/")), None)
        if inner is not None:
            reasons.append(f"{writers[inner][0]}, whose output {inner} needs {path} as a "
                           "directory")
        if path.split("/", 1)[0] == state_dir:
            reasons.append(f"{path} is inside dagflow's state directory {state_dir!r}")
    return found


def check_outputs(workflow: Any, items: Sequence[Mapping[str, Any]],
                  output: str | os.PathLike[str]) -> None:
    """Refuse a run whose outputs would collide (see the module docstring).

    Raises
    ------
    OutputCollisionError
        Naming every colliding path, what would write it, and how to tell them apart.
    """
    from dagflow import config

    found = find_collisions(workflow, items, state_dir=str(config.get("state-dir")))
    if found:
        raise OutputCollisionError(found, os.fspath(output))

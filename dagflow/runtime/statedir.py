"""dagflow's state directory inside an output directory, checked before a run writes to it.

A run writes its run directory under ``<output>/<state-dir>/runs/``, aggregate partials
under ``aggregates/<node>/``, timings under ``history/`` and its lock beside them. The
output directory is the user's (it may itself be a symlink); everything under it is
written by anyone who can write there. If ``_dagflow`` (or ``runs``, a run, the
aggregates of a node...) were a symlink, dagflow would write its state, and read it
back, wherever the link points: :func:`check_state_dir` refuses the run before anything
is made, as :func:`dagflow.io.atomic.safe_join` refuses an output path through a
symlink.

This module imports no Dask.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from dagflow.exceptions import UnsafeStateError

__all__ = ["STATE_PARTS", "check_state_dir"]

#: The directories of the state directory a run writes into; their entries are checked too.
STATE_PARTS = ("runs", "aggregates", "history")


def _refuse(path: Path, what: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeStateError(
            f"{path} ({what}) is a symlink: dagflow would write its state, and read it back, "
            f"where it points ({os.readlink(path)!r}). Replace it with a directory, or "
            "choose another output directory")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeStateError(f"{path} ({what}) is not a directory: move it away, or "
                               "choose another output directory")


def check_state_dir(output: str | os.PathLike[str], state_dir: str = "_dagflow") -> Path:
    """Refuse a state directory that is, or holds where a run writes, a symlink.

    Checks ``<output>/<state_dir>``, its ``runs``, ``aggregates`` and ``history``
    directories and every entry in them (one listing each; nothing is followed).

    Returns
    -------
    pathlib.Path
        The state directory (which may not exist yet).

    Raises
    ------
    UnsafeStateError
        Naming the symlink (and where it points) or the file in the way.
    """
    root = Path(output) / state_dir
    _refuse(root, "dagflow's state directory")
    for part in STATE_PARTS:
        directory = root / part
        _refuse(directory, f"dagflow's {part} directory")
        try:
            with os.scandir(directory) as entries:
                links = sorted(e.name for e in entries if e.is_symlink())
        except (FileNotFoundError, NotADirectoryError):
            continue
        if links:
            _refuse(directory / links[0], f"in dagflow's {part} directory")
    return root

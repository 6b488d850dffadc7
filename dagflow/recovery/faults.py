"""Deterministic fault points for the tests of crashes, named by one environment variable.

``DAGFLOW_FAULT=<point>:<value>`` makes the process that reaches ``point`` with ``value``
kill itself with SIGKILL, as a machine failure would (its whole process group when it
leads one, so that a driver takes its embedded cluster's workers along). The points:

``after-part:<part>``
    The driver of a run, once it has taken in the records part named ``<part>`` (e.g.
    ``part-0000003.parquet``) and logged its ``chunk_finished`` event.
``in-part:<part>``
    Any process writing the records part ``<part>``: after its content is written to the
    temporary file, before the file is renamed into place.

Nothing is read or done unless the variable is set: the check is one lookup in a cached
dict.
"""

from __future__ import annotations

import functools
import os
import signal

__all__ = ["reached"]

VARIABLE = "DAGFLOW_FAULT"


@functools.cache
def _wanted() -> tuple[str, str] | None:
    point, sep, value = os.environ.get(VARIABLE, "").partition(":")
    return (point, value) if sep else None


def reached(point: str, value: str) -> None:
    """Die here, at once, if ``DAGFLOW_FAULT`` names ``point`` with ``value``."""
    wanted = _wanted()
    if wanted is None or wanted != (point, value):
        return
    if os.getsid(0) == os.getpid():  # a session leader: its group is its own processes
        os.killpg(os.getpgid(0), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)

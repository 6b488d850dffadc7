"""This process's environment variables, set for a block and put back after it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping

__all__ = ["environment"]


@contextlib.contextmanager
def environment(values: Mapping[str, str] | None = None,
                keep: Iterable[str] = ()) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the block; afterwards every variable named in
    ``values`` or ``keep`` is as it was before (unset again if it was not set).

    ``keep`` names variables that something in the block may set (a nanny writing its
    workers' spawn environment into this process, for one).

    Examples
    --------
    >>> import os
    >>> with environment({"DAGFLOW_DOCTEST": "1"}):
    ...     os.environ["DAGFLOW_DOCTEST"]
    '1'
    >>> "DAGFLOW_DOCTEST" in os.environ
    False
    """
    values = dict(values or {})
    saved = {k: os.environ.get(k) for k in {*values, *keep}}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

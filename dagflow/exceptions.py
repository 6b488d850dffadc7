"""The exceptions dagflow raises, one tree under :class:`DagflowError`.

::

    DagflowError
    ├── WorkflowValidationError (ValueError)     invalid workflow: lists every problem
    ├── ConfigError (ValueError)                 invalid configuration or cluster profile
    ├── ClusterUnreachableError (ConnectionError)  no Dask scheduler answers at the address
    ├── InputError (ValueError)                  inputs that name no images, bad manifest
    ├── UnknownOpError (KeyError)                an op name that is not registered
    ├── ItemError                                one item failed in one node (recorded, not raised)
    │   ├── BadInputError (ValueError)           corrupt, truncated, oversize, unsafe path
    │   │   └── OversizeError                    larger than the pixel or memory limit
    │   ├── TransientError (OSError)             worth retrying: I/O hiccup, storage timeout
    │   ├── ItemTimeoutError (TimeoutError)      the per-item timeout ran out
    │   └── ResourceError (MemoryError)          out of memory for this item
    ├── CircuitOpenError                         a node's breaker is open; the run stopped early
    └── StorageError                             the output directory or the run's state
                                                 cannot be written (read-only, disk full)

Item errors carry an ``error_class`` (``bad_input``, ``transient``, ``timeout``,
``resource``) that goes into the item's record; any other exception raised by an op is
classified ``bug``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BadInputError",
    "CircuitOpenError",
    "ClusterUnreachableError",
    "ConfigError",
    "DagflowError",
    "InputError",
    "ItemError",
    "ItemTimeoutError",
    "OversizeError",
    "ResourceError",
    "StorageError",
    "TransientError",
    "UnknownOpError",
    "WorkflowValidationError",
]


class DagflowError(Exception):
    """Root of every error dagflow raises on purpose."""


class WorkflowValidationError(DagflowError, ValueError):
    """A workflow that cannot run, with every problem found.

    Parameters
    ----------
    problems
        One readable line per problem, each naming the node and what to fix.
    workflow
        The workflow's name, when known.
    """

    def __init__(self, problems: Sequence[str], workflow: str | None = None) -> None:
        self.problems = list(problems)
        self.workflow = workflow
        super().__init__(self.problems)

    def __str__(self) -> str:
        name = f" {self.workflow!r}" if self.workflow else ""
        if len(self.problems) == 1:
            return f"invalid workflow{name}: {self.problems[0]}"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"invalid workflow{name}, {len(self.problems)} problems:\n{lines}"


class ConfigError(DagflowError, ValueError):
    """Invalid dagflow configuration or cluster profile."""


class ClusterUnreachableError(DagflowError, ConnectionError):
    """No Dask scheduler answered at the address, scheduler file or profile given.

    Raised before anything runs; the message names the address and what was tried.
    """


class InputError(DagflowError, ValueError):
    """Inputs that cannot be resolved to images (no match, unreadable manifest...)."""


class UnknownOpError(DagflowError, KeyError):
    """An op name that is not registered.

    Parameters
    ----------
    name
        The name asked for.
    suggestions
        Registered names close to it.
    """

    def __init__(self, name: str, suggestions: Sequence[str] = ()) -> None:
        self.name = name
        self.suggestions = list(suggestions)
        super().__init__(name)

    def __str__(self) -> str:
        close = ", ".join(map(repr, self.suggestions))
        hint = f"; did you mean {close}?" if self.suggestions else ""
        return f"unknown op {self.name!r}{hint}"


class ItemError(DagflowError):
    """An error that belongs to one item in one node; recorded, never fatal to the run."""

    error_class = "bug"


class BadInputError(ItemError, ValueError):
    """The input itself is bad (corrupt, truncated, unsupported, unsafe): never retried.

    Parameters
    ----------
    reason
        Short machine-friendly reason, e.g. ``"truncated"``, ``"decompression_bomb"``.
    message
        Human-readable explanation.
    """

    error_class = "bad_input"

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {message}")


class OversizeError(BadInputError):
    """An image larger than the pixel limit or the memory a worker can hold."""

    def __init__(self, message: str) -> None:
        super().__init__("oversize", message)


class TransientError(ItemError, OSError):
    """A failure worth retrying (storage hiccup, lost connection, timeout of a service)."""

    error_class = "transient"


class ItemTimeoutError(ItemError, TimeoutError):
    """The per-item timeout of a node ran out."""

    error_class = "timeout"


class ResourceError(ItemError, MemoryError):
    """The item needs more memory than is available."""

    error_class = "resource"


class CircuitOpenError(DagflowError):
    """A node's circuit breaker is open: the run stopped sending items to it.

    Parameters
    ----------
    node
        The node whose breaker opened.
    last_errors
        The most recent errors that opened it.
    """

    def __init__(self, node: str, last_errors: Sequence[str] = ()) -> None:
        self.node = node
        self.last_errors = list(last_errors)
        super().__init__(node)

    def __str__(self) -> str:
        errors = "; ".join(self.last_errors[-3:]) or "no error message"
        return f"circuit breaker open for node {self.node!r} after repeated failures: {errors}"


class StorageError(DagflowError):
    """dagflow cannot write where it must: the output directory or the run's state.

    A read-only output directory, a full disk or quota: the run stops at once (no item
    can be recorded), claims nothing it could not record, and the same command resumes
    once the storage is fixed.

    Parameters
    ----------
    path
        The file or directory that could not be written.
    error
        The operating system's error, as text (``[Errno 28] No space left on device``).
    """

    def __init__(self, path: str, error: str) -> None:
        self.path = str(path)
        self.error = str(error)
        super().__init__(self.path, self.error)

    @classmethod
    def from_os_error(cls, exc: OSError, path: object = None) -> StorageError:
        """From an ``OSError``: its file name (else ``path``) and its message."""
        where = exc.filename if exc.filename is not None else path
        text = f"[Errno {exc.errno}] {exc.strerror}" if exc.strerror else str(exc)
        return cls(str(where), text)

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.error}"

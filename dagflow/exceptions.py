"""The exceptions dagflow raises, one tree under :class:`DagflowError`.

::

    DagflowError
    ├── WorkflowValidationError (ValueError)     invalid workflow: lists every problem
    ├── ConfigError (ValueError)                 invalid configuration or cluster profile
    ├── ClusterUnreachableError (ConnectionError)  no Dask scheduler answers at the address
    ├── ClusterStartError (RuntimeError)         a cluster could not start: its batch system
    │                                            refused the first worker job, for instance
    ├── InputError (ValueError)                  inputs that name no images, bad manifest
    ├── OutputError (ValueError)                 the output directory cannot take this run
    │   ├── OutputCollisionError                 items or nodes that would write one file
    │   └── UnsafeStateError                     dagflow's state directory is a symlink
    ├── OutputLockedError (RuntimeError)         another run holds the output directory
    ├── UnknownOpError (KeyError)                an op name that is not registered
    ├── ItemError                                one item failed in one node (recorded, not raised)
    │   ├── BadInputError (ValueError)           corrupt, truncated, oversize, unsafe path
    │   │   └── OversizeError                    larger than the pixel or memory limit
    │   ├── TransientError (OSError)             worth retrying: I/O hiccup, storage timeout
    │   ├── ItemTimeoutError (TimeoutError)      the per-item timeout ran out
    │   ├── ResourceError (MemoryError)          out of memory for this item
    │   └── PartialDataError (TypeError)         an aggregate op's partial that is not data
    ├── CircuitOpenError                         a node's breaker is open; the run stopped early
    └── StorageError                             the output directory or the run's state
                                                 cannot be written (read-only, disk full),
                                                 or a store cannot be used (no such bucket,
                                                 bad credentials, its package missing)

Item errors carry an ``error_class`` (``bad_input``, ``transient``, ``timeout``,
``resource``) that goes into the item's record; any other exception raised by an op is
classified ``bug``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BadInputError",
    "CircuitOpenError",
    "ClusterStartError",
    "ClusterUnreachableError",
    "ConfigError",
    "DagflowError",
    "InputError",
    "ItemError",
    "ItemTimeoutError",
    "OutputCollisionError",
    "OutputError",
    "OutputLockedError",
    "OversizeError",
    "PartialDataError",
    "ResourceError",
    "StorageError",
    "TransientError",
    "UnknownOpError",
    "UnsafeStateError",
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


class ClusterStartError(DagflowError, RuntimeError):
    """A cluster (from a profile) could not start, before anything ran.

    Raised when the cluster class fails to start, or when the batch system refuses the
    first worker job (``sbatch``/``qsub`` missing, an unknown partition or account):
    the message says what the batch system said. dask-jobqueue itself would retry the
    submission every few seconds for ever.
    """


class InputError(DagflowError, ValueError):
    """Inputs that cannot be resolved to images (no match, unreadable manifest...)."""


class OutputError(DagflowError, ValueError):
    """The output directory cannot take this run as asked; nothing ran."""


class OutputCollisionError(OutputError):
    """Items (or nodes) that would write the same output file, found before anything runs.

    Parameters
    ----------
    collisions
        Per output path (relative to the output directory), what would write it: one
        line each, e.g. ``"photos/x.jpg (node 'save')"``.
    output
        The output directory.
    """

    def __init__(self, collisions: dict[str, list[str]], output: str = "") -> None:
        self.collisions = dict(collisions)
        self.output = output
        super().__init__(self.collisions)

    def __str__(self) -> str:
        import os

        count = len(self.collisions)
        lines = [f"outputs would overwrite each other (nothing ran): {count} "
                 f"{'path has' if count == 1 else 'paths have'} more than one writer"]
        for path, writers in list(self.collisions.items())[:10]:
            more = f", and {len(writers) - 5} more" if len(writers) > 5 else ""
            shown = os.path.join(self.output, path) if self.output else path
            lines.append(f"  {shown}  <-  {', '.join(writers[:5])}{more}")
        if count > 10:
            lines.append(f"  ... and {count - 10} more paths")
        lines.append("give each output its own name with the save node's 'name' parameter: "
                     "name: \"{rel}_{ext}\" for inputs that differ by their extension (x.jpg "
                     "-> x_jpg.png, x.png -> x_png.png), \"{parent}/{rel}\" or "
                     "\"{rel}_{hash}\" for inputs of one name in different directories; or "
                     "give the nodes different 'subdir's")
        return "\n".join(lines)


class UnsafeStateError(OutputError):
    """dagflow's state directory (or a directory in it) is a symlink or not a directory:
    its state would be written, and read, somewhere else."""


class OutputLockedError(DagflowError, RuntimeError):
    """Another run holds the output directory (one run per output directory).

    Parameters
    ----------
    message
        What holds it (run id, process, host, since when) and what to do.
    holder
        The lock's record, as read: ``run_id``, ``pid``, ``host``, ``since``...
    """

    def __init__(self, message: str, holder: dict | None = None) -> None:
        self.holder = dict(holder or {})
        super().__init__(message)


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


class PartialDataError(ItemError, TypeError):
    """An aggregate op returned a partial that is not plain data (see
    :mod:`dagflow.ops.partials`); recorded as a ``bug`` for the chunk's items."""


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
    """dagflow cannot use the storage it must: the output directory or the run's state, or
    an object store (``s3://``, ``gs://``...).

    A read-only output directory, a full disk or quota: the run stops at once (no item
    can be recorded), claims nothing it could not record, and the same command resumes
    once the storage is fixed. A store that cannot be used as asked (no such bucket,
    credentials missing or refused) is not one item's fault either: never retried, and a
    run checks its stores before anything starts.

    Parameters
    ----------
    path
        The file, directory or URL (any credentials already removed from it).
    error
        What went wrong, as text (``[Errno 28] No space left on device``).
    reason
        ``write`` (the default: the operating system refused a write), ``no_bucket``,
        ``credentials`` (missing, invalid or expired), ``access_denied``,
        ``credentials_in_url`` (refused: give them in the storage options or the
        environment), ``protocol`` (its package is not installed, or unknown) or
        ``unsupported`` (the store cannot do what is asked, e.g. a conditional write).
    """

    def __init__(self, path: str, error: str, reason: str = "write") -> None:
        self.path = str(path)
        self.error = str(error)
        self.reason = reason
        super().__init__(self.path, self.error, reason)

    @classmethod
    def from_os_error(cls, exc: OSError, path: object = None) -> StorageError:
        """From an ``OSError``: its file name (else ``path``) and its message."""
        where = exc.filename if exc.filename is not None else path
        text = f"[Errno {exc.errno}] {exc.strerror}" if exc.strerror else str(exc)
        return cls(str(where), text)

    def __str__(self) -> str:
        if self.reason == "write":
            return f"cannot write {self.path}: {self.error}"
        return f"{self.path}: {self.error}"

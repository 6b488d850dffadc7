"""How failures while reading an image become dagflow's error classes.

A reader sees three kinds of failure and each must end as the right class, because the
class decides what the runtime does with the item:

* the storage hiccuped (``EIO``, ``ETIMEDOUT``, ``ESTALE``...): :class:`TransientError`,
  retried with backoff;
* the file is bad (missing, empty, truncated, corrupt, unsupported): :class:`BadInputError`
  with a short ``reason``, quarantined and never retried;
* the decoder ran out of memory: :class:`ResourceError`.

This module owns that mapping (:func:`decoder_errors`) and the reason vocabulary. It
decodes nothing itself.
"""

from __future__ import annotations

import errno
import logging
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike

from PIL import Image as PILImage

from dagflow.exceptions import (
    BadInputError,
    DagflowError,
    OversizeError,
    ResourceError,
    TransientError,
)

__all__ = [
    "REASONS",
    "TRANSIENT_ERRNOS",
    "decoder_errors",
    "os_error",
]

logger = logging.getLogger(__name__)

#: ``errno`` values that mean "try again later" rather than "this file is bad".
TRANSIENT_ERRNOS = frozenset(
    code
    for code in (
        errno.EIO,
        errno.ETIMEDOUT,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EAGAIN,
        errno.EBUSY,
        errno.ESTALE,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        errno.EHOSTDOWN,
    )
)

#: Every ``BadInputError.reason`` that :mod:`dagflow.io` raises, with its meaning.
REASONS = {
    "missing": "the file does not exist",
    "not_a_file": "the path is a directory or another non-regular file",
    "unreadable": "the file exists but cannot be opened (permissions...)",
    "empty_file": "the file has zero bytes",
    "unidentified": "the content is not an image format dagflow reads",
    "truncated": "the file ends before the image data does",
    "corrupt": "the decoder rejected the data",
    "unsupported_mode": "a pixel layout dagflow does not read or cannot write",
    "unsupported_codec": "a compression the installed codecs cannot decode",
    "oversize": "more pixels than the limit (decompression bomb guard)",
    "unsafe_path": "an output path that escapes its root or crosses a symlink",
}

_TRUNCATION_HINTS = (
    "truncated",
    "unpack requires",
    "premature end",
    "end of file",
    "eof",
    "not enough data",
    "buffer is not large enough",
    "incomplete",
)


def os_error(exc: OSError, path: str | PathLike[str]) -> DagflowError:
    """The dagflow error for an ``OSError`` raised while opening or reading ``path``.

    Parameters
    ----------
    exc
        The error raised by the operating system (or by a decoder, ``errno`` unset).
    path
        The file being read.

    Returns
    -------
    DagflowError
        A :class:`TransientError` for retryable ``errno`` values, else a
        :class:`BadInputError` (``missing``, ``not_a_file``, ``unreadable``,
        ``truncated`` or ``corrupt``).
    """
    where = str(path)
    if isinstance(exc, FileNotFoundError):
        return BadInputError("missing", f"{where} does not exist")
    if isinstance(exc, IsADirectoryError | NotADirectoryError):
        return BadInputError("not_a_file", f"{where} is not a regular file")
    if isinstance(exc, PermissionError):
        return BadInputError("unreadable", f"{where}: permission denied")
    if exc.errno in TRANSIENT_ERRNOS:
        return TransientError(exc.errno, exc.strerror or str(exc), where)
    if exc.errno is not None:
        return BadInputError("unreadable", f"{where}: {exc}")
    return _decoder_failure(exc, where)


def _decoder_failure(exc: BaseException, where: str) -> BadInputError:
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if "imagecodecs" in lowered:
        return BadInputError("unsupported_codec", f"{where}: {text} (a codec missing from "
                             "this installation's imagecodecs)")
    if isinstance(exc, EOFError | struct.error) or any(h in lowered for h in _TRUNCATION_HINTS):
        return BadInputError("truncated", f"{where}: {text}")
    return BadInputError("corrupt", f"{where}: {type(exc).__name__}: {text}")


@contextmanager
def decoder_errors(path: str | PathLike[str]) -> Iterator[None]:
    """Translate whatever a decoder raises inside the block into dagflow's classes.

    dagflow errors pass through unchanged; Pillow's ``DecompressionBombError`` becomes
    :class:`OversizeError`; ``MemoryError`` becomes :class:`ResourceError`; an
    ``OSError`` goes through :func:`os_error`; any other exception a decoder raises on
    bad data becomes ``BadInputError("truncated" | "corrupt" | "unsupported_codec")``.

    Parameters
    ----------
    path
        The file being decoded, for the messages.

    Raises
    ------
    BadInputError, TransientError, ResourceError
        As described above.
    """
    where = str(path)
    try:
        yield
    except DagflowError:
        raise
    except PILImage.DecompressionBombError as exc:
        raise OversizeError(f"{where}: {exc}") from exc
    except MemoryError as exc:
        raise ResourceError(f"{where}: out of memory while decoding") from exc
    except OSError as exc:
        raise os_error(exc, where) from exc
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except zlib.error as exc:
        raise BadInputError("corrupt", f"{where}: zlib: {exc}") from exc
    except Exception as exc:
        # Decoders signal bad data with SyntaxError, ValueError, IndexError, KeyError,
        # struct.error, TiffFileError...: none of them is a bug of ours at this point.
        logger.debug("decoder failure on %s", where, exc_info=True)
        raise _decoder_failure(exc, where) from exc

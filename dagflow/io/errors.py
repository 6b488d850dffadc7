"""How failures while reading an image become dagflow's error classes.

A reader sees three kinds of failure and each must end as the right class, because the
class decides what the runtime does with the item:

* the storage hiccuped (``EIO``, ``ETIMEDOUT``, ``ESTALE``...): :class:`TransientError`,
  retried with backoff;
* the file is bad (missing, empty, truncated, corrupt, unsupported): :class:`BadInputError`
  with a short ``reason``, quarantined and never retried;
* the decoder ran out of memory: :class:`ResourceError`.

Objects on a store (``s3://``, ``gs://``, ``az://``...) fail in more ways, each recognised
by :func:`storage_error` from the store's error code, HTTP status or exception class,
anywhere in the exception's chain (fsspec libraries wrap the client's error):

* throttled or failing (HTTP 503 ``SlowDown``, 500 ``InternalError``, 429, timeouts,
  connection resets): :class:`TransientError`, retried with backoff and counted by the
  node's circuit breaker;
* no such bucket, refused or missing credentials: :class:`StorageError`, one line, not
  retried (not an item's fault: a run checks its stores before it starts);
* no such object: ``BadInputError("missing")``; access denied to one object being
  read: ``BadInputError("unreadable")``, as for a local file.

Messages hold the location with credentials removed (:mod:`dagflow.io.redact`), never
the storage options. This module owns that mapping (:func:`decoder_errors`,
:func:`storage_errors`) and the reason vocabulary. It decodes nothing itself.
"""

from __future__ import annotations

import errno
import logging
import struct
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from os import PathLike
from typing import Any

from PIL import Image as PILImage

from dagflow.exceptions import (
    BadInputError,
    DagflowError,
    OversizeError,
    ResourceError,
    StorageError,
    TransientError,
)
from dagflow.io.redact import redact_text, redact_url

__all__ = [
    "REASONS",
    "TRANSIENT_ERRNOS",
    "decoder_errors",
    "os_error",
    "storage_error",
    "storage_errors",
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
        errno.ECONNREFUSED,
        errno.EREMOTEIO,  # s3fs: HTTP 500 InternalError
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
    "changed": "the object changed while it was being read",
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
    where = redact_url(str(path))
    try:
        yield
    except DagflowError:
        raise
    except PILImage.DecompressionBombError as exc:
        raise OversizeError(f"{where}: {exc}") from exc
    except MemoryError as exc:
        raise ResourceError(f"{where}: out of memory while decoding") from exc
    except OSError as exc:
        raise storage_error(exc, where) or os_error(exc, where) from exc
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except zlib.error as exc:
        raise BadInputError("corrupt", f"{where}: zlib: {exc}") from exc
    except Exception as exc:
        # A ranged read of an object failing under the decoder (a timeout, a reset).
        failure = storage_error(exc, where)
        if failure is not None:
            raise failure from exc
        # Decoders signal bad data with SyntaxError, ValueError, IndexError, KeyError,
        # struct.error, TiffFileError...: none of them is a bug of ours at this point.
        logger.debug("decoder failure on %s", where, exc_info=True)
        raise _decoder_failure(exc, where) from exc


#: Error codes of object stores (S3 and its clones, GCS, Azure) that mean "try again".
_TRANSIENT_CODES = frozenset({
    "SlowDown", "ServiceUnavailable", "Throttling", "ThrottlingException",
    "ThrottledException", "RequestThrottled", "TooManyRequests", "TooManyRequestsException",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "InternalFailure", "InternalServerError",
    "ServerBusy", "OperationTimedOut", "OperationAborted", "ConditionalRequestConflict",
})
#: HTTP statuses that mean "try again".
_TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: Codes of a bucket (container) that does not exist.
_NO_BUCKET_CODES = frozenset({"NoSuchBucket", "ContainerNotFound", "BucketNotFound"})
#: Codes of credentials that the store refused.
_CREDENTIAL_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException",
    "InvalidToken", "TokenRefreshRequired", "InvalidSecurity", "AuthorizationHeaderMalformed",
    "InvalidClientTokenId", "UnrecognizedClientException", "AuthenticationFailed",
    "InvalidAuthenticationInfo", "NoAuthenticationInformation", "401",
})
#: Codes of a request the credentials are not allowed to make.
_DENIED_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem", "403",
                           "AuthorizationPermissionMismatch", "AuthorizationFailure",
                           "Forbidden"})
#: Exception classes (by name, anywhere in the MRO) of credentials that were not found or
#: could not be loaded: botocore, google-auth, azure-identity.
_CREDENTIAL_CLASSES = frozenset({
    "NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
    "NoAuthTokenError", "UnauthorizedSSOTokenError", "TokenRetrievalError",
    "SSOTokenLoadError", "DefaultCredentialsError", "RefreshError",
    "ClientAuthenticationError", "CredentialUnavailableError",
})
#: Exception classes (by name) of a connection that failed, was reset or timed out:
#: botocore, aiohttp, urllib3/requests, fsspec, google and azure clients.
_NETWORK_CLASSES = frozenset({
    "HTTPClientError", "EndpointConnectionError", "ConnectionClosedError",
    "ReadTimeoutError", "ConnectTimeoutError", "ProxyConnectionError",
    "ClientConnectorError", "ClientConnectionError", "ClientOSError",
    "ServerDisconnectedError", "ServerTimeoutError", "ClientPayloadError",
    "ConnectionTimeoutError", "SocketTimeoutError", "FSTimeoutError", "IncompleteRead",
    "ResponseParserError", "ServiceRequestError", "ServiceResponseError", "TransportError",
    "ChunkedEncodingError", "ReadTimeout", "ConnectTimeout", "RemoteDisconnected",
    "ProtocolError", "TimeoutError", "ConnectionError",
})


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _code_and_status(exc: BaseException) -> tuple[str | None, int | None, str]:
    """The store's error code, HTTP status and message carried by one exception."""
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):  # botocore's ClientError
        error = response.get("Error") or {}
        meta = response.get("ResponseMetadata") or {}
        status = meta.get("HTTPStatusCode")
        return (error.get("Code") or None, int(status) if status else None,
                str(error.get("Message") or ""))
    code = getattr(exc, "error_code", None)  # azure's HttpResponseError
    status: Any = getattr(exc, "status_code", None) or getattr(exc, "status", None)
    if status is None and isinstance(getattr(exc, "code", None), int):  # gcsfs's HttpError
        status = exc.code  # type: ignore[attr-defined]
    return (str(code) if code else None, status if isinstance(status, int) else None, "")


def _class_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def storage_error(exc: BaseException, url: str, *, action: str = "read",
                  options: Mapping[str, Any] | None = None) -> DagflowError | None:
    """The dagflow error for a failure of an object store, or ``None`` when ``exc``
    (and what it was raised from) is not one that this function recognises.

    Parameters
    ----------
    exc
        What the storage library raised (an fsspec ``OSError`` wrapping botocore's
        ``ClientError``, an aiohttp or botocore connection error...).
    url
        The location being used; credentials in it are removed from the message.
    action
        ``read`` (an item's object), ``list`` or ``write``: access denied to an object
        being read is that item's ``BadInputError("unreadable")``, elsewhere a
        :class:`StorageError`.
    options
        The storage options in use: their secret values are removed from the message.

    Returns
    -------
    TransientError, StorageError, BadInputError or None

    Examples
    --------
    >>> storage_error(ConnectionResetError(104, "Connection reset by peer"), "s3://b/k")
    TransientError(104, 'ConnectionResetError: Connection reset by peer')
    >>> storage_error(ValueError("not a storage failure"), "s3://b/k") is None
    True
    """
    where = redact_url(url)
    for current in _chain(exc):
        if isinstance(current, DagflowError):
            return current
        code, status, message = _code_and_status(current)
        names = _class_names(current)
        raw = message or (current.strerror if isinstance(current, OSError) else None) \
            or str(current) or type(current).__name__
        text = redact_text(str(raw), options)
        label = f"{code}: {text}" if code and not text.startswith(code) else text
        if code in _NO_BUCKET_CODES:
            return StorageError(where, f"no such bucket or container ({label}); "
                                "create it or correct the URL", reason="no_bucket")
        if code in _CREDENTIAL_CODES or status == 401 or names & _CREDENTIAL_CLASSES:
            return StorageError(where, f"credentials missing or refused ({label}); set them "
                                "in the environment, a profile, or dagflow.storage.options",
                                reason="credentials")
        if code in _DENIED_CODES or status == 403:
            if action == "read":
                return BadInputError("unreadable", f"{where}: access denied ({label})")
            return StorageError(where, f"access denied for {action} ({label}); check the "
                                "credentials' permissions", reason="access_denied")
        if code in _TRANSIENT_CODES or status in _TRANSIENT_STATUSES:
            return TransientError(errno.EBUSY, label, where)
        if names & _NETWORK_CLASSES or isinstance(current, TimeoutError | ConnectionError):
            number = getattr(current, "errno", None)
            if not isinstance(number, int):
                number = errno.ETIMEDOUT if "Timeout" in " ".join(names) else errno.ECONNRESET
            return TransientError(number, f"{type(current).__name__}: {text}", where)
    return None


@contextmanager
def storage_errors(url: str, *, action: str = "read",
                   options: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Translate what a store raises inside the block into dagflow's classes.

    :func:`storage_error` first; then, for ``read``, :func:`os_error` (a missing object
    is ``BadInputError("missing")``); anything else passes through unchanged.

    Raises
    ------
    TransientError, StorageError, BadInputError
        As described in :func:`storage_error`.
    """
    try:
        yield
    except DagflowError:
        raise
    except Exception as exc:
        failure = storage_error(exc, url, action=action, options=options)
        if failure is not None:
            raise failure from exc
        if action == "read" and isinstance(exc, OSError):
            raise os_error(exc, redact_url(url)) from exc
        raise

"""Where dagflow's bytes live: local paths, and URLs of any installed fsspec protocol.

A location is a local path (``/data/in/a.jpg``), a ``file://`` URL (the same thing), or
a URL of an object store or remote filesystem that fsspec reaches through an installed
package: ``s3://`` (s3fs), ``gs://`` (gcsfs), ``az://`` / ``abfs://`` (adlfs),
``memory://``, ``sftp://``... This module turns a URL into its filesystem and gives the
few operations the readers, writers and (later) the run state need:

* :func:`filesystem` -- the fsspec filesystem of a URL, with its storage options: from
  ``dagflow.storage.options.<protocol>`` in the configuration and given explicitly
  (explicit ones win); credentials otherwise come from where the store's library looks
  (environment variables, profile files, instance metadata). A URL with credentials in
  it (``s3://KEY:SECRET@bucket``) is refused. One filesystem per protocol and options
  per process: fsspec's instance cache gives the same instance back, so a worker keeps
  its connections open across items, and an instance pickled to a worker is looked up
  there again (what travels is the protocol and the options, never a connection);
* :func:`stat` -- size and a change token (the object's ETag where the store has one,
  else its modification time), what verifies an output and fingerprints an input;
* :func:`list_objects` -- the objects under a prefix (recursively) or matching a glob
  (``**`` included), each with its :class:`ObjectStat` from the listing itself;
* :func:`read_first`, :func:`read_range` and :class:`RangedFile` -- ranged reads, so
  that a header is probed from the first kilobytes of an object instead of the whole of
  it; on S3 the first one also tells the object's size and ETag (no ``HEAD`` first), and
  :func:`listed_size` lets it fetch an object a listing said is small whole;
* :func:`join` -- an output location under a root, cleaned as
  :func:`dagflow.io.atomic.safe_join` cleans local ones.

Failures end as dagflow's classes (:func:`dagflow.io.errors.storage_errors`): a throttled
store is a :class:`~dagflow.exceptions.TransientError` once the store's library has done
its own retries (s3fs: up to 5 tries for throttling and dropped connections, within each
botocore's), a missing bucket or refused credentials a
:class:`~dagflow.exceptions.StorageError`. Storage options are never
logged; locations are logged through :func:`dagflow.io.redact.redact_url`.

Writing objects whole or not at all is :mod:`dagflow.io.upload`'s.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from dagflow.exceptions import BadInputError, StorageError
from dagflow.io.errors import storage_error, storage_errors
from dagflow.io.redact import has_userinfo, redact_url

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = [
    "ObjectStat",
    "RangedFile",
    "as_local",
    "filesystem",
    "is_remote",
    "is_url",
    "join",
    "list_objects",
    "listed_size",
    "protocol_of",
    "read_first",
    "read_range",
    "resolve_options",
    "stat",
]

logger = logging.getLogger(__name__)

_URL = re.compile(r"^(?P<protocol>[A-Za-z][A-Za-z0-9+.-]+)://")
_LOCAL_PROTOCOLS = frozenset({"file", "local"})
#: Protocols whose first path component is a bucket (or container).
_BUCKETED = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"})
#: What to install for the common protocols (fsspec's own hint otherwise).
_PACKAGES = {"s3": "s3fs (pip install 'dagflow[s3]')", "s3a": "s3fs (pip install 'dagflow[s3]')",
             "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs",
             "adl": "adlfs"}
_GLOB_CHARS = frozenset("*?[")
#: Protocols whose ranged read answers with the object's size and ETag (S3's
#: ``Content-Range``), so that no ``HEAD`` has to come first.
_SIZED_READS = frozenset({"s3", "s3a"})

#: Bytes of an object fetched by its first ranged read (a header probe reads no more).
DEFAULT_PROBE_BYTES = 64 * 1024


def is_url(path: Any) -> bool:
    """Whether ``path`` is a URL (``protocol://...``) rather than a plain local path.

    Examples
    --------
    >>> is_url("s3://bucket/a.jpg"), is_url("file:///data/a.jpg"), is_url("/data/a.jpg")
    (True, True, False)
    """
    return isinstance(path, str) and _URL.match(path) is not None


def protocol_of(path: Any) -> str | None:
    """The lower-case protocol of a URL, ``None`` for a local path.

    Examples
    --------
    >>> protocol_of("S3://bucket/a.jpg"), protocol_of("a.jpg")
    ('s3', None)
    """
    match = _URL.match(path) if isinstance(path, str) else None
    return match["protocol"].lower() if match else None


def is_remote(path: Any) -> bool:
    """Whether ``path`` names something that is not on the local filesystem.

    Examples
    --------
    >>> is_remote("s3://bucket/a.jpg"), is_remote("file:///data/a.jpg"), is_remote("a.jpg")
    (True, False, False)
    """
    protocol = protocol_of(path)
    return protocol is not None and protocol not in _LOCAL_PROTOCOLS


def as_local(path: Any) -> Any:
    """``path`` as a local path: a ``file://`` URL without its protocol, anything else
    unchanged.

    Examples
    --------
    >>> as_local("file:///data/a.jpg"), as_local("/data/a.jpg")
    ('/data/a.jpg', '/data/a.jpg')
    """
    if protocol_of(path) in _LOCAL_PROTOCOLS:
        return path.split("://", 1)[1]
    return path


def resolve_options(protocol: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The storage options for ``protocol``: ``dagflow.storage.options`` for it (or for an
    alias of it: ``gs``/``gcs``, ``az``/``abfs``), overridden by ``options``.

    Keys of the configured options may be spelled with ``-`` (as Dask's configuration
    spells keys) or ``_``; fsspec gets ``_``.

    Examples
    --------
    >>> import dask
    >>> with dask.config.set({"dagflow.storage.options": {"s3": {"endpoint-url": "http://x"}}}):
    ...     resolve_options("s3", {"anon": True})
    {'endpoint_url': 'http://x', 'anon': True}
    """
    from dagflow import config

    configured = config.get("storage.options") or {}
    names = [protocol, *_aliases(protocol)]
    base = next((configured[name] for name in names if configured.get(name)), {})
    merged = {str(key).replace("-", "_"): value for key, value in dict(base).items()}
    merged.update(options or {})
    return merged


def _aliases(protocol: str) -> tuple[str, ...]:
    try:
        import fsspec

        cls = fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError):
        return ()
    names = cls.protocol if isinstance(cls.protocol, tuple) else (cls.protocol,)
    return tuple(name for name in names if name != protocol)


def _filesystem_class(protocol: str, where: str) -> type[AbstractFileSystem]:
    import fsspec

    try:
        return fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        need = _PACKAGES.get(protocol) or str(exc)
        raise StorageError(where, f"{protocol}:// needs {need}", reason="protocol") from None
    except ValueError:
        raise StorageError(where, f"unknown protocol {protocol!r} (no fsspec implementation "
                           "of that name is registered)", reason="protocol") from None


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None
               ) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem of ``url`` and the path of ``url`` inside it.

    Parameters
    ----------
    url
        A URL (``s3://bucket/key``, ``memory://x``, ``file:///data``) or a local path.
    storage_options
        Storage options for this call, over the configured ones
        (:func:`resolve_options`).

    Returns
    -------
    (filesystem, path)
        The same filesystem instance for the same protocol and options in this process
        (fsspec's instance cache).

    Raises
    ------
    StorageError
        ``credentials_in_url`` for a URL with a user part, ``protocol`` for a protocol
        whose package is not installed or that is unknown, ``unsupported`` for a chained
        URL (``simplecache::s3://...``).
    """
    where = redact_url(url)
    if has_userinfo(url):
        raise StorageError(where, "credentials in a URL are refused (they would be written "
                           "to records and logs): set them in the environment, a profile, "
                           "or dagflow.storage.options", reason="credentials_in_url")
    if "::" in url:
        raise StorageError(where, "chained URLs are not supported", reason="unsupported")
    protocol = protocol_of(url) or "file"
    cls = _filesystem_class(protocol, where)
    kwargs = {**cls._get_kwargs_from_urls(url), **resolve_options(protocol, storage_options)}
    try:
        fs = cls(**kwargs)
    except Exception as exc:
        failure = storage_error(exc, url, action="list", options=kwargs)
        if failure is not None:
            raise failure from exc
        raise StorageError(where, f"cannot set up the {protocol}:// "
                           f"filesystem: {type(exc).__name__}", reason="unsupported") from exc
    return fs, cls._strip_protocol(url)


class ObjectStat(NamedTuple):
    """What is known of an object (or file) without reading it.

    Attributes
    ----------
    size
        Bytes.
    etag
        The store's entity tag (quotes removed), ``None`` where it has none (local files).
    mtime_ns
        Modification time in nanoseconds since the epoch, ``None`` where unknown.
    """

    size: int
    etag: str | None
    mtime_ns: int | None

    @property
    def token(self) -> str:
        """What changes when the content changes: the ETag, else the modification time.

        Examples
        --------
        >>> ObjectStat(3, '5eb6', None).token, ObjectStat(3, None, 17).token
        ('5eb6', '17')
        """
        if self.etag:
            return self.etag
        return "" if self.mtime_ns is None else str(self.mtime_ns)


def _mtime_ns(value: Any) -> int | None:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1_000_000) * 1000
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value * 1_000_000_000)
    if isinstance(value, str) and value:
        try:
            return _mtime_ns(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def _from_info(info: Mapping[str, Any]) -> ObjectStat:
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("generation")
    mtime = next((info[k] for k in ("LastModified", "last_modified", "mtime", "updated",
                                    "created") if info.get(k) is not None), None)
    size = info.get("size", info.get("Size"))
    return ObjectStat(int(size or 0), str(etag).strip('"') if etag else None, _mtime_ns(mtime))


def _check_bucket(fs: AbstractFileSystem, path: str, url: str) -> None:
    """After a "not found": a missing bucket is a :class:`StorageError`, not a missing
    object (for stores whose library does not say which it was)."""
    if protocol_of(url) not in _BUCKETED:
        return
    bucket = path.split("/", 1)[0]
    try:
        exists = fs.exists(bucket)
    except Exception:
        logger.debug("could not check the bucket of %s", redact_url(url), exc_info=True)
        return
    if not exists:
        raise StorageError(redact_url(url), f"no such bucket or container "
                           f"{bucket!r}; create it or correct the URL", reason="no_bucket")


def stat(url: str, storage_options: Mapping[str, Any] | None = None, *,
         missing_ok: bool = False) -> ObjectStat | None:
    """Size and change token of an object or local file, fresh from the store.

    Parameters
    ----------
    url
        A URL or a local path.
    storage_options
        Storage options for this call, over ``dagflow.storage.options``.
    missing_ok
        Return ``None`` for a missing object instead of raising.

    Raises
    ------
    BadInputError
        ``missing`` (unless ``missing_ok``), ``not_a_file`` (a prefix or directory),
        ``unreadable``.
    StorageError
        No such bucket; credentials missing or refused.
    TransientError
        A throttled or failing store.
    """
    if not is_remote(url):
        local = as_local(url)
        try:
            st = os.stat(local)
        except FileNotFoundError:
            if missing_ok:
                return None
            raise BadInputError("missing", f"{local} does not exist") from None
        except OSError as exc:
            from dagflow.io.errors import os_error

            raise os_error(exc, local) from exc
        if not os.path.isfile(local):
            raise BadInputError("not_a_file", f"{local} is not a regular file")
        return ObjectStat(st.st_size, None, st.st_mtime_ns)
    fs, path = filesystem(url, storage_options)
    with storage_errors(url, action="read", options=storage_options):
        fs.invalidate_cache(path)  # a listing cached earlier may predate the object
        try:
            info = fs.info(path)
        except FileNotFoundError as exc:
            if storage_error(exc, url) is None:
                _check_bucket(fs, path, url)
                if missing_ok:
                    return None
            raise
        except PermissionError:
            # A HEAD answer has no body: 403 is all it says, whether the credentials
            # were refused or this object is not theirs to read. A one-byte GET says which.
            fs.cat_file(path, start=0, end=1)
            raise
    if info.get("type") != "file":
        raise BadInputError("not_a_file", f"{redact_url(url)} is a prefix, not an object")
    return _from_info(info)


def list_objects(url: str, storage_options: Mapping[str, Any] | None = None, *,
                 recursive: bool = True) -> list[tuple[str, ObjectStat]]:
    """The objects under a prefix, or matching a glob, with their stats, sorted by URL.

    Parameters
    ----------
    url
        ``s3://bucket/photos/`` (every object below it; only the ones directly in it
        with ``recursive=False``) or a glob: ``s3://bucket/photos/**/*.jpg``.
    storage_options
        Storage options for this call, over ``dagflow.storage.options``.
    recursive
        For a prefix: list below its sub-prefixes too.

    Returns
    -------
    list of (url, ObjectStat)
        One listing request per thousand objects (S3); no request per object.

    Raises
    ------
    StorageError
        No such bucket; credentials missing or refused; access denied.
    TransientError
        A throttled or failing store.
    """
    fs, path = filesystem(url, storage_options)
    with storage_errors(url, action="list", options=storage_options):
        # a listing is of the store now, not of this process's cache of an earlier one
        fixed = min((i for i, ch in enumerate(path) if ch in _GLOB_CHARS), default=len(path))
        fs.invalidate_cache(path[:fixed].rsplit("/", 1)[0] if fixed < len(path) else path)
        try:
            if any(ch in _GLOB_CHARS for ch in path):
                found = fs.glob(path, detail=True)
            elif recursive:
                found = fs.find(path, detail=True, withdirs=False)
            else:
                found = {info["name"]: info for info in fs.ls(path, detail=True)}
        except FileNotFoundError as exc:
            if storage_error(exc, url) is not None:
                raise
            _check_bucket(fs, path, url)
            found = {}
    return [(fs.unstrip_protocol(name), _from_info(info))
            for name, info in sorted(found.items()) if info.get("type", "file") == "file"]


def read_range(url: str, start: int, end: int | None,
               storage_options: Mapping[str, Any] | None = None) -> bytes:
    """Bytes ``[start, end)`` of an object (to its end with ``end=None``): one ranged
    request, whatever the object's size.

    Raises
    ------
    BadInputError
        ``missing``.
    StorageError, TransientError
        As :func:`stat`.
    """
    fs, path = filesystem(url, storage_options)
    with storage_errors(url, action="read", options=storage_options):
        return fs.cat_file(path, start=start, end=end)


#: What a listing said of the size of the object read in this context (:func:`listed_size`).
_LISTED: ContextVar[tuple[str, int] | None] = ContextVar("dagflow_listed_size", default=None)


@contextmanager
def listed_size(url: str, size: int | None) -> Iterator[None]:
    """Reads of ``url`` in this block may take ``size`` (what a listing said of the object)
    as the length of their first request.

    A reader that fetches objects up to some size whole (:func:`dagflow.io.read_image`)
    then fetches a small one by one request, with no request for its size before it.
    Nothing is trusted beyond that: the size, ETag and bytes are the store's answer's
    (an object replaced since it was listed reads as it is now). ``None`` or a negative
    size (unknown) sets nothing.

    Examples
    --------
    >>> with listed_size("s3://bucket/a.jpg", 300_000):
    ...     listed("s3://bucket/a.jpg"), listed("s3://bucket/b.jpg")
    (300000, None)
    """
    if size is None or size < 0:
        yield
        return
    token = _LISTED.set((url, int(size)))
    try:
        yield
    finally:
        _LISTED.reset(token)


def listed(url: str) -> int | None:
    """The size :func:`listed_size` gave for ``url`` in this context, else ``None``."""
    known = _LISTED.get()
    return known[1] if known is not None and known[0] == url else None


def read_first(url: str, nbytes: int, storage_options: Mapping[str, Any] | None = None
               ) -> tuple[bytes, ObjectStat]:
    """The first ``nbytes`` of an object (all of it when it is smaller) and its stat.

    On S3 one ranged ``GET``, whose answer names the object's size (``Content-Range``)
    and ETag; elsewhere, and for what that answer cannot tell (an empty object, a missing
    one, a prefix), a fresh :func:`stat` first, then a ranged read.

    Raises
    ------
    BadInputError
        ``missing``, ``not_a_file``, ``unreadable``.
    StorageError, TransientError
        As :func:`stat`.
    """
    if protocol_of(url) in _SIZED_READS and nbytes > 0:
        fs, path = filesystem(url, storage_options)
        with storage_errors(url, action="read", options=storage_options):
            try:
                found = _s3_first(fs, path, nbytes)
            except OSError as exc:
                if storage_error(exc, url) is not None:
                    raise
                # no such key (or a prefix), or an empty object (no byte 0 to range
                # over): stat says which
                found = None
        if found is not None:
            return found
    st = stat(url, storage_options)
    assert st is not None
    if st.size == 0:
        return b"", st
    return read_range(url, 0, min(nbytes, st.size), storage_options), st


def _s3_first(fs: AbstractFileSystem, path: str, nbytes: int
              ) -> tuple[bytes, ObjectStat] | None:
    """The first ``nbytes`` of an S3 object and its stat from the same answer (``None``
    when the answer does not give the object's size)."""
    from fsspec.asyn import sync

    bucket, key, version = fs.split_path(path)
    extra = {"VersionId": version} if version else {}

    async def get() -> tuple[dict[str, Any], bytes]:
        out = await fs._call_s3("get_object", Bucket=bucket, Key=key,
                                Range=f"bytes=0-{nbytes - 1}", **extra)
        body = out["Body"]
        try:
            return out, await body.read()
        finally:
            body.close()

    out, data = sync(fs.loop, get)
    ranged = out.get("ContentRange")
    total = str(ranged or "").rpartition("/")[2]
    if ranged is None:  # the whole object, unranged
        size = len(data)
    elif total.isdigit():
        size = int(total)
    else:
        return None
    etag = out.get("ETag")
    return data, ObjectStat(size, str(etag).strip('"') if etag else None,
                            _mtime_ns(out.get("LastModified")))


def join(root: str, relative: str) -> str:
    """An output location ``relative`` under ``root``, a URL or a local directory.

    The relative part is cleaned as :func:`dagflow.io.atomic.safe_join` cleans it (no
    ``..``, no absolute path, long names shortened...); under a local root it also must
    not cross a symlink.

    Examples
    --------
    >>> join("s3://bucket/out/", "photos/./a.png")
    's3://bucket/out/photos/a.png'
    >>> join("s3://bucket/out", "../escape.png")
    Traceback (most recent call last):
    ...
    dagflow.exceptions.BadInputError: unsafe_path: '../escape.png' contains a '..' component
    """
    from dagflow.io.atomic import clean_parts, safe_join

    if not is_remote(root):
        return os.fspath(safe_join(as_local(root), relative))
    return "/".join([root.rstrip("/"), *clean_parts(relative)])


class RangedFile(io.RawIOBase):
    """A read-only, seekable file over an object, read by ranged requests.

    The first request fetches ``[0, block_size)`` (all a header probe needs) and is
    kept; a read elsewhere fetches what it asks for, at least ``block_size`` bytes, and
    keeps that block too; :meth:`read_all` fetches what is left in one request. Readers
    (Pillow, tifffile) see an ordinary binary file.

    Parameters
    ----------
    fs, path
        The filesystem and the object's path in it (:func:`filesystem`).
    size
        The object's size (from :func:`stat` or a listing).
    url
        The object's URL, for messages.
    block_size
        Bytes of the first request and least bytes of any other.
    head
        The object's first bytes, fetched already (:func:`read_first`): the first block.
    """

    def __init__(self, fs: AbstractFileSystem, path: str, size: int, url: str, *,
                 block_size: int = DEFAULT_PROBE_BYTES, head: bytes = b"") -> None:
        super().__init__()
        self._fs, self._path, self._size = fs, path, int(size)
        self.name = url
        self._block_size = max(1, int(block_size))
        self._pos = 0
        self._head = bytes(head)  # [0, len(head)): the first block
        self._block_start, self._block = 0, b""  # the last other block
        #: Ranged requests made, and the bytes they returned.
        self.requests = 0
        self.bytes_fetched = 0

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        position = base + offset
        if position < 0:
            raise ValueError(f"negative seek position {position}")
        self._pos = position
        return position

    def _fetch(self, start: int, end: int) -> bytes:
        with storage_errors(self.name, action="read"):
            data = self._fs.cat_file(self._path, start=start, end=end)
        self.requests += 1
        self.bytes_fetched += len(data)
        return data

    def _range(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` from the kept blocks, fetching what they lack."""
        if end <= start:
            return b""
        if not self._head and start < self._block_size:
            self._head = self._fetch(0, min(self._size, max(end, self._block_size)))
        pieces = []
        if start < len(self._head):
            pieces.append(self._head[start:end])
            start = min(end, len(self._head))
        if start < end and self._block:
            block_end = self._block_start + len(self._block)
            if self._block_start <= start < block_end:
                pieces.append(self._block[start - self._block_start:end - self._block_start])
                start = min(end, block_end)
            elif start < self._block_start < end <= block_end:
                # the kept block holds the end (a TIFF's tags after its pixels): fetch
                # only the gap before it
                pieces.append(self._fetch(start, self._block_start))
                pieces.append(self._block[:end - self._block_start])
                start = end
        if start < end:
            self._block_start = start
            self._block = self._fetch(start, min(self._size,
                                                 max(end, start + self._block_size)))
            pieces.append(self._block[:end - start])
        return b"".join(pieces)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self._size, self._pos + len(view))
        data = self._range(self._pos, end)
        view[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        end = min(self._size, self._pos + size)
        data = self._range(self._pos, end)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        data = self._range(self._pos, self._size)
        self._pos += len(data)
        return data

    def read_all(self) -> bytes:
        """The whole object: the first block as kept, the rest in one request."""
        self._pos = 0
        return self.readall()

"""Objects that appear whole or not at all, without a rename.

An object store has no rename: :mod:`dagflow.io.atomic`'s temporary file and
``os.replace`` do not apply. What a store guarantees instead is that an object becomes
visible only when its upload completes, so :func:`put_object`

* uploads an output up to ``dagflow.storage.multipart-threshold`` bytes (64 MiB) with one
  PUT;
* uploads a larger one as a multipart upload of ``dagflow.storage.part-size`` parts
  (S3), completed only once every part is in, and aborted on any failure (an exception,
  an interrupt): no object, no parts left behind;
* on gs://, az:// and memory:// makes one fsspec ``pipe_file`` call, which their libraries
  complete only at the end (a resumable upload, committed blocks); on any other protocol
  writes a temporary name beside the target and renames it into place.

A process killed during a multipart upload leaves no object either, only the upload's
parts, invisible, until :func:`abort_pending_uploads` (run on resume) or the bucket's
lifecycle rule removes them. :func:`put_if_absent`, :func:`put_if_match` and
:func:`delete_if_match` are the conditional requests (``If-None-Match: *``, ``If-Match:
<etag>``) a lock object is made of. :func:`write_output` is the one entry point for an
output that may be local or not.

This module owns writing objects; encoding is :mod:`dagflow.io.write`'s, local files
:mod:`dagflow.io.atomic`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import mimetypes
import os
import secrets
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

from dagflow.exceptions import StorageError
from dagflow.io.errors import storage_errors
from dagflow.io.redact import redact_url
from dagflow.io.storage import ObjectStat, as_local, filesystem, is_remote, protocol_of, stat

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = [
    "PendingUpload",
    "abort_pending_uploads",
    "delete_if_match",
    "pending_uploads",
    "put_if_absent",
    "put_if_match",
    "put_object",
    "write_output",
]

logger = logging.getLogger(__name__)

Content = bytes | bytearray | memoryview | Callable[[BinaryIO], object]

_S3 = frozenset({"s3", "s3a"})
#: Protocols whose ``pipe_file`` makes an object visible only once it is complete.
_WHOLE_PUT = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory"})
#: Most parts of one S3 multipart upload.
_MAX_PARTS = 10_000
#: Parts of one multipart upload in flight at once.
_PART_CONCURRENCY = 4


def _bytes(content: Content) -> bytes:
    if isinstance(content, bytes):
        return content
    if isinstance(content, bytearray | memoryview):
        return bytes(content)
    buffer = io.BytesIO()
    content(buffer)
    return buffer.getvalue()


def _sizes(threshold: int | None, part_size: int | None) -> tuple[int, int]:
    from dagflow import config

    return (int(config.resolve(threshold, "storage.multipart-threshold")),
            int(config.resolve(part_size, "storage.part-size")))


def put_object(url: str, content: Content, *, storage_options: Mapping[str, Any] | None = None,
               multipart_threshold: int | None = None, part_size: int | None = None
               ) -> ObjectStat:
    """Write an object whole or not at all.

    Parameters
    ----------
    url
        The object (``s3://bucket/out/a.png``, any fsspec URL but ``file://``).
    content
        The bytes, or a function given a binary file to write them into (it writes into
        memory; the upload starts once it returns).
    storage_options
        Storage options over ``dagflow.storage.options``.
    multipart_threshold, part_size
        Default ``dagflow.storage.multipart-threshold`` and ``part-size``.

    Returns
    -------
    ObjectStat
        Size and ETag of what was written (S3); elsewhere as the store reports it.

    Raises
    ------
    TransientError
        A throttled or failing store (nothing was written).
    StorageError
        No such bucket; credentials missing or refused; access denied.
    """
    data = _bytes(content)
    threshold, part = _sizes(multipart_threshold, part_size)
    fs, path = filesystem(url, storage_options)
    protocol = protocol_of(url)
    with storage_errors(url, action="write", options=storage_options):
        if protocol in _S3:
            if len(data) > threshold:
                etag = _s3_multipart(fs, path, data, part, url)
            else:
                bucket, key, _ = fs.split_path(path)
                etag = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data,
                                  **_content_type(key))["ETag"]
            fs.invalidate_cache(path)
            logger.debug("put %s (%d bytes)", redact_url(url), len(data))
            return _remember(url, ObjectStat(len(data), etag.strip('"'), None))
        if protocol in _WHOLE_PUT:
            fs.pipe_file(path, data)
        else:
            _put_by_rename(fs, path, data)
    logger.debug("put %s (%d bytes)", redact_url(url), len(data))
    return _remember(url, stat(url, storage_options) or ObjectStat(len(data), None, None))


#: What this process wrote last to each object (:func:`written`), at most this many.
_WRITTEN: dict[str, ObjectStat] = {}
_WRITTEN_MAX = 4096


def _remember(url: str, written: ObjectStat) -> ObjectStat:
    if len(_WRITTEN) >= _WRITTEN_MAX:
        _WRITTEN.clear()
    _WRITTEN[url] = written
    return written


def written(url: str, storage_options: Mapping[str, Any] | None = None) -> ObjectStat | None:
    """Size and ETag of the object at ``url`` as this process wrote it last (no request),
    else as the store has it (one ``HEAD``); ``None`` when there is none.

    What an output's record keeps, so that a resume can tell the object is still the
    one written.
    """
    known = _WRITTEN.pop(url, None)
    if known is not None:
        return known
    return stat(url, storage_options, missing_ok=True)


def _content_type(key: str) -> dict[str, str]:
    """``ContentType`` from the name, so that a browser or a CDN serves the image as one."""
    kind, _ = mimetypes.guess_type(key)
    return {"ContentType": kind} if kind else {}


def _put_by_rename(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """A filesystem without whole-object writes (sftp, ftp...): a temporary name beside
    the target, renamed into place."""
    parent, _, name = path.rpartition("/")
    temporary = f"{parent}/.{name}.{secrets.token_hex(6)}.tmp" if parent else \
        f".{name}.{secrets.token_hex(6)}.tmp"
    try:
        fs.pipe_file(temporary, data)
        fs.mv(temporary, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm_file(temporary)
        raise


def _s3_multipart(fs: AbstractFileSystem, path: str, data: bytes, part_size: int,
                  url: str) -> str:
    """A multipart upload, completed only once every part is in, aborted on failure."""
    from fsspec.asyn import sync

    bucket, key, _ = fs.split_path(path)
    part_size = max(part_size, math.ceil(len(data) / _MAX_PARTS))
    starts = range(0, len(data), part_size)
    upload_id = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key,
                           **_content_type(key))["UploadId"]
    try:
        async def upload_parts() -> list[dict[str, Any]]:
            gate = asyncio.Semaphore(_PART_CONCURRENCY)

            async def one(number: int, start: int) -> dict[str, Any]:
                async with gate:
                    out = await fs._call_s3("upload_part", Bucket=bucket, Key=key,
                                            UploadId=upload_id, PartNumber=number,
                                            Body=data[start:start + part_size])
                return {"PartNumber": number, "ETag": out["ETag"]}

            tasks = [asyncio.ensure_future(one(number, start))
                     for number, start in enumerate(starts, 1)]
            try:
                return await asyncio.gather(*tasks)
            except BaseException:  # no part may land after the upload is aborted
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

        parts = sync(fs.loop, upload_parts)
        done = fs.call_s3("complete_multipart_upload", Bucket=bucket, Key=key,
                          UploadId=upload_id, MultipartUpload={"Parts": parts})
    except BaseException:
        logger.debug("aborting the multipart upload of %s", redact_url(url))
        try:
            fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        except Exception:  # what failed the upload may fail this too: resume cleans up
            logger.warning("could not abort the multipart upload of %s: its parts stay "
                           "until abort_pending_uploads or the bucket's lifecycle rule "
                           "removes them", redact_url(url), exc_info=True)
        raise
    return str(done["ETag"])


def write_output(target: str | os.PathLike[str], content: Content, *,
                 root: str | os.PathLike[str] | None = None,
                 storage_options: Mapping[str, Any] | None = None) -> str:
    """Write an output whole or not at all, on a local disk or a store.

    Parameters
    ----------
    target
        A local path or ``file://`` URL (written by :func:`dagflow.io.atomic.atomic_write`:
        a temporary file renamed into place), or any other URL (:func:`put_object`).
    content
        The bytes, or a function given a binary file to write them into.
    root
        For a local target: as in :func:`~dagflow.io.atomic.atomic_write`.
    storage_options
        For a URL: storage options over ``dagflow.storage.options``.

    Returns
    -------
    str
        ``target``.
    """
    if is_remote(target):
        put_object(os.fspath(target), content, storage_options=storage_options)
        return os.fspath(target)
    from dagflow.io.atomic import atomic_write

    write = content if callable(content) else bytes(content)
    atomic_write(as_local(os.fspath(target)), write, root=root)
    return os.fspath(target)


def _refused(url: str, what: str) -> StorageError:
    return StorageError(redact_url(url), f"{protocol_of(url) or 'file'}:// "
                        f"gives no {what} here (dagflow knows it on s3://, local files and "
                        "memory://)", reason="unsupported")


def put_if_absent(url: str, data: bytes, *,
                  storage_options: Mapping[str, Any] | None = None) -> ObjectStat | None:
    """Create an object only if none exists at ``url`` (``If-None-Match: *``).

    Parameters
    ----------
    url
        ``s3://`` (a conditional PUT), a local path (a hard link of a complete temporary
        file, which fails if the name exists) or ``memory://``.
    data
        The content, written whole.

    Returns
    -------
    ObjectStat or None
        What was written, or ``None`` when an object was already there.

    Raises
    ------
    StorageError
        ``unsupported`` on a store where dagflow knows no conditional write.
    """
    if not is_remote(url):
        return _link_if_absent(as_local(os.fspath(url)), data)
    fs, path = filesystem(url, storage_options)
    protocol = protocol_of(url)
    with storage_errors(url, action="write", options=storage_options):
        try:
            if protocol in _S3:
                bucket, key, _ = fs.split_path(path)
                out = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data,
                                 IfNoneMatch="*")
                fs.invalidate_cache(path)
                return ObjectStat(len(data), out["ETag"].strip('"'), None)
            if protocol == "memory":
                fs.pipe_file(path, data, mode="create")
                return stat(url, storage_options)
        except FileExistsError:
            return None
    raise _refused(url, "conditional write (If-None-Match)")


def _link_if_absent(path: str, data: bytes) -> ObjectStat | None:
    """A complete temporary file (named as :data:`~dagflow.io.atomic.TEMP_PATTERN`
    names them) hard-linked to ``path``: the link fails if ``path`` exists."""
    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    temporary = os.path.join(parent, f".{name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(temporary, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    st = os.stat(path)
    return ObjectStat(st.st_size, None, st.st_mtime_ns)


def put_if_match(url: str, data: bytes, etag: str, *,
                 storage_options: Mapping[str, Any] | None = None) -> ObjectStat | None:
    """Replace an object only if it is still the version ``etag`` (``If-Match``): the
    compare-and-swap a lock's holder refreshes it with, and a stale lock is taken over by.

    Returns
    -------
    ObjectStat or None
        What was written, or ``None`` when the object changed or is gone.

    Raises
    ------
    StorageError
        ``unsupported`` anywhere but ``s3://``.
    """
    if protocol_of(url) not in _S3:
        raise _refused(url, "conditional replace (If-Match)")
    fs, path = filesystem(url, storage_options)
    bucket, key, _ = fs.split_path(path)
    with storage_errors(url, action="write", options=storage_options):
        try:
            out = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data,
                             IfMatch=f'"{etag}"')
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and "NoSuchBucket" not in _codes(exc):
                return None  # the object is gone
            if {"PreconditionFailed", "412"} & _codes(exc):
                return None  # the object changed
            raise
        fs.invalidate_cache(path)
    return ObjectStat(len(data), out["ETag"].strip('"'), None)


def delete_if_match(url: str, etag: str, *,
                    storage_options: Mapping[str, Any] | None = None) -> bool:
    """Delete an object only if it is still the version ``etag`` (``If-Match`` on
    DeleteObject): a lock's holder gives it back without removing a successor's.

    Returns
    -------
    bool
        Whether it was deleted (``False``: it changed, or is gone).

    Raises
    ------
    StorageError
        ``unsupported`` anywhere but ``s3://``.
    """
    if protocol_of(url) not in _S3:
        raise _refused(url, "conditional delete (If-Match)")
    fs, path = filesystem(url, storage_options)
    bucket, key, _ = fs.split_path(path)
    with storage_errors(url, action="write", options=storage_options):
        try:
            fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=f'"{etag}"')
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and "NoSuchBucket" not in _codes(exc):
                return False  # gone already
            if {"PreconditionFailed", "412"} & _codes(exc):
                return False  # changed: no longer this version
            raise
        fs.invalidate_cache(path)
    return True


def _codes(exc: BaseException) -> set[str]:
    """The store's error codes in an exception's chain."""
    codes = set()
    current: BaseException | None = exc
    while current is not None and len(codes) < 16:
        response = getattr(current, "response", None)
        if isinstance(response, Mapping):
            codes.add(str((response.get("Error") or {}).get("Code")))
        current = current.__cause__
    return codes


class PendingUpload(NamedTuple):
    """A multipart upload started and neither completed nor aborted."""

    url: str
    upload_id: str
    initiated: datetime | None


def pending_uploads(prefix: str, *, storage_options: Mapping[str, Any] | None = None
                    ) -> list[PendingUpload]:
    """The unfinished multipart uploads under ``prefix`` (S3; elsewhere none: gs://
    resumable uploads and az:// uncommitted blocks expire on their own).

    Examples
    --------
    >>> pending_uploads("/tmp/out")
    []
    """
    if protocol_of(prefix) not in _S3:
        return []
    fs, path = filesystem(prefix, storage_options)
    bucket, key_prefix, _ = fs.split_path(path)
    found: list[PendingUpload] = []
    markers: dict[str, str] = {}
    with storage_errors(prefix, action="list", options=storage_options):
        while True:
            page = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key_prefix,
                              **markers)
            found.extend(PendingUpload(f"{protocol_of(prefix)}://{bucket}/{u['Key']}",
                                       u["UploadId"], u.get("Initiated"))
                         for u in page.get("Uploads", ()))
            if not page.get("IsTruncated"):
                return found
            markers = {"KeyMarker": page["NextKeyMarker"],
                       "UploadIdMarker": page["NextUploadIdMarker"]}


def abort_pending_uploads(prefix: str, *, storage_options: Mapping[str, Any] | None = None,
                          older_than: datetime | None = None) -> int:
    """Abort the unfinished multipart uploads under ``prefix``: what a process killed in
    the middle of an upload left behind (the counterpart of removing a local run's
    temporary files on resume).

    Parameters
    ----------
    older_than
        Only uploads initiated before this time (leave those of a run still going).

    Returns
    -------
    int
        Uploads aborted.
    """
    aborted = 0
    for upload in pending_uploads(prefix, storage_options=storage_options):
        if older_than is not None and upload.initiated is not None and \
                upload.initiated >= older_than:
            continue
        fs, path = filesystem(upload.url, storage_options)
        bucket, key, _ = fs.split_path(path)
        with storage_errors(upload.url, action="write", options=storage_options):
            try:
                fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key,
                           UploadId=upload.upload_id)
            except FileNotFoundError:  # NoSuchUpload: finished or aborted meanwhile
                continue
        aborted += 1
        logger.info("aborted an unfinished upload of %s", redact_url(upload.url))
    return aborted

"""Storage locations without a server: URLs, options, redaction, error classes, and the
readers and writers on ``memory://`` (fsspec's in-process store) and local files.

What needs a real S3 API is in ``test_storage_s3.py``.
"""

from __future__ import annotations

import errno
import pickle
import secrets
from pathlib import Path

import dask
import numpy as np
import pytest

from dagflow import config
from dagflow.exceptions import (
    BadInputError,
    ConfigError,
    OversizeError,
    StorageError,
    TransientError,
)
from dagflow.image import Image
from dagflow.io import probe_header, read_image, write_image
from dagflow.io.atomic import find_temporaries
from dagflow.io.errors import decoder_errors, storage_error
from dagflow.io.redact import MASK, redact_options, redact_text, redact_url
from dagflow.io.storage import (
    RangedFile,
    as_local,
    filesystem,
    is_remote,
    join,
    list_objects,
    resolve_options,
    stat,
)
from dagflow.io.upload import put_if_absent, put_if_match, put_object, write_output
from dagflow.recovery.breaker import counts_against_breaker
from dagflow.recovery.policy import classify

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


@pytest.fixture
def memory_root():
    """A fresh prefix on fsspec's in-process memory store."""
    root = f"memory://dagflow-{secrets.token_hex(4)}"
    yield root
    fs, path = filesystem(root)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def pixels(height=48, width=64, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (height, width, channels), np.uint8)


# -- redaction -------------------------------------------------------------------------

def test_urls_lose_their_user_part_and_signatures():
    assert redact_url(f"s3://AKIA:{SECRET}@bucket/a.jpg") == f"s3://{MASK}@bucket/a.jpg"
    signed = redact_url(f"https://h/a.jpg?X-Amz-Credential=AKIA%2F1&X-Amz-Signature={SECRET}"
                        "&versionId=3")
    assert SECRET not in signed and "AKIA" not in signed and "versionId=3" in signed
    assert redact_url(f"https://acct.blob.core.windows.net/c/a.jpg?sv=1&sig={SECRET}") \
        == f"https://acct.blob.core.windows.net/c/a.jpg?sv=1&sig={MASK}"
    assert redact_url("/data/photos/a@2x.jpg") == "/data/photos/a@2x.jpg"
    assert redact_url("s3://bucket/a@2x.jpg") == "s3://bucket/a@2x.jpg"


def test_options_and_text_lose_every_secret_value():
    options = {"key": "AKIAEXAMPLE", "secret": SECRET, "anon": False, "profile": "batch",
               "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000",
                                 "aws_session_token": "FQoGZXIvYXdzEXAMPLE"},
               "account_key": "azurekey123", "connection_string": "AccountKey=azurekey123"}
    shown = redact_options(options)
    assert shown["profile"] == "batch" and shown["anon"] is False
    assert shown["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:9000"
    text = repr(shown)
    for value in ("AKIAEXAMPLE", SECRET, "FQoGZXIvYXdzEXAMPLE", "azurekey123"):
        assert value not in text
    message = f"refused key AKIAEXAMPLE secret {SECRET} at s3://u:p@b/k"
    cleaned = redact_text(message, options)
    assert "AKIAEXAMPLE" not in cleaned and SECRET not in cleaned and "u:p@" not in cleaned


def test_a_url_with_credentials_is_refused_everywhere_without_repeating_them(tmp_path):
    url = f"s3://AKIAEXAMPLE:{SECRET}@bucket/a.jpg"
    calls = [lambda: filesystem(url), lambda: stat(url), lambda: probe_header(url),
             lambda: read_image(url), lambda: write_image(pixels(), url),
             lambda: list_objects(url)]
    for call in calls:
        with pytest.raises(StorageError) as caught:
            call()
        assert caught.value.reason == "credentials_in_url"
        assert SECRET not in str(caught.value) and "AKIAEXAMPLE" not in str(caught.value)
        assert "\n" not in str(caught.value)


# -- locations and options -------------------------------------------------------------

def test_locations():
    assert is_remote("s3://b/k") and is_remote("memory://x") and is_remote("gs://b/k")
    assert not is_remote("/data/a.jpg") and not is_remote("file:///data/a.jpg")
    assert as_local("file:///data/a.jpg") == "/data/a.jpg"
    assert join("s3://b/out", "photos/a.png") == "s3://b/out/photos/a.png"
    assert join("s3://b/out/", "x\\y.png") == "s3://b/out/x/y.png"
    with pytest.raises(BadInputError, match="unsafe_path"):
        join("s3://b/out", "/etc/passwd")


def test_options_come_from_the_configuration_by_protocol_and_explicit_ones_win():
    with dask.config.set({"dagflow.storage.options": {
            "memory": {"skip-instance-cache": False}, "s3": {"endpoint-url": "http://x:1"}}}):
        assert resolve_options("s3") == {"endpoint_url": "http://x:1"}
        assert resolve_options("s3", {"endpoint_url": "http://y:2", "anon": True}) == \
            {"endpoint_url": "http://y:2", "anon": True}
        assert resolve_options("memory") == {"skip_instance_cache": False}
        assert resolve_options("gs") == {}


def test_one_filesystem_per_protocol_and_options_in_a_process(memory_root):
    first, path = filesystem(f"{memory_root}/a.jpg")
    assert path.endswith("/a.jpg")
    for index in range(50):
        assert filesystem(f"{memory_root}/{index}.jpg")[0] is first
    assert pickle.loads(pickle.dumps(first)) is first  # looked up again, not rebuilt


def test_missing_or_unknown_protocols_say_what_to_install():
    with pytest.raises(StorageError, match="unknown protocol 'nosuch'") as caught:
        stat("nosuch://bucket/a.jpg")
    assert caught.value.reason == "protocol"
    pytest.importorskip("fsspec")
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(StorageError, match="gs:// needs gcsfs"):
            read_image("gs://bucket/a.jpg")


def test_the_schema_bounds_the_storage_keys():
    config.validate_config({"dagflow": {"storage": {"options": {"s3": {"anon": True}},
                                                    "part-size": 8 << 20}}})
    with pytest.raises(ConfigError, match="part-size"):
        config.validate_config({"dagflow": {"storage": {"part-size": 1 << 20}}})
    with pytest.raises(ConfigError, match="options"):
        config.validate_config({"dagflow": {"storage": {"options": {"s3": "not a mapping"}}}})


# -- error classes ---------------------------------------------------------------------

def client_error(code: str, status: int, message: str = "from the store"):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def wrapped(inner: BaseException, outer: OSError) -> OSError:
    """What s3fs raises: an ``OSError`` made from the client's error."""
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize(("make", "expected", "reason"), [
    (lambda: wrapped(client_error("SlowDown", 503), OSError(errno.EBUSY, "Slow down")),
     TransientError, None),
    (lambda: client_error("ServiceUnavailable", 503), TransientError, None),
    (lambda: wrapped(client_error("InternalError", 500), OSError(121, "internal")),
     TransientError, None),
    (lambda: client_error("Throttling", 400), TransientError, None),
    (lambda: client_error("999", 429), TransientError, None),
    (lambda: wrapped(client_error("NoSuchBucket", 404),
                     FileNotFoundError("The specified bucket does not exist")),
     StorageError, "no_bucket"),
    (lambda: client_error("InvalidAccessKeyId", 403), StorageError, "credentials"),
    (lambda: client_error("SignatureDoesNotMatch", 403), StorageError, "credentials"),
    (lambda: client_error("ExpiredToken", 400), StorageError, "credentials"),
    (lambda: client_error("AccessDenied", 403), BadInputError, "unreadable"),
], ids=["slowdown", "unavailable", "internal", "throttling", "429", "no-bucket",
        "bad-key", "bad-signature", "expired", "denied"])
def test_store_failures_become_dagflow_classes(make, expected, reason):
    pytest.importorskip("botocore")
    error = storage_error(make(), "s3://bucket/a.jpg")
    assert type(error) is expected
    if reason is not None:
        assert error.reason == reason
    assert "\n" not in str(error) and "s3://bucket/a.jpg" in str(error)
    assert classify(error) == {TransientError: "transient", BadInputError: "bad_input",
                               StorageError: "bug"}[expected]
    assert counts_against_breaker(classify(error)) is (expected is not BadInputError)


def test_connection_failures_and_missing_credentials():
    pytest.importorskip("botocore")
    from botocore.exceptions import (
        ConnectionClosedError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    timeout = storage_error(ReadTimeoutError(endpoint_url="http://h"), "s3://b/k")
    assert isinstance(timeout, TransientError) and timeout.errno == errno.ETIMEDOUT
    for failure in (EndpointConnectionError(endpoint_url="http://h"),
                    ConnectionClosedError(endpoint_url="http://h"),
                    ConnectionResetError(errno.ECONNRESET, "reset by peer")):
        assert isinstance(storage_error(failure, "s3://b/k"), TransientError)
    missing = storage_error(NoCredentialsError(), "s3://b/k")
    assert isinstance(missing, StorageError) and missing.reason == "credentials"
    denied = storage_error(client_error("AccessDenied", 403), "s3://b/k", action="write")
    assert isinstance(denied, StorageError) and denied.reason == "access_denied"
    assert storage_error(ValueError("bad huffman table"), "s3://b/k") is None


def test_messages_from_the_store_lose_the_secrets_of_the_options():
    pytest.importorskip("botocore")
    error = storage_error(client_error("InvalidToken", 400, f"token {SECRET} is invalid"),
                          "s3://b/k", options={"secret": SECRET})
    assert isinstance(error, StorageError) and SECRET not in str(error)


def test_a_storage_timeout_under_a_decoder_is_transient_not_corrupt():
    pytest.importorskip("botocore")
    from botocore.exceptions import ConnectionClosedError, ReadTimeoutError

    # a ranged read inside tifffile or Pillow: an OSError (requests' family) or not
    for failure in (ReadTimeoutError(endpoint_url="http://h"),
                    ConnectionClosedError(endpoint_url="http://h")):
        with pytest.raises(TransientError), decoder_errors("s3://b/a.tif"):
            raise failure
    with pytest.raises(BadInputError, match="corrupt"), decoder_errors("s3://b/a.tif"):
        raise ValueError("not a TIFF tag")


# -- memory:// and local files ---------------------------------------------------------

def test_an_image_round_trips_through_memory_urls(memory_root):
    url = write_image(Image(pixels()), f"{memory_root}/out/a.png")
    assert read_image(url).data.tolist() == pixels().tolist()
    header = probe_header(url)
    assert (header["width"], header["height"], header["format"]) == (64, 48, "png")
    assert header["path"] == url
    st = stat(url)
    assert st is not None and st.size == header["size_bytes"]
    with pytest.raises(BadInputError, match="missing"):
        read_image(f"{memory_root}/out/nothing.png")
    assert stat(f"{memory_root}/out/nothing.png", missing_ok=True) is None


def test_the_header_is_checked_before_the_body_is_fetched(memory_root):
    big = pixels(600, 900, seed=1)
    url = write_image(Image(big), f"{memory_root}/big.png", compression=0)
    fs, path = filesystem(url)
    size = fs.size(path)
    assert size > 1_000_000
    with RangedFile(fs, path, size, url, block_size=4096) as fp:
        fp.read(16)
        fp.seek(0)
        assert fp.requests == 1 and fp.bytes_fetched == 4096
        assert fp.read_all()[:8] == b"\x89PNG\r\n\x1a\n"
        assert fp.requests == 2 and fp.bytes_fetched == size  # the rest in one request
    with pytest.raises(OversizeError):
        read_image(url, max_pixels=1000)


def test_listing_a_prefix_recursively_or_by_glob(memory_root):
    for rel in ("a.jpg", "sub/b.jpg", "sub/deeper/c.png", "notes.txt"):
        write_output(f"{memory_root}/in/{rel}", rel.encode())
    found = list_objects(f"{memory_root}/in")
    assert [u.rsplit("/in/", 1)[1] for u, _ in found] == \
        ["a.jpg", "notes.txt", "sub/b.jpg", "sub/deeper/c.png"]
    assert all(st.size == len(u.rsplit("/in/", 1)[1]) for u, st in found)
    assert [u.rsplit("/", 1)[1] for u, _ in list_objects(f"{memory_root}/in/**/*.jpg")] == \
        ["a.jpg", "b.jpg"]
    assert [u.rsplit("/", 1)[1] for u, _ in list_objects(f"{memory_root}/in",
                                                          recursive=False)] == \
        ["a.jpg", "notes.txt"]
    assert list_objects(f"{memory_root}/nothing-here") == []


def test_conditional_creation_on_memory_and_local_files(memory_root, tmp_path):
    for target in (f"{memory_root}/lock", str(tmp_path / "state" / "lock")):
        made = put_if_absent(target, b"first")
        assert made is not None and made.size == 5
        assert put_if_absent(target, b"second") is None
        fs, path = filesystem(target) if is_remote(target) else (None, target)
        assert (fs.cat_file(path) if fs else Path(path).read_bytes()) == b"first"
    assert find_temporaries(tmp_path) == []
    with pytest.raises(StorageError, match="If-Match") as caught:
        put_if_match(f"{memory_root}/lock", b"x", "etag")
    assert caught.value.reason == "unsupported"


def test_a_failed_write_leaves_nothing_locally_or_on_a_store(tmp_path, memory_root):
    local = write_output(tmp_path / "out" / "a.bin", lambda fh: fh.write(b"abc"))
    assert Path(local).read_bytes() == b"abc"

    def failing(fh):
        fh.write(b"half")
        raise RuntimeError("encoder failed")

    for target in (tmp_path / "out" / "b.bin", f"{memory_root}/b.bin"):
        with pytest.raises(RuntimeError, match="encoder failed"):
            write_output(target, failing)
    assert not (tmp_path / "out" / "b.bin").exists() and find_temporaries(tmp_path) == []
    assert stat(f"{memory_root}/b.bin", missing_ok=True) is None
    assert put_object(f"{memory_root}/c.bin", b"abc").size == 3

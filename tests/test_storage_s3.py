"""Reading and writing images on a real S3 API: moto's server on 127.0.0.1, behind a
proxy that records every request and fails chosen ones (``_s3.py``).

What crosses the wire is asserted from the proxy's log: header probes read the first
kilobytes only, oversize images are refused before their body is fetched, a crop of a
tiled TIFF fetches its tiles and no others, outputs appear whole or not at all.
"""

from __future__ import annotations

import io
import logging
import pickle
import subprocess
import sys
import textwrap
import traceback

import dask
import numpy as np
import pytest
import tifffile
from _s3 import KEY, SECRET, s3_fixture, s3_server_fixture  # noqa: F401 - fixtures
from PIL import Image as PILImage

from dagflow.exceptions import BadInputError, OversizeError, StorageError, TransientError
from dagflow.image import Image
from dagflow.io import open_image, probe_header, read_image, write_image
from dagflow.io.storage import filesystem, list_objects, listed_size, stat
from dagflow.io.upload import (
    abort_pending_uploads,
    delete_if_match,
    pending_uploads,
    put_if_absent,
    put_if_match,
)
from dagflow.recovery.policy import RetryPolicy, call_with_policy

PROBE_BYTES = 64 * 1024
#: The S3 client retries nothing itself: each failure reaches dagflow at once.
NO_CLIENT_RETRIES = {"config_kwargs": {"retries": {"mode": "standard", "total_max_attempts": 1}}}


def photo(width: int, height: int, *, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) % 256], axis=-1)
    return np.clip(base + rng.integers(0, 60, (height, width, 3)), 0, 255).astype(np.uint8)


def encoded(pixels: np.ndarray, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    if fmt == "tiff":
        tifffile.imwrite(buffer, pixels, **kwargs)
    else:
        PILImage.fromarray(pixels).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def no_client_retries(s3, **config) -> dict:
    """Options whose S3 client tries each request once: a failure reaches dagflow at once.

    botocore's retries are configured off; s3fs's own (5 tries, an attribute of the
    filesystem, not an option) are set to 1 on the instance these options resolve to,
    which every later call with them gets back from fsspec's cache.
    """
    options = {**s3.options, "config_kwargs": {**NO_CLIENT_RETRIES["config_kwargs"], **config}}
    filesystem(s3.url(), options)[0].retries = 1
    return options


FORMATS = {
    "jpeg": ("a.jpg", lambda: encoded(photo(1600, 1200), "JPEG", quality=95)),
    "png": ("a.png", lambda: encoded(photo(900, 700), "PNG")),
    "webp": ("a.webp", lambda: encoded(photo(500, 400), "WEBP", lossless=True, method=0)),
    "gif": ("a.gif", lambda: encoded(photo(900, 700), "GIF")),
    "bmp": ("a.bmp", lambda: encoded(photo(600, 500), "BMP")),
    "tiff": ("a.tif", lambda: encoded(photo(900, 700), "tiff", photometric="rgb")),
    # libtiff (through Pillow) writes its tags after the pixels, at the end of the file
    "tiff-tags-last": ("b.tif", lambda: encoded(photo(900, 700), "TIFF",
                                                compression="tiff_lzw")),
}


@pytest.mark.parametrize("fmt", sorted(set(FORMATS) - {"gif"}))
def test_a_header_is_probed_from_the_first_kilobytes(s3, tmp_path, fmt):
    """(A GIF is left out: its frames are counted by walking all its blocks, on a local
    file as on a store.)"""
    name, make = FORMATS[fmt]
    data = make()
    assert len(data) > 4 * PROBE_BYTES
    (tmp_path / name).write_bytes(data)
    url = s3.put(f"in/{name}", data)
    header = probe_header(url, storage_options=s3.options)
    local = probe_header(tmp_path / name)
    assert {**header, "path": None} == {**local, "path": None}
    reads = s3.proxy.reads(f"in/{name}")
    fetched = sum(r.sent for r in reads)
    assert reads[0].range == (0, PROBE_BYTES - 1)
    if fmt == "tiff-tags-last":  # one more ranged read, where the tags are
        assert len(reads) == 2 and fetched <= 2 * PROBE_BYTES
    else:
        assert len(reads) == 1 and fetched == PROBE_BYTES
    # no HEAD first: the first ranged GET's answer gives the object's size
    assert [r.method for r in s3.proxy.requests] == ["GET"] * len(reads)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "tiff", "tiff-tags-last", "webp"])
def test_an_object_reads_as_its_file_does_each_byte_fetched_once(s3, tmp_path, fmt):
    """With whole reads off: the header's block, then the rest in one request."""
    name, make = FORMATS[fmt]
    data = make()
    (tmp_path / name).write_bytes(data)
    url = s3.put(f"in/{name}", data)
    with dask.config.set({"dagflow.storage.whole-read-bytes": 0}):
        image = read_image(url, storage_options=s3.options, reduce_to=400)
    local = read_image(tmp_path / name, reduce_to=400)
    np.testing.assert_array_equal(image.data, local.data)
    assert {**image.meta, "path": None} == {**local.meta, "path": None}
    reads = s3.proxy.reads(f"in/{name}")
    assert sum(r.sent for r in reads) == len(data)  # every byte fetched once
    if fmt == "tiff-tags-last":  # its tags at the end were read first: only the gap now
        assert len(reads) == 3 and reads[2].range[0] == PROBE_BYTES
    else:
        assert len(reads) == 2 and reads[1].range == (PROBE_BYTES, len(data) - 1)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "tiff", "tiff-tags-last", "webp"])
def test_a_small_object_read_whole_is_fetched_by_one_request(s3, tmp_path, fmt):
    """Up to ``whole-read-bytes`` as listed, read_image fetches the object with one GET
    and nothing before it (not a HEAD, not its header's block, then the rest), and
    decodes the same pixels; one byte larger, or of a size nobody listed, the header's
    block comes first."""
    name, make = FORMATS[fmt]
    data = make()
    assert len(data) > 4 * PROBE_BYTES
    (tmp_path / name).write_bytes(data)
    url = s3.put(f"in/{name}", data)
    local = read_image(tmp_path / name, reduce_to=400)
    with dask.config.set({"dagflow.storage.whole-read-bytes": len(data)}), \
            listed_size(url, len(data)):
        image = read_image(url, storage_options=s3.options, reduce_to=400)
    np.testing.assert_array_equal(image.data, local.data)
    assert {**image.meta, "path": None} == {**local.meta, "path": None}
    assert [(r.method, r.range) for r in s3.proxy.requests] == [("GET", (0, len(data) - 1))]
    assert s3.proxy.reads(f"in/{name}")[0].sent == len(data)
    for whole, listed in ((len(data) - 1, len(data)), (len(data), None)):
        s3.proxy.clear()
        with dask.config.set({"dagflow.storage.whole-read-bytes": whole}), \
                listed_size(url, listed):
            read_image(url, storage_options=s3.options, reduce_to=400)
        reads = s3.proxy.reads(f"in/{name}")
        assert reads[0].range == (0, PROBE_BYTES - 1)
        assert [r.method for r in s3.proxy.requests] == ["GET"] * len(reads)
        assert sum(r.sent for r in reads) == len(data)


def test_an_object_replaced_since_it_was_listed_reads_as_it_is_now(s3):
    """The listed size only sets the first request's length: an object that grew since
    reads whole all the same (the answer names its size), one that shrank reads as it is."""
    small = encoded(photo(200, 150), "PNG")
    large = encoded(photo(600, 450), "PNG")
    assert PROBE_BYTES < len(small) < len(large) <= 2**20  # both read whole as listed
    url = s3.put("in/changing.png", large)
    with listed_size(url, len(small)):
        grown = read_image(url, storage_options=s3.options)
    assert grown.data.shape == (450, 600, 3)
    assert [r.range for r in s3.proxy.reads("in/changing.png")] == \
        [(0, len(small) - 1), (len(small), len(large) - 1)]
    s3.proxy.clear()
    url = s3.put("in/changing.png", small)
    with listed_size(url, len(large)):
        shrunk = read_image(url, storage_options=s3.options)
    assert shrunk.data.shape == (150, 200, 3)
    assert len(s3.proxy.requests) == 1


def test_a_small_oversize_object_is_refused_before_it_is_decoded(s3, monkeypatch):
    """Fetched whole (small, as listed), its header is still checked first: the decoder
    never runs."""
    import dagflow.io.read as reader

    data = encoded(photo(1200, 900), "JPEG", quality=80)
    assert len(data) <= 2**20
    url = s3.put("in/small-but-wide.jpg", data)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(reader, "_read_jpeg", no_decoding)
    monkeypatch.setattr(reader, "_read_pillow", no_decoding)
    with pytest.raises(OversizeError, match="1,080,000 pixels"), listed_size(url, len(data)):
        read_image(url, storage_options=s3.options, max_pixels=1_000_000)
    assert [r.range for r in s3.proxy.reads("in/small-but-wide.jpg")] == \
        [(0, len(data) - 1)]


def test_an_oversize_image_is_refused_before_its_body_is_fetched(s3):
    data = encoded(photo(2000, 1500), "JPEG", quality=95)
    assert len(data) > 2**20  # above whole-read-bytes: its header first
    url = s3.put("in/big.jpg", data)
    with pytest.raises(OversizeError, match="3,000,000 pixels"):
        read_image(url, storage_options=s3.options, max_pixels=1_000_000)
    reads = s3.proxy.reads("in/big.jpg")
    assert [r.range for r in reads] == [(0, PROBE_BYTES - 1)]
    assert sum(r.sent for r in reads) == PROBE_BYTES < len(data) // 10


def tiled_tiff(height=2048, width=2048, tile=256) -> tuple[bytes, np.ndarray]:
    pixels = np.random.default_rng(3).integers(0, 255, (height, width), np.uint8)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels, tile=(tile, tile), photometric="minisblack")
    return buffer.getvalue(), pixels


def test_a_crop_of_a_tiled_tiff_fetches_only_its_tiles(s3):
    data, pixels = tiled_tiff()
    url = s3.put("slides/big.tif", data)
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages.first
        offsets, counts = page.dataoffsets, page.databytecounts
    image = open_image(url, chunks=256, storage_options=s3.options)
    s3.proxy.clear()
    crop = image[600:900, 700:1000].compute(scheduler="threads")
    np.testing.assert_array_equal(crop.values[..., 0], pixels[600:900, 700:1000])
    wanted = {(offsets[r * 8 + c], offsets[r * 8 + c] + counts[r * 8 + c] - 1)
              for r in (2, 3) for c in (2, 3)}  # rows and columns 512..1023 of 256-tiles
    reads = s3.proxy.reads("slides/big.tif")
    tile_reads = [r.range for r in reads if r.range[0] != 0]
    header_reads = [r for r in reads if r.range[0] == 0]
    assert sorted(tile_reads) == sorted(wanted)
    assert all(r.sent <= PROBE_BYTES for r in header_reads)
    assert sum(r.sent for r in reads) < len(data) // 8


def test_a_lazy_object_is_checked_for_changes_and_pickles_without_showing_options(s3):
    from dagflow.io.lazy import _inspect

    data, pixels = tiled_tiff(512, 512, 128)
    url = s3.put("slides/small.tif", data)
    reader, meta = _inspect(url, s3.options)  # what every block task of open_image holds
    assert SECRET not in repr(reader) and KEY not in repr(reader)
    assert meta["tile"] == [128, 128] and meta["path"] == url
    copy = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(copy[0:100, 0:100][..., 0], pixels[:100, :100])
    s3.put("slides/small.tif", tiled_tiff(512, 512, 64)[0])  # replaced meanwhile
    with pytest.raises(BadInputError, match="changed"):
        copy.read(0, 10, 0, 10)


# -- writing ---------------------------------------------------------------------------

def test_a_small_output_is_one_put(s3):
    url = write_image(Image(photo(320, 240)), s3.url("out/a.png"), storage_options=s3.options)
    assert [(r.method, r.key) for r in s3.proxy.requests] == [("PUT", "out/a.png")]
    assert s3.keys() == ["out/a.png"]
    head = s3.server.client().head_object(Bucket=s3.bucket, Key="out/a.png")
    assert head["ContentType"] == "image/png"
    np.testing.assert_array_equal(read_image(url, storage_options=s3.options).data,
                                  photo(320, 240))


MiB = 1 << 20
MULTIPART = {"dagflow.storage.multipart-threshold": 5 * MiB, "dagflow.storage.part-size": 5 * MiB}


def is_part(number: int):
    return lambda r: r.method == "PUT" and f"partNumber={number}&" in f"{r.query}&"


def test_a_large_output_is_a_multipart_upload_completed_at_the_end(s3):
    pixels = np.random.default_rng(5).integers(0, 255, (2048, 2048, 3), np.uint8)  # 12 MiB
    with dask.config.set(MULTIPART):
        url = write_image(Image(pixels), s3.url("out/big.tif"), storage_options=s3.options)
    methods = [(r.method, r.query.split("=")[0]) for r in s3.proxy.requests]
    assert methods[0] == ("POST", "uploads") and methods[-1] == ("POST", "uploadId")
    assert sum(1 for r in s3.proxy.requests if "partNumber=" in r.query) == 3
    assert s3.keys() == ["out/big.tif"] and s3.uploads() == []
    np.testing.assert_array_equal(read_image(url, storage_options=s3.options).data, pixels)


@pytest.mark.parametrize(("code", "status", "error"), [
    ("ServiceUnavailable", 503, TransientError), ("AccessDenied", 403, StorageError)])
def test_a_failed_part_aborts_the_upload_and_leaves_nothing(s3, code, status, error):
    s3.put("out/big.tif", b"the previous version")
    pixels = np.random.default_rng(6).integers(0, 255, (2048, 2048, 3), np.uint8)
    s3.proxy.fail(1, status=status, code=code, match=is_part(2))
    with dask.config.set(MULTIPART), pytest.raises(error):
        write_image(Image(pixels), s3.url("out/big.tif"), storage_options=no_client_retries(s3))
    assert [r.failed for r in s3.proxy.requests if r.failed] == [code]
    assert any(r.method == "DELETE" and "uploadId=" in r.query for r in s3.proxy.requests)
    assert s3.keys() == ["out/big.tif"] and s3.get("out/big.tif") == b"the previous version"
    assert s3.uploads() == []


CRASHING_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from dagflow.io.upload import put_object

    data = np.random.default_rng(7).integers(0, 255, 12 << 20, np.uint8).tobytes()
    options = {"client_kwargs": {"endpoint_url": sys.argv[2], "region_name": "us-east-1"}}
    put_object(sys.argv[1], data, storage_options=options, multipart_threshold=5 << 20,
               part_size=5 << 20)
    print("completed")
""")


def test_a_writer_killed_mid_upload_leaves_no_object_and_resume_aborts_its_parts(s3):
    held = s3.proxy.hang(1, match=is_part(2))
    writer = subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, s3.url("out/big.bin"),
                               s3.proxy.endpoint], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert held.reached.wait(60), writer.communicate(timeout=5)
        writer.kill()  # the crash: while part 2 is in flight
        writer.wait(30)
    finally:
        held.release.set()
        if writer.poll() is None:
            writer.kill()
    assert "completed" not in writer.stdout.read()
    assert s3.keys() == [] and s3.uploads() == ["out/big.bin"]
    pending = pending_uploads(s3.url("out/"), storage_options=s3.options)
    assert [p.url for p in pending] == [s3.url("out/big.bin")]
    assert abort_pending_uploads(s3.url("out/"), storage_options=s3.options) == 1
    assert s3.uploads() == [] and s3.keys() == []


def test_a_push_of_the_run_state_uploads_what_changed_and_again_what_failed(s3):
    """A push uploads the changed files of the local copy of a run's state, each whole
    and once; one that failed is uploaded by the next push, and only it."""
    from dagflow.io.stage import StagedState

    stage = StagedState(s3.url("out"), storage_options=no_client_retries(s3),
                        push_interval=0)
    try:
        run = stage.local_state / "runs" / "r1"
        run.mkdir(parents=True)
        for i in range(6):
            (run / f"part-{i}.parquet").write_bytes(bytes([i]) * 100)
        s3.proxy.fail(1, match=lambda r: r.method == "PUT" and r.key.endswith("part-2.parquet"))
        with pytest.raises(TransientError):
            stage.push()
        stored = s3.keys()
        assert stored == [f"out/_dagflow/runs/r1/part-{i}.parquet" for i in (0, 1, 3, 4, 5)]
        assert sorted(r.key for r in s3.proxy.requests) == \
            [f"out/_dagflow/runs/r1/part-{i}.parquet" for i in range(6)]
        s3.proxy.clear()
        assert stage.push() == 1
        assert [(r.method, r.key) for r in s3.proxy.requests] == \
            [("PUT", "out/_dagflow/runs/r1/part-2.parquet")]
        assert s3.get("out/_dagflow/runs/r1/part-2.parquet") == bytes([2]) * 100
        assert stage.push() == 0
    finally:
        stage.close(push=False)


def test_conditional_writes_make_a_lock_object(s3):
    url = s3.url("out/_dagflow/lock")
    first = put_if_absent(url, b'{"run": 1}', storage_options=s3.options)
    assert first is not None and first.etag
    assert put_if_absent(url, b'{"run": 2}', storage_options=s3.options) is None
    put = [r for r in s3.proxy.requests if r.method == "PUT"]
    assert [r.status for r in put] == [200, 412]  # the server refused the second
    assert s3.get("out/_dagflow/lock") == b'{"run": 1}'
    refreshed = put_if_match(url, b'{"run": 1, "beat": 2}', first.etag,
                             storage_options=s3.options)
    assert refreshed is not None and refreshed.etag != first.etag
    assert put_if_match(url, b'{"run": 3}', first.etag, storage_options=s3.options) is None
    assert s3.get("out/_dagflow/lock") == b'{"run": 1, "beat": 2}'
    assert put_if_match(s3.url("out/none"), b"x", "0" * 32, storage_options=s3.options) is None
    # given back only by its holder: not with a stale version, then with its own
    assert not delete_if_match(url, first.etag, storage_options=s3.options)
    assert s3.keys() == ["out/_dagflow/lock"]
    assert delete_if_match(url, refreshed.etag, storage_options=s3.options)
    assert s3.keys() == []
    assert not delete_if_match(url, refreshed.etag, storage_options=s3.options)


# -- listing ---------------------------------------------------------------------------

def test_listing_gives_every_object_with_its_stat_from_the_listing_alone(s3):
    for rel in ("a.jpg", "sub/b.JPG", "sub/deeper/c.png", "notes.txt"):
        s3.put(f"photos/{rel}", rel.encode() * 3)
    found = list_objects(s3.url("photos/"), storage_options=s3.options)
    assert [u for u, _ in found] == [s3.url(f"photos/{r}") for r in
                                     ("a.jpg", "notes.txt", "sub/b.JPG", "sub/deeper/c.png")]
    assert all(r.method == "GET" and "list-type=2" in r.query for r in s3.proxy.requests)
    for url, listed in found:
        fresh = stat(url, storage_options=s3.options)
        assert (listed.size, listed.etag) == (fresh.size, fresh.etag)
        assert listed.token == fresh.etag and len(fresh.etag) == 32
    globbed = list_objects(s3.url("photos/**/*.png"), storage_options=s3.options)
    assert [u for u, _ in globbed] == [s3.url("photos/sub/deeper/c.png")]
    # written after the listing, which s3fs keeps: a stat is fresh from the store anyway
    later = s3.put("photos/sub/later.jpg", b"12345")
    assert stat(later, storage_options=s3.options).size == 5


# -- faults ----------------------------------------------------------------------------

def test_a_throttled_store_is_retried_with_backoff_and_succeeds(s3):
    url = s3.put("in/a.jpg", encoded(photo(400, 300), "JPEG"))
    # the S3 client's own retries first: a SlowDown costs a retry inside the call
    s3.proxy.fail(1, code="SlowDown")
    assert read_image(url, storage_options=s3.options).data.shape == (300, 400, 3)
    assert [r.failed for r in s3.proxy.requests[:2]] == ["SlowDown", ""]
    # what still fails reaches the node's retry policy as a transient error
    s3.proxy.clear()
    s3.proxy.fail(2, code="SlowDown")
    options = no_client_retries(s3)
    outcome = call_with_policy(lambda: read_image(url, storage_options=options),
                               RetryPolicy(attempts=3, delay=0.01), sleep=lambda _: None)
    assert outcome.error is None and outcome.attempts == 3
    assert outcome.value.data.shape == (300, 400, 3)
    # the third try's first request is the ranged GET of the header's block
    assert [r.status for r in s3.proxy.requests[:3]] == [503, 503, 206]
    s3.proxy.fail(5, code="ServiceUnavailable")
    outcome = call_with_policy(lambda: read_image(url, storage_options=options),
                               RetryPolicy(attempts=3, delay=0.01), sleep=lambda _: None)
    assert isinstance(outcome.error, TransientError) and outcome.error_class == "transient"
    assert outcome.attempts == 3


def test_resets_and_timeouts_are_transient(s3):
    url = s3.put("in/a.jpg", encoded(photo(400, 300), "JPEG"))
    options = no_client_retries(s3, read_timeout=0.3)
    # aiohttp tries a GET again once when a kept-alive connection closes under it
    s3.proxy.reset(2, match=lambda r: r.method == "GET")
    with pytest.raises(TransientError) as reset:
        read_image(url, storage_options=options)
    assert "ConnectionClosedError" in str(reset.value)
    held = s3.proxy.hang(1, match=lambda r: r.method == "GET")
    with pytest.raises(TransientError) as timed_out:
        probe_header(url, storage_options=options)
    held.release.set()
    assert "ReadTimeoutError" in str(timed_out.value)
    assert [r.failed for r in s3.proxy.requests if r.failed] == ["reset", "reset", "hang"]
    for caught in (reset, timed_out):
        assert "\n" not in str(caught.value) and url in str(caught.value)


def test_a_missing_bucket_or_object_fails_in_one_line(s3):
    for call in (lambda: stat("s3://no-such-bucket-x/a.jpg", storage_options=s3.options),
                 lambda: read_image("s3://no-such-bucket-x/a.jpg", storage_options=s3.options),
                 lambda: list_objects("s3://no-such-bucket-x/in/", storage_options=s3.options),
                 lambda: write_image(Image(photo(8, 8)), "s3://no-such-bucket-x/a.png",
                                     storage_options=s3.options)):
        with pytest.raises(StorageError) as caught:
            call()
        assert caught.value.reason == "no_bucket"
        assert str(caught.value).startswith("s3://no-such-bucket-x/")
        assert "\n" not in str(caught.value) and "NoSuchBucket" in str(caught.value)
    with pytest.raises(BadInputError, match="missing"):
        read_image(s3.url("nothing.jpg"), storage_options=s3.options)
    assert stat(s3.url("nothing.jpg"), storage_options=s3.options, missing_ok=True) is None
    assert list_objects(s3.url("empty-prefix/"), storage_options=s3.options) == []


def test_refused_credentials_fail_in_one_line_and_never_show(s3, caplog):
    """Every failure above, with the credentials given in the options: the secret is in
    no message, no traceback and no log record (the key id only in botocore's and moto's
    own debug logs, never in dagflow's)."""
    url = s3.put("in/a.jpg", encoded(photo(64, 48), "JPEG"))
    caplog.set_level(logging.DEBUG)
    shown = []
    options = s3.options
    failures = [
        lambda: read_image("s3://no-such-bucket-x/a.jpg", storage_options=options),
        lambda: read_image(s3.url("nothing.jpg"), storage_options=options),
        lambda: read_image(f"s3://{KEY}:{SECRET}@{s3.bucket}/in/a.jpg"),
    ]
    for call in failures:
        with pytest.raises(Exception) as caught:
            call()
        shown.append("".join(traceback.format_exception(caught.value)))
    s3.server.require_auth(True)
    try:
        for call in (lambda: read_image(url, storage_options=options),
                     lambda: list_objects(s3.url("in/"), storage_options=options),
                     lambda: write_image(Image(photo(8, 8)), s3.url("out/a.png"),
                                         storage_options=options)):
            with pytest.raises(StorageError) as caught:
                call()
            assert caught.value.reason == "credentials", caught.value
            assert "InvalidAccessKeyId" in str(caught.value) and "\n" not in str(caught.value)
            shown.append("".join(traceback.format_exception(caught.value)))
    finally:
        s3.server.require_auth(False)
    s3.proxy.fail(1, code="ServiceUnavailable")
    with pytest.raises(TransientError) as caught:
        read_image(url, storage_options=no_client_retries(s3))
    shown.append("".join(traceback.format_exception(caught.value)))
    logged = [f"{r.name}: {r.getMessage()}" for r in caplog.records]
    assert all(SECRET not in text for text in shown + logged)
    assert all(KEY not in text for text in shown)
    assert not [line for line in logged if KEY in line and line.startswith("dagflow")]


def test_no_credentials_at_all_is_a_credentials_error(s3, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    url = s3.put("in/a.jpg", encoded(photo(64, 48), "JPEG"))
    endpoint_only = {"client_kwargs": {"endpoint_url": s3.proxy.endpoint}}
    with pytest.raises(StorageError) as caught:
        probe_header(url, storage_options=endpoint_only)
    assert caught.value.reason == "credentials"
    assert "Unable to locate credentials" in str(caught.value)
    assert s3.proxy.requests == []  # refused before any request


# -- connections -----------------------------------------------------------------------

def test_a_worker_process_keeps_one_filesystem_and_its_connections(s3):
    """Probes of many objects on a real worker process: one S3 filesystem there, built
    once from what was pickled to it, and a handful of TCP connections for all requests."""
    from distributed import Client, LocalCluster

    urls = [s3.put(f"in/{i:03d}.jpg", encoded(photo(64, 48, seed=i), "JPEG"))
            for i in range(24)]
    s3.proxy.clear()
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        headers = client.gather(client.map(probe_header, urls, storage_options=s3.options))
        endpoint = s3.proxy.endpoint
        counts = client.run(_instances_for, endpoint)
    assert [h["width"] for h in headers] == [64] * 24
    assert list(counts.values()) == [1]
    assert len(s3.proxy.requests) == 24  # one ranged GET a probe
    assert s3.proxy.connections <= 4, s3.proxy.connections


def _instances_for(endpoint: str) -> int:
    import s3fs

    return sum(1 for fs in s3fs.S3FileSystem._cache.values()
               if (fs.client_kwargs or {}).get("endpoint_url") == endpoint)

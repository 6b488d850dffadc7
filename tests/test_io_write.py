"""Writing: round trips per format, explicit scaling, atomic files, safe output paths."""

from __future__ import annotations

import errno
import io
import os
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage

from dagflow.exceptions import BadInputError, TransientError
from dagflow.image import Image
from dagflow.io import (
    FORMAT_SUFFIXES,
    IMAGE_EXTENSIONS,
    TEMP_PATTERN,
    atomic_path,
    atomic_write,
    find_temporaries,
    read_image,
    safe_join,
    write_image,
)
from dagflow.io.atomic import atomic_directory, shorten_component
from dagflow.io.write import to_uint8, to_uint16
from dagflow.testing import photo_like, tiff_corpus_files

pytestmark = pytest.mark.filterwarnings("error")


def _psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.rglob("*") if p.name.endswith(".tmp")]


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_exact_round_trip(tmp_path, channels, dtype):
    data = photo_like(37, 53, seed=channels, channels=channels, dtype=dtype)
    out = write_image(Image(data), tmp_path / "a.png")
    assert out == str(tmp_path / "a.png")
    back = read_image(out)
    assert back.data.dtype == dtype
    np.testing.assert_array_equal(back.data, data)
    assert back.meta["bit_depth"] == np.dtype(dtype).itemsize * 8


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff_exact_round_trip(tmp_path, channels, dtype):
    data = photo_like(33, 41, seed=channels, channels=channels, dtype=dtype)
    back = read_image(write_image(data, tmp_path / "a.tif"))
    assert back.data.dtype == dtype
    np.testing.assert_array_equal(back.data, data)


def test_png16_readable_by_pillow(tmp_path):
    gray = photo_like(20, 30, seed=1, channels=1, dtype=np.uint16)
    with PILImage.open(write_image(gray, tmp_path / "g.png")) as pil:
        np.testing.assert_array_equal(np.asarray(pil), gray[..., 0])
    rgb = photo_like(20, 30, seed=2, dtype=np.uint16)
    with PILImage.open(write_image(rgb, tmp_path / "c.png")) as pil:  # Pillow keeps 8 bits
        np.testing.assert_array_equal(np.asarray(pil), (rgb >> 8).astype(np.uint8))


def test_tiff_options(tmp_path):
    data = photo_like(300, 260, seed=3, dtype=np.uint16)
    path = write_image(data, tmp_path / "t.tiff", compression="zlib", tile=(128, 128),
                       bigtiff=True)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        assert tif.is_bigtiff and page.is_tiled and page.compression == 8
    np.testing.assert_array_equal(read_image(path).data, data)
    plain = write_image(data, tmp_path / "p.tif")
    with tifffile.TiffFile(plain) as tif:
        assert not tif.is_bigtiff and tif.pages.first.compression == 1


def test_tiff_codecs_and_an_unknown_one(tmp_path):
    data = photo_like(40, 48, seed=6)
    for codec in ("lzw", "zstd", "lzma", "zlib", "packbits"):
        path = write_image(data, tmp_path / f"{codec}.tif", compression=codec)
        np.testing.assert_array_equal(read_image(path).data, data)
    with pytest.raises(ValueError, match="unknown TIFF compression 'zip'"):
        write_image(data, tmp_path / "a.tif", compression="zip")
    assert not (tmp_path / "a.tif").exists()


def test_jpeg_and_webp_lossy(tmp_path):
    data = photo_like(64, 96, seed=4)
    for name in ("a.jpg", "a.jpeg", "a.webp"):
        back = read_image(write_image(data, tmp_path / name, quality=95))
        assert back.data.shape == data.shape
        assert _psnr(back.data, data) > 30, name
    low = Path(write_image(data, tmp_path / "low.jpg", quality=20)).stat().st_size
    assert low < (tmp_path / "a.jpg").stat().st_size


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("quality", [30, 85, 97])
def test_jpeg_encodes_what_pillow_encodes(tmp_path, channels, quality):
    """The same libjpeg-turbo settings as Pillow's ``save`` (4:2:0, accurate DCT): the
    file decodes to Pillow's pixels exactly; alpha is dropped."""
    data = photo_like(61, 83, seed=channels, channels=channels)
    path = write_image(data, tmp_path / "a.jpg", quality=quality)
    colour = data[:, :, : 3 if channels >= 3 else 1]
    reference = io.BytesIO()
    PILImage.fromarray(colour[:, :, 0] if colour.shape[2] == 1 else colour).save(
        reference, format="JPEG", quality=quality)
    with PILImage.open(path) as ours, PILImage.open(reference) as theirs:
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
        assert ours.mode == ("L" if channels <= 2 else "RGB")


def test_png_compression_level(tmp_path):
    data = photo_like(120, 160, seed=2, dtype=np.uint16)
    sizes = [Path(write_image(data, tmp_path / f"{level}.png", compression=level)).stat().st_size
             for level in (0, 9)]
    assert sizes[1] < sizes[0] and sizes[0] > data.nbytes  # 0 is stored, 9 compresses
    np.testing.assert_array_equal(read_image(tmp_path / "9.png").data, data)
    with pytest.raises(ValueError, match="zlib level"):
        write_image(data, tmp_path / "x.png", compression=10)


@pytest.mark.parametrize("channels", [3, 4])
def test_webp_lossless_exact(tmp_path, channels):
    data = photo_like(30, 40, seed=5, channels=channels)
    back = read_image(write_image(data, tmp_path / "a.webp", lossless=True))
    np.testing.assert_array_equal(back.data, data)


def test_format_argument_overrides_suffix(tmp_path):
    path = write_image(photo_like(10, 10), tmp_path / "noext", format="png")
    assert read_image(path).meta["format"] == "png"
    path = write_image(photo_like(10, 10), tmp_path / "x.bin", format="JPG")
    assert read_image(path).meta["format"] == "jpeg"
    with pytest.raises(ValueError, match="which format"):
        write_image(photo_like(10, 10), tmp_path / "x.bmp")
    assert FORMAT_SUFFIXES == {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "tiff": ".tif"}
    assert {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".gif", ".bmp"} == IMAGE_EXTENSIONS


# --- explicit conversions -----------------------------------------------------------------


def test_scaling_helpers():
    u16 = np.array([0, 128, 129, 257, 32767, 32768, 65535], np.uint16)
    expected = np.rint(u16.astype(float) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(to_uint8(u16), expected)
    np.testing.assert_array_equal(to_uint16(np.arange(256, dtype=np.uint8)),
                                  np.arange(256) * 257)
    np.testing.assert_array_equal(to_uint8(np.array([-1.0, np.nan, 0.5, 2.0])), [0, 0, 128, 255])
    np.testing.assert_array_equal(to_uint16(np.array([0.0, 0.5, 1.0])), [0, 32768, 65535])
    # other integers (TIFFs hold signed and 32-bit samples): the dtype's whole range
    np.testing.assert_array_equal(to_uint8(np.array([-128, -1, 0, 127], np.int8)),
                                  [0, 127, 128, 255])
    np.testing.assert_array_equal(to_uint16(np.array([-32768, 0, 32767], np.int16)),
                                  [0, 32768, 65535])
    np.testing.assert_array_equal(to_uint8(np.array([0, 2**31, 2**32 - 1], np.uint32)),
                                  [0, 128, 255])
    with pytest.raises(BadInputError, match="unsupported_mode"):
        to_uint8(np.zeros(3, np.complex64))


def test_uint16_to_jpeg_is_scaled(tmp_path):
    data = np.zeros((16, 16, 3), np.uint16)
    data[:8] = 65535
    data[8:] = 32896  # 128 * 257
    back = read_image(write_image(data, tmp_path / "a.jpg", quality=100)).data.astype(int)
    assert abs(back[:8].mean() - 255) < 2 and abs(back[8:].mean() - 128) < 2


def test_float_to_png(tmp_path):
    data = photo_like(12, 14, seed=6, dtype=np.float32)
    eight = read_image(write_image(data, tmp_path / "f8.png")).data
    assert eight.dtype == np.uint8
    np.testing.assert_array_equal(eight, np.rint(data * 255).astype(np.uint8))
    sixteen = read_image(write_image(Image(data, {"bit_depth": 16}), tmp_path / "f16.png")).data
    assert sixteen.dtype == np.uint16
    np.testing.assert_array_equal(sixteen, np.rint(data * 65535).astype(np.uint16))


def test_alpha_dropped_for_jpeg(tmp_path):
    rgba = photo_like(20, 24, seed=7, channels=4)
    back = read_image(write_image(rgba, tmp_path / "a.jpg", quality=95)).data
    assert back.shape == (20, 24, 3) and _psnr(back, rgba[..., :3]) > 22
    graya = photo_like(20, 24, seed=8, channels=2)
    back = read_image(write_image(graya, tmp_path / "g.jpg", quality=95)).data
    assert back.shape == (20, 24, 1)
    gray_webp = read_image(write_image(graya[..., :1], tmp_path / "g.webp", lossless=True)).data
    np.testing.assert_array_equal(gray_webp, np.repeat(graya[..., :1], 3, axis=2))


def test_signed_tiff_to_jpeg_and_png(tmp_path):
    """A signed TIFF (the corpus's) goes through to 8-bit outputs, its range mapped."""
    signed = tiff_corpus_files()["signed_int16.tif"].expected
    for name in ("a.jpg", "a.png"):
        back = read_image(write_image(signed, tmp_path / name, quality=100)).data
        np.testing.assert_allclose(back, to_uint8(signed), rtol=0, atol=1 if "jpg" in name
                                   else 0)


def test_unsupported_pixels(tmp_path):
    with pytest.raises(BadInputError) as info:
        write_image(np.zeros((4, 4, 3), np.complex64), tmp_path / "a.png")
    assert info.value.reason == "unsupported_mode"
    with pytest.raises(BadInputError):
        write_image(np.zeros((4, 4, 5), np.uint8), tmp_path / "a.jpg")
    assert read_image(write_image(np.zeros((4, 4, 5), np.uint8), tmp_path / "m.tif")).channels == 5
    assert _leftovers(tmp_path) == [] and not (tmp_path / "a.png").exists()


# --- atomic writes --------------------------------------------------------------------------


def test_atomic_write_bytes_and_function(tmp_path):
    target = tmp_path / "deep" / "er" / "file.bin"
    assert atomic_write(target, b"abc") == target
    assert target.read_bytes() == b"abc"
    names = []

    def writer(fh):
        names.append(Path(fh.name).name)
        fh.write(b"xyz")

    atomic_write(target, writer)
    assert target.read_bytes() == b"xyz"
    assert TEMP_PATTERN.match(names[0]) and names[0].startswith(".file.bin.")
    assert _leftovers(tmp_path) == []


def test_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.jpg"

    def crash(fh):
        fh.write(b"half of an image")
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert not target.exists() and _leftovers(tmp_path) == []
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_bytes() == b"previous"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_path(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and TEMP_PATTERN.match(tmp.name)
        tmp.write_text("ok")
        assert not target.exists()
    assert target.read_text() == "ok"
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise ValueError("boom")
    assert target.read_text() == "ok" and _leftovers(tmp_path) == []
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "never.txt"):
        pass
    assert not (tmp_path / "never.txt").exists()


def test_atomic_directory_replaces_a_store_only_when_complete(tmp_path):
    target = tmp_path / "sub" / "a.zarr"
    with atomic_directory(target) as tmp:
        assert tmp.parent == target.parent and TEMP_PATTERN.match(tmp.name)
        (tmp / "c").mkdir(parents=True)
        (tmp / "c" / "0").write_text("first")
        assert not target.exists()
    assert (target / "c" / "0").read_text() == "first"
    with pytest.raises(ValueError), atomic_directory(target) as tmp:
        tmp.mkdir()
        (tmp / "partial").write_text("x")
        raise ValueError("boom")
    assert sorted(p.name for p in target.iterdir()) == ["c"]  # the old store, untouched
    with atomic_directory(target) as tmp:  # replacing: nothing of the old store remains
        tmp.mkdir()
        (tmp / "new").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.zarr"]
    with pytest.raises(FileNotFoundError), atomic_directory(tmp_path / "never"):
        pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError), atomic_directory(tmp_path / "file"):
        pass
    assert (tmp_path / "file").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "sub"]


def test_find_temporaries(tmp_path):
    (tmp_path / "a").mkdir()
    leftover = tmp_path / "a" / ".img.jpg.0123456789ab.tmp"
    leftover.write_bytes(b"")
    (tmp_path / "a" / "img.jpg").write_bytes(b"")
    (tmp_path / ".hidden.tmp").write_bytes(b"")
    assert find_temporaries(tmp_path) == [leftover]


def test_long_final_name(tmp_path):
    name = "é" * 120 + ".png"  # 244 bytes: the temporary name must be shortened
    path = write_image(photo_like(5, 5), tmp_path / name)
    assert Path(path).name == name and _leftovers(tmp_path) == []


# --- symlinks and safe paths ------------------------------------------------------------------


def test_planted_symlink_not_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").symlink_to(victim)
    with pytest.raises(BadInputError) as info:
        write_image(photo_like(4, 4), out / "a.png")
    assert info.value.reason == "unsafe_path"
    with pytest.raises(BadInputError):
        atomic_write(out / "a.png", b"x")
    assert victim.read_text() == "precious"
    assert (out / "a.png").is_symlink() and _leftovers(tmp_path) == []


def test_safe_join_rejects_escapes(tmp_path):
    for bad in ["../x.jpg", "a/../../x.jpg", "a/..", "/etc/passwd", "C:\\x.jpg", "a\x00b",
                "", ".", "./", "..\\x.jpg"]:
        with pytest.raises(BadInputError) as info:
            safe_join(tmp_path, bad)
        assert info.value.reason == "unsafe_path", bad


def test_safe_join_cleans(tmp_path):
    assert safe_join(tmp_path, "a/./b//c.jpg") == tmp_path / "a" / "b" / "c.jpg"
    assert safe_join(tmp_path, "a\\b.jpg") == tmp_path / "a" / "b.jpg"
    assert safe_join(tmp_path, "x\ny\u202e.jpg") == tmp_path / "xy.jpg"
    decomposed = unicodedata.normalize("NFD", "café.jpg")
    assert safe_join(tmp_path, decomposed).name == unicodedata.normalize("NFC", "café.jpg")


def test_safe_join_refuses_symlinks(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "real" / "file.jpg").symlink_to(outside / "f.jpg")
    assert safe_join(root, "real/new/x.jpg") == root / "real" / "new" / "x.jpg"
    for bad in ["link/x.jpg", "real/file.jpg"]:
        with pytest.raises(BadInputError, match="symlink"):
            safe_join(root, bad)
    with pytest.raises(BadInputError):
        atomic_write(root / "link" / "x.jpg", b"x", root=root)
    with pytest.raises(BadInputError, match="not under"):
        atomic_write(tmp_path / "elsewhere.jpg", b"x", root=root)
    assert list(outside.iterdir()) == []
    # a root that is itself a symlink is the user's choice and allowed
    alias = tmp_path / "alias"
    alias.symlink_to(root, target_is_directory=True)
    assert atomic_write(safe_join(alias, "real/y.jpg"), b"y", root=alias).read_bytes() == b"y"


def test_long_components_shortened_deterministically(tmp_path):
    long_name = "photo_" + "x" * 300 + ".jpg"
    joined = safe_join(tmp_path, f"dir/{long_name}")
    assert joined.name == shorten_component(long_name) == safe_join(tmp_path, long_name).name
    assert len(joined.name.encode()) <= 255 and joined.name.endswith(".jpg")
    other = safe_join(tmp_path, "photo_" + "x" * 299 + "y.jpg")
    assert other.name != joined.name
    multibyte = safe_join(tmp_path, "日本" * 100 + ".png").name
    assert len(multibyte.encode()) <= 255
    multibyte.encode("utf-8")  # still valid UTF-8: no character cut in half
    atomic_write(joined, b"ok")
    assert joined.read_bytes() == b"ok"
    assert safe_join(tmp_path, "short.jpg").name == "short.jpg"


class _FailingWrites(io.FileIO):
    """A file whose writes fail with EIO once a few bytes are in (a storage hiccup)."""

    def write(self, data):
        if self.tell() > 4:
            raise OSError(errno.EIO, "Input/output error")
        return super().write(bytes(data)[:8])


def _short_writes(monkeypatch, fail_after: int | None) -> None:
    """``os.write`` as a storage hiccup does it: at most 8 bytes a call, and EIO once
    ``fail_after`` bytes of a file are in (never with ``None``)."""
    from dagflow.io import atomic

    real_write, written = os.write, {}

    def write(fd, data):
        if fail_after is not None and written.get(fd, 0) > fail_after:
            raise OSError(errno.EIO, "Input/output error")
        n = real_write(fd, bytes(data)[:8])
        written[fd] = written.get(fd, 0) + n
        return n

    monkeypatch.setattr(atomic.os, "write", write)


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif"])
def test_transient_write_error(tmp_path, monkeypatch, suffix):
    """Encoded bytes (JPEG, PNG) go to the file's descriptor, writers (WebP, TIFF) to a
    file object: an EIO in either is a TransientError, and nothing is left behind."""
    from dagflow.io import atomic

    def failing_open(file, mode="r", *args, opener=None, **kwargs):
        return io.BufferedWriter(_FailingWrites(file, mode.replace("b", ""), opener=opener),
                                 buffer_size=8)

    monkeypatch.setattr(atomic, "open", failing_open, raising=False)
    _short_writes(monkeypatch, fail_after=4)
    with pytest.raises(TransientError) as info:
        write_image(photo_like(64, 64), tmp_path / f"a{suffix}")
    assert info.value.errno == errno.EIO
    assert list(tmp_path.iterdir()) == []


def test_short_writes_are_completed(tmp_path, monkeypatch):
    content = bytes(range(256)) * 3
    _short_writes(monkeypatch, fail_after=None)
    assert atomic_write(tmp_path / "sub" / "a.bin", content).read_bytes() == content


def test_umask_permissions(tmp_path):
    path = Path(atomic_write(tmp_path / "p.bin", b"x"))
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_deferred_sync_makes_a_block_durable_at_its_end(tmp_path, monkeypatch):
    import os as _os

    from dagflow.io import atomic

    synced = []
    real_fsync = _os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    atomic.atomic_write(tmp_path / "alone.txt", b"x")
    assert len(synced) == 2  # the file, then its directory
    synced.clear()
    with atomic.deferred_sync():
        for k in range(10):
            atomic.atomic_write(tmp_path / "out" / f"{k}.txt", str(k).encode())
        assert synced == []  # nothing flushed while the block runs
    if atomic._syncfs() is not None:
        assert synced == []  # one syncfs of the filesystem instead of 20 fsyncs
    else:
        assert len(synced) == 11
    assert [(tmp_path / "out" / f"{k}.txt").read_text() for k in range(10)] == \
        [str(k) for k in range(10)]
    # without syncfs: every file and each directory once
    monkeypatch.setattr(atomic, "_syncfs", lambda: None)
    synced.clear()
    with atomic.deferred_sync():
        for k in range(3):
            atomic.atomic_write(tmp_path / "more" / f"{k}.txt", b"y")
    assert len(synced) == 4 and not atomic.find_temporaries(tmp_path)


def test_unsynced_atomic_path_renames_without_flushing(tmp_path, monkeypatch):
    """Records parts are written with ``sync=False``: still all or nothing, no fsync."""
    import os as _os

    from dagflow.io import atomic
    from dagflow.recovery.checkpoint import RECORD_SCHEMA, read_records, write_part

    synced = []
    real_fsync = _os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    with atomic.atomic_path(tmp_path / "a.bin", sync=False) as tmp:
        tmp.write_bytes(b"whole")
    assert (tmp_path / "a.bin").read_bytes() == b"whole" and synced == []
    with pytest.raises(RuntimeError), atomic.atomic_path(tmp_path / "b.bin", sync=False) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert not (tmp_path / "b.bin").exists() and atomic.find_temporaries(tmp_path) == []
    columns = {"item_id": [1, 2], "status": ["ok", "failed"]}
    part = write_part(tmp_path / "records" / "part-0000000.parquet", columns, RECORD_SCHEMA)
    table, bad = read_records([part])
    assert bad == [] and synced == []
    assert table.column("status").to_pylist() == ["ok", "failed"]
    assert table.column_names == ["item_id", "status"]  # the fields it was given


def test_monitoring_files_are_written_whole_without_flushing(tmp_path, monkeypatch):
    """A run's measurements (run.json, the scheduler's data, the history) are not its
    state: written atomically, never fsynced; one that is unreadable reads as missing."""
    import os as _os

    import pyarrow as pa

    from dagflow.io import atomic
    from dagflow.monitor.store import read_json, read_table, write_json, write_table

    synced = []
    real_fsync = _os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    write_json(tmp_path / "metrics" / "run.json", {"run_id": "r", "items": 3})
    write_table(tmp_path / "history" / "run-r.parquet", pa.table({"node_id": ["load"]}))
    assert synced == [] and atomic.find_temporaries(tmp_path) == []
    assert read_json(tmp_path / "metrics" / "run.json") == {"run_id": "r", "items": 3}
    assert read_table(tmp_path / "history" / "run-r.parquet").column("node_id").to_pylist() \
        == ["load"]
    (tmp_path / "metrics" / "torn.json").write_bytes(b'{"run_id": ')  # a power cut's
    (tmp_path / "history" / "run-t.parquet").write_bytes(b"PAR1\x00")
    assert read_json(tmp_path / "metrics" / "torn.json") is None
    assert read_table(tmp_path / "history" / "run-t.parquet") is None

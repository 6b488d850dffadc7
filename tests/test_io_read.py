"""Reading and probing: orientation, bit depth, layouts, draft decoding, limits, errors."""

from __future__ import annotations

import errno
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage
from PIL import ImageFile, ImageOps

from dagflow.exceptions import BadInputError, OversizeError, TransientError
from dagflow.io import open_image, probe_header, read_image, write_image
from dagflow.io import probe as probe_module
from dagflow.io.orient import apply_orientation, exif_orientation
from dagflow.testing import (
    exif_block,
    garbage_exif_block,
    insert_exif,
    photo_like,
    truncated_exif_block,
)
from dagflow.testing.badcorpus import bad_corpus_files
from dagflow.testing.exif import encode_jpeg, stored_for_orientation
from dagflow.testing.synthetic import asymmetric_pattern
from dagflow.testing.tiffs import tiff_corpus_files

pytestmark = pytest.mark.filterwarnings("error")


def _save(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _pil_bytes(image: PILImage.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _reference_orientation(stored: np.ndarray, orientation: int) -> np.ndarray:
    """Independent of dagflow.io.orient: numpy's rot90 / flip, as the EXIF spec reads."""
    if orientation == 2:
        return np.flip(stored, axis=1)
    if orientation == 3:
        return np.rot90(stored, 2)
    if orientation == 4:
        return np.flip(stored, axis=0)
    if orientation == 5:
        return np.swapaxes(stored, 0, 1)
    if orientation == 6:
        return np.rot90(stored, -1)
    if orientation == 7:
        return np.rot90(np.swapaxes(stored, 0, 1), 2)
    if orientation == 8:
        return np.rot90(stored, 1)
    return stored


# --- EXIF orientation -----------------------------------------------------------------


@pytest.fixture(scope="module")
def stored_jpeg() -> bytes:
    return encode_jpeg(asymmetric_pattern(48, 80, seed=4), quality=90)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_pixel_exact(tmp_path, stored_jpeg, orientation):
    # The same compressed pixels under two tags: decoding is identical, so the oriented
    # result must equal a numpy transform of the untagged decode, bit for bit.
    plain = read_image(_save(tmp_path / "plain.jpg", stored_jpeg), auto_orient=False).data
    path = _save(tmp_path / "tagged.jpg", insert_exif(stored_jpeg, exif_block(orientation)))
    img = read_image(path)
    np.testing.assert_array_equal(img.data, _reference_orientation(plain, orientation))
    # ... and what Pillow's own exif_transpose shows (a second, independent reference).
    with PILImage.open(path) as pil:
        expected = np.asarray(ImageOps.exif_transpose(pil))
    np.testing.assert_array_equal(img.data[..., :3], expected)
    assert img.meta["source_orientation"] == orientation
    assert img.meta["orientation"] == 1
    assert (img.meta["source_width"], img.meta["source_height"]) == (80, 48)
    assert img.data.flags.c_contiguous and img.data.flags.writeable


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_not_applied_when_disabled(tmp_path, stored_jpeg, orientation):
    path = _save(tmp_path / "tagged.jpg", insert_exif(stored_jpeg, exif_block(orientation)))
    img = read_image(path, auto_orient=False)
    assert img.data.shape[:2] == (48, 80)
    assert img.meta["orientation"] == orientation == img.meta["source_orientation"]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_upright_fixture_reads_upright(tmp_path, orientation):
    upright = asymmetric_pattern(64, 96, seed=1)
    stored = stored_for_orientation(upright, orientation)
    path = _save(tmp_path / "o.jpg", insert_exif(encode_jpeg(stored, quality=95),
                                                 exif_block(orientation)))
    data = read_image(path).data.astype(int)
    assert data.shape == upright.shape
    error = np.abs(data - upright).mean()
    assert error < 8  # JPEG noise only
    for other in range(2, 9):  # and clearly closer to upright than to any mis-orientation
        wrong = apply_orientation(upright, other)
        if wrong.shape == upright.shape:
            assert np.abs(data - wrong).mean() > 3 * error
    assert data[3, 3].tolist() == pytest.approx([230, 20, 20], abs=25)  # red top-left


def test_apply_orientation_matches_reference():
    a = np.arange(3 * 5 * 2).reshape(3, 5, 2)
    for orientation in range(1, 9):
        np.testing.assert_array_equal(
            apply_orientation(a, orientation), _reference_orientation(a, orientation)
        )


@pytest.mark.parametrize(
    "block",
    [exif_block(0), exif_block(9), exif_block(65535), truncated_exif_block(),
     garbage_exif_block(3), b"Exif\x00\x00", b"Exif\x00\x00MM\x00*\xff\xff\xff\xff"],
    ids=["zero", "nine", "65535", "truncated", "garbage", "empty", "bad-offset"],
)
def test_invalid_orientation_is_one(tmp_path, stored_jpeg, block):
    path = _save(tmp_path / "bad_exif.jpg", insert_exif(stored_jpeg, block))
    assert probe_header(path)["orientation"] == 1
    img = read_image(path)
    assert img.data.shape == (48, 80, 3)
    assert img.meta["source_orientation"] == 1 == img.meta["orientation"]


def test_exif_orientation_parser_both_byte_orders():
    for orientation in range(1, 9):
        little = exif_block(orientation)
        assert exif_orientation(little) == orientation
        body = little[6:]
        big = b"MM\x00*\x00\x00\x00\x08\x00\x01" + struct.pack(">HHIH", 0x0112, 3, 1, orientation)
        assert exif_orientation(big + b"\x00\x00") == orientation
        assert exif_orientation(body) == orientation


def test_tiff_orientation_tag_applied(tmp_path):
    data = photo_like(20, 30, seed=2, dtype=np.uint16)
    path = tmp_path / "o.tif"
    tifffile.imwrite(path, data, photometric="rgb", metadata=None, extratags=[(274, 3, 1, 6, True)])
    assert probe_header(path)["orientation"] == 6
    img = read_image(path)
    np.testing.assert_array_equal(img.data, np.rot90(data, -1))


# --- bit depth and layouts --------------------------------------------------------------


def _full_range_u16(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    values = np.random.default_rng(seed).integers(0, 65536, shape, dtype=np.uint16)
    values.flat[:2] = (0, 65535)
    return values


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_tiff16_exact(tmp_path, channels):
    data = _full_range_u16((33, 47, channels))
    path = tmp_path / "a.tif"
    kwargs: dict = {"photometric": "rgb" if channels >= 3 else "minisblack", "metadata": None}
    if channels in (2, 4):
        kwargs["extrasamples"] = ("unassalpha",)
    tifffile.imwrite(path, data[:, :, 0] if channels == 1 else data, **kwargs)
    img = read_image(path)
    assert img.data.dtype == np.uint16
    np.testing.assert_array_equal(img.data, data)
    header = probe_header(path)
    assert (header["channels"], header["dtype"], header["itemsize"]) == (channels, "uint16", 2)


def test_tiff_planar_multipage_and_compression(tmp_path):
    first = _full_range_u16((3, 21, 17), seed=1)  # planar: samples first
    second = _full_range_u16((3, 21, 17), seed=2)
    path = tmp_path / "planar.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(first, photometric="rgb", planarconfig="separate", compression="zlib",
                  metadata=None)
        tif.write(second, photometric="rgb", planarconfig="separate", metadata=None)
    img = read_image(path)
    np.testing.assert_array_equal(img.data, np.moveaxis(first, 0, -1))
    assert img.meta["frames"] == 2 == probe_header(path)["frames"]


def test_tiff_bilevel_miniswhite_palette(tmp_path):
    bits = np.random.default_rng(0).random((16, 24)) > 0.5
    tifffile.imwrite(tmp_path / "black.tif", bits, photometric="minisblack", metadata=None)
    np.testing.assert_array_equal(read_image(tmp_path / "black.tif").data[..., 0], bits * 255)
    tifffile.imwrite(tmp_path / "bits.tif", bits, metadata=None)  # tifffile: min-is-white
    with PILImage.open(tmp_path / "bits.tif") as pil:
        expected = np.asarray(pil.convert("L"))
    np.testing.assert_array_equal(read_image(tmp_path / "bits.tif").data[..., 0], expected)

    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    tifffile.imwrite(tmp_path / "white.tif", gray, photometric="miniswhite", metadata=None)
    np.testing.assert_array_equal(read_image(tmp_path / "white.tif").data[..., 0], 255 - gray)

    colormap = np.zeros((3, 256), dtype=np.uint16)
    colormap[0] = np.arange(256) * 257
    colormap[2] = (255 - np.arange(256)) * 257
    tifffile.imwrite(tmp_path / "pal.tif", gray, photometric="palette", colormap=colormap,
                     metadata=None)
    img = read_image(tmp_path / "pal.tif")
    assert img.data.shape == (8, 8, 3) and img.data.dtype == np.uint8
    np.testing.assert_array_equal(img.data[..., 0], gray)
    np.testing.assert_array_equal(img.data[..., 2], 255 - gray)


TIFFS = tiff_corpus_files()


@pytest.mark.parametrize("name", sorted(TIFFS))
def test_tiff_corpus_reads_every_codec_and_layout(tmp_path, name):
    """LZW, CCITT, JPEG, ZSTD..., 2-, 4- and 12-bit, palettes, signed, float, L*a*b*:
    each read as the pixels it holds, its header probed alike, lazily too where it can."""
    case = TIFFS[name]
    path = _save(tmp_path / name, case.data)
    img = read_image(path)
    assert (img.data.shape, img.data.dtype) == (case.expected.shape, case.expected.dtype)
    np.testing.assert_allclose(img.data, case.expected, rtol=0, atol=case.tolerance)
    header = probe_header(path)
    assert (header["height"], header["width"], header["channels"], header["dtype"]) == (
        *case.expected.shape, case.expected.dtype.name)
    if case.lazy:
        np.testing.assert_array_equal(open_image(path, chunks=32).values, img.data)
    else:
        with pytest.raises(BadInputError, match="unsupported_mode"):
            open_image(path)


@pytest.mark.parametrize("codec", ["lzw", "jpeg", "zstd"])
def test_compressed_tiled_tiff_reads_lazily_block_by_block(tmp_path, codec):
    data = photo_like(300, 410, seed=4)
    path = tmp_path / f"{codec}.tif"
    tifffile.imwrite(path, data, photometric="rgb", compression=codec, tile=(64, 64),
                     metadata=None)
    whole = read_image(path).data
    if codec != "jpeg":
        np.testing.assert_array_equal(whole, data)
    lazy = open_image(path, chunks=128)
    assert lazy.attrs["compression"] == codec and lazy.data.numblocks[:2] == (3, 4)
    np.testing.assert_array_equal(lazy.values, whole)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _reference_png16(data: np.ndarray) -> bytes:
    """A slow, independent 16-bit PNG encoder cycling through all five row filters."""
    height, width, channels = data.shape
    bpp = 2 * channels
    raw = data.astype(">u2").tobytes()
    stride = width * bpp
    previous = bytearray(stride)
    out = bytearray()
    for y in range(height):
        row = raw[y * stride : (y + 1) * stride]
        kind = y % 5
        filtered = bytearray(stride)
        for i in range(stride):
            a = row[i - bpp] if i >= bpp else 0
            b = previous[i]
            c = previous[i - bpp] if i >= bpp else 0
            if kind == 0:
                predictor = 0
            elif kind == 1:
                predictor = a
            elif kind == 2:
                predictor = b
            elif kind == 3:
                predictor = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                predictor = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            filtered[i] = (row[i] - predictor) % 256
        out += bytes([kind]) + filtered
        previous = bytearray(row)
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(bytes(out))) + _png_chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png16_exact_all_filters(tmp_path, channels):
    data = _full_range_u16((11, 9, channels), seed=channels)
    path = _save(tmp_path / "a.png", _reference_png16(data))
    img = read_image(path)
    assert img.data.dtype == np.uint16
    np.testing.assert_array_equal(img.data, data)
    header = probe_header(path)
    assert (header["channels"], header["dtype"]) == (channels, "uint16")


def test_png16_gray_written_by_pillow(tmp_path):
    data = _full_range_u16((13, 17))
    path = tmp_path / "g16.png"
    PILImage.fromarray(data).save(path)
    np.testing.assert_array_equal(read_image(path).data[..., 0], data)


def test_palette_alpha_gray_layouts(tmp_path):
    rgb = photo_like(30, 40, seed=5)
    palette = PILImage.fromarray(rgb).quantize(colors=8)
    cases = {
        "palette.png": (_pil_bytes(palette, "PNG"), (30, 40, 3), "rgb"),
        "palette_trns.png": (_pil_bytes(palette, "PNG", transparency=bytes([0, 128] + [255] * 6)),
                             (30, 40, 4), "rgba"),
        "gray.png": (_pil_bytes(PILImage.fromarray(rgb[..., 0]), "PNG"), (30, 40, 1), "gray"),
        "la.png": (_pil_bytes(PILImage.fromarray(rgb[..., :2]), "PNG"), (30, 40, 2), "graya"),
        "rgba.png": (_pil_bytes(PILImage.fromarray(photo_like(30, 40, 1, channels=4)), "PNG"),
                     (30, 40, 4), "rgba"),
        "gray_key.png": (_pil_bytes(PILImage.fromarray(rgb[..., 0]), "PNG",
                                    transparency=int(rgb[0, 0, 0])), (30, 40, 2), "graya"),
        "gray.jpg": (_pil_bytes(PILImage.fromarray(rgb[..., 0]), "JPEG"), (30, 40, 1), "gray"),
        "a.webp": (_pil_bytes(PILImage.fromarray(rgb), "WEBP", lossless=True), (30, 40, 3), "rgb"),
        "a.bmp": (_pil_bytes(PILImage.fromarray(rgb), "BMP"), (30, 40, 3), "rgb"),
    }
    for name, (data, shape, space) in cases.items():
        path = _save(tmp_path / name, data)
        img = read_image(path)
        assert img.data.shape == shape, name
        assert img.meta["space"] == space, name
        header = probe_header(path)
        assert (header["height"], header["width"], header["channels"]) == shape, name
    trns = read_image(tmp_path / "palette_trns.png").data
    with PILImage.open(tmp_path / "palette_trns.png") as pil:
        np.testing.assert_array_equal(trns, np.asarray(pil.convert("RGBA")))
    key = read_image(tmp_path / "gray_key.png").data
    assert key[0, 0, 1] == 0 and set(np.unique(key[..., 1])) <= {0, 255}
    np.testing.assert_array_equal(read_image(tmp_path / "a.webp").data, rgb)


def test_one_bit_png_is_0_255(tmp_path):
    bits = np.random.default_rng(1).random((10, 12)) > 0.5
    path = tmp_path / "bits.png"
    PILImage.fromarray(bits).save(path)
    np.testing.assert_array_equal(read_image(path).data[..., 0], bits.astype(np.uint8) * 255)


def test_cmyk_jpeg_is_rgb(tmp_path):
    rgb = photo_like(40, 50, seed=6)
    path = _save(tmp_path / "cmyk.jpg",
                 _pil_bytes(PILImage.fromarray(rgb).convert("CMYK"), "JPEG", quality=95))
    img = read_image(path)
    assert img.data.shape == (40, 50, 3) and img.meta["space"] == "rgb"
    assert np.abs(img.data.astype(int) - rgb).mean() < 6
    assert probe_header(path)["channels"] == 3


def test_animated_gif_first_frame(tmp_path):
    frames = [PILImage.fromarray(np.full((8, 10, 3), v, np.uint8)) for v in (10, 120, 240)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    img = read_image(path)
    assert img.meta["frames"] == 3 == probe_header(path)["frames"]
    assert img.data.shape == (8, 10, 3)
    assert abs(int(img.data.mean()) - 10) <= 2


def test_format_by_content_not_suffix(tmp_path):
    path = tmp_path / "really_a_png.jpg"
    write_image(photo_like(10, 12, seed=1), tmp_path / "x.png")
    path.write_bytes((tmp_path / "x.png").read_bytes())
    img = read_image(path)
    assert img.meta["format"] == "png" and img.meta["extension_mismatch"] is True
    header = probe_header(path)
    assert header["format"] == "png" and header["extension_mismatch"] is True
    assert read_image(tmp_path / "x.png").meta["extension_mismatch"] is False


# --- probing without decoding -------------------------------------------------------------


def test_probe_keys(tmp_path):
    path = write_image(photo_like(30, 40, seed=1), tmp_path / "a.jpg")
    header = probe_header(path)
    assert header == {
        "path": str(path), "format": "jpeg", "width": 40, "height": 30, "channels": 3,
        "dtype": "uint8", "itemsize": 1, "bit_depth": 8, "orientation": 1, "frames": 1,
        "size_bytes": Path(path).stat().st_size, "extension_mismatch": False,
    }


def test_probe_never_decodes(tmp_path, monkeypatch):
    files = {name: data for name, (data, exp) in bad_corpus_files(0).items() if exp.probe_ok}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    def refuse(*args, **kwargs):
        raise AssertionError("probe_header decoded pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(tifffile.TiffPage, "asarray", refuse)
    for name in files:
        header = probe_header(tmp_path / name)
        assert header["width"] > 0 and header["height"] > 0, name


class _CountingFile(io.FileIO):
    """A file that adds the bytes read from it to ``counted``."""

    counted: list[int]

    def readinto(self, buffer):
        n = super().readinto(buffer)
        self.counted.append(n or 0)
        return n

    def readall(self):
        data = super().readall()
        self.counted.append(len(data))
        return data


def _count_reads(monkeypatch) -> list[int]:
    """Every byte the readers read from a file, through the module that opens them."""
    counted: list[int] = []

    def counting_open(file, mode="r", *args, **kwargs):
        handle = _CountingFile(file, "r")
        handle.counted = counted
        return io.BufferedReader(handle)

    monkeypatch.setattr(probe_module, "open", counting_open, raising=False)
    return counted


def _refuse_decoding(monkeypatch) -> None:
    import imagecodecs
    import simplejpeg

    def refuse(*args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(tifffile.TiffPage, "asarray", refuse)
    monkeypatch.setattr(simplejpeg, "decode_jpeg", refuse)
    monkeypatch.setattr(imagecodecs, "png_decode", refuse)


def _jpeg_bomb(width: int, height: int) -> bytes:
    """A small valid JPEG whose frame header declares ``width`` x ``height``."""
    data = bytearray(encode_jpeg(photo_like(16, 16, seed=1)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


BOMBS = {"bomb_20000.png": 20000, "bomb_60000.tif": 60000, "bomb_screen.gif": 65535,
         "bomb_60000.jpg": 60000}


def _bomb_files(tmp_path: Path) -> dict[str, Path]:
    files = bad_corpus_files(0)
    out = {}
    for name in BOMBS:
        data = _jpeg_bomb(60000, 60000) if name.endswith(".jpg") else files[name][0]
        out[name] = _save(tmp_path / name, data)
        assert out[name].stat().st_size < 200_000
    return out


def test_probe_of_a_bomb_reads_its_header_only(tmp_path, monkeypatch):
    paths = _bomb_files(tmp_path)
    _refuse_decoding(monkeypatch)
    for name, size in BOMBS.items():
        counted = _count_reads(monkeypatch)
        header = probe_header(paths[name])
        assert (header["width"], header["height"]) == (size, size)
        assert sum(counted) <= 64 * 1024, name  # the header, never the image data


def test_probe_after_header_truncation(tmp_path):
    files = bad_corpus_files(0)
    for name in ("cut_after_header.jpg", "cut_after_header.png", "truncated.tif"):
        path = _save(tmp_path / name, files[name][0])
        header = probe_header(path)
        assert (header["width"], header["height"]) == (128, 96)
        with pytest.raises(BadInputError) as info:
            read_image(path)
        assert info.value.reason == "truncated"


def test_webp_probe_reads_chunk_headers(tmp_path):
    rgba = photo_like(20, 30, seed=3, channels=4)
    for name, options, channels in [("lossy.webp", {"quality": 80}, 3),
                                    ("lossless.webp", {"lossless": True}, 4)]:
        image = PILImage.fromarray(rgba if channels == 4 else rgba[..., :3])
        path = _save(tmp_path / name, _pil_bytes(image, "WEBP", **options))
        header = probe_header(path)
        assert (header["width"], header["height"], header["channels"]) == (30, 20, channels)
        assert read_image(path).data.shape == (20, 30, channels)


# --- draft decoding -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("draft") / "big.jpg"
    path.write_bytes(encode_jpeg(photo_like(1536, 2048, seed=9), quality=85))
    return path


@pytest.mark.parametrize("reduce_to, scale", [(512, 4), (256, 8), (700, 2), (1100, 1)])
def test_draft_decoding(big_jpeg, reduce_to, scale):
    img = read_image(big_jpeg, reduce_to=reduce_to)
    long_side = max(img.data.shape[:2])
    assert long_side >= reduce_to
    assert img.meta["draft_scale"] == scale
    assert img.data.shape[:2] == (1536 // scale, 2048 // scale)
    assert (img.meta["source_width"], img.meta["source_height"]) == (2048, 1536)


def test_draft_with_rotation(tmp_path):
    stored = photo_like(600, 1000, seed=2)
    path = _save(tmp_path / "r.jpg", insert_exif(encode_jpeg(stored), exif_block(6)))
    img = read_image(path, reduce_to=200)
    assert img.meta["draft_scale"] == 4
    assert img.data.shape[:2] == (250, 150)  # rotated: portrait
    assert max(img.data.shape[:2]) >= 200


JPEG_LAYOUTS = {
    "420": dict(subsampling=2), "422": dict(subsampling=1), "444": dict(subsampling=0),
    "progressive": dict(progressive=True), "gray": dict(), "odd-size": dict(),
}


@pytest.mark.parametrize("layout", list(JPEG_LAYOUTS))
@pytest.mark.parametrize("reduce_to", [None, 300, 150, 60])
def test_jpeg_reads_as_pillow_with_its_draft_and_exif_transpose(tmp_path, layout, reduce_to):
    """libjpeg-turbo through its fast path gives Pillow's pixels at Pillow's draft scale,
    turned upright once, as Pillow's ``exif_transpose`` does it."""
    shape = (301, 403) if layout == "odd-size" else (480, 640)
    pixels = photo_like(*shape, seed=7)
    image = PILImage.fromarray(pixels[:, :, 0] if layout == "gray" else pixels)
    stored = _pil_bytes(image, "JPEG", quality=88, **JPEG_LAYOUTS[layout])
    for orientation in (1, 6, 7):
        path = _save(tmp_path / f"o{orientation}.jpg",
                     insert_exif(stored, exif_block(orientation)))
        img = read_image(path, reduce_to=reduce_to)
        with PILImage.open(path) as pil:
            if reduce_to is not None:
                long_side = max(pil.size)
                pil.draft(None, tuple(-(-side * reduce_to // long_side) for side in pil.size))
            expected = np.asarray(ImageOps.exif_transpose(pil))
        np.testing.assert_array_equal(img.data.reshape(expected.shape), expected)
        assert max(expected.shape[:2]) == -(-max(shape) // img.meta["draft_scale"])
        assert img.meta["orientation"] == 1 and img.meta["source_orientation"] == orientation


def test_jpeg_decoder_by_layout(tmp_path, monkeypatch):
    """Grey and colour JPEGs are decoded by libjpeg-turbo directly, once; CMYK goes to
    Pillow; a truncated file is tried, refused and named by Pillow."""
    import simplejpeg

    calls = []
    decode = simplejpeg.decode_jpeg
    monkeypatch.setattr(simplejpeg, "decode_jpeg",
                        lambda *a, **k: calls.append(1) or decode(*a, **k))
    rgb = photo_like(48, 64, seed=2)
    colour = _save(tmp_path / "c.jpg", encode_jpeg(rgb))
    cmyk = _save(tmp_path / "k.jpg", _pil_bytes(PILImage.fromarray(rgb).convert("CMYK"), "JPEG"))
    whole = encode_jpeg(rgb)
    cut = _save(tmp_path / "t.jpg", whole[:len(whole) * 3 // 4])  # in the scan
    assert read_image(colour).data.shape == (48, 64, 3) and len(calls) == 1
    assert read_image(cmyk).data.shape == (48, 64, 3) and len(calls) == 1
    with pytest.raises(BadInputError) as info:
        read_image(cut)
    assert info.value.reason == "truncated" and len(calls) == 2


def test_draft_ignored_for_png(tmp_path):
    path = write_image(photo_like(100, 120, seed=2), tmp_path / "a.png")
    img = read_image(path, reduce_to=10)
    assert img.data.shape == (100, 120, 3) and img.meta["draft_scale"] == 1


# --- limits and errors --------------------------------------------------------------------


def test_oversize_before_decoding(tmp_path, monkeypatch):
    paths = _bomb_files(tmp_path)
    _refuse_decoding(monkeypatch)
    for name, path in paths.items():
        counted = _count_reads(monkeypatch)
        with pytest.raises(OversizeError) as info:
            read_image(path)
        assert info.value.reason == "oversize"
        assert "200,000,000" in str(info.value)
        assert sum(counted) <= 64 * 1024, name  # the header, not the gigabytes it declares


def test_max_pixels_limit_and_none(tmp_path):
    path = write_image(photo_like(30, 40, seed=1), tmp_path / "a.jpg")
    with pytest.raises(OversizeError, match="1,200 pixels exceeds the limit of 1,000"):
        read_image(path, max_pixels=1000)
    assert read_image(path, max_pixels=None).data.shape == (30, 40, 3)
    assert read_image(path, max_pixels=1200).data.shape == (30, 40, 3)


def test_pillow_global_limit_not_used(tmp_path, monkeypatch):
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)
    path = write_image(photo_like(30, 40, seed=1), tmp_path / "a.png")
    assert read_image(path).data.shape == (30, 40, 3)  # no DecompressionBombWarning


@pytest.mark.parametrize("name, reason", [
    ("truncated_half.jpg", "truncated"),
    ("truncated_half.png", "truncated"),
    ("empty.png", "empty_file"),
    ("random.jpg", "unidentified"),
])
def test_bad_files_named(tmp_path, name, reason):
    path = _save(tmp_path / name, bad_corpus_files(0)[name][0])
    with pytest.raises(BadInputError) as info:
        read_image(path)
    assert info.value.reason == reason
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.timeout(10)
def test_missing_directory_fifo(tmp_path):
    with pytest.raises(BadInputError) as info:
        read_image(tmp_path / "nope.jpg")
    assert info.value.reason == "missing"
    with pytest.raises(BadInputError) as info:
        probe_header(tmp_path)
    assert info.value.reason == "not_a_file"
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.jpg")
        with pytest.raises(BadInputError) as info:  # must not block on open
            read_image(tmp_path / "pipe.jpg")
        assert info.value.reason == "not_a_file"


@pytest.mark.parametrize("mode", ["RGB", "L", "1", "I;16"])
def test_tiff_codec_tifffile_lacks_falls_back_to_pillow(tmp_path, monkeypatch, mode):
    """Pillow (libtiff) stays the general fallback for a codec tifffile cannot decode."""
    def lacking(*args, **kwargs):
        raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", lacking)
    rgb = photo_like(24, 32, seed=3)
    image = PILImage.fromarray(rgb)
    if mode == "I;16":
        image = PILImage.fromarray(_full_range_u16((24, 32)))
    elif mode != "RGB":
        image = image.convert(mode)
    path = tmp_path / "lzw.tif"
    image.save(path, compression="tiff_lzw")
    img = read_image(path)
    expected = np.asarray(image.convert("L") if mode == "1" else image)
    np.testing.assert_array_equal(img.data.reshape(expected.shape), expected)
    assert img.data.dtype == (np.uint16 if mode == "I;16" else np.uint8)


class _FailingFile(io.FileIO):
    """A file whose reads fail with ``code`` once past the first ``after`` bytes."""

    code = errno.EIO
    after = 64

    def read(self, size=-1):
        if self.tell() >= self.after:
            raise OSError(self.code, "simulated storage failure")
        return super().read(size)

    def readinto(self, buffer):
        if self.tell() >= self.after:
            raise OSError(self.code, "simulated storage failure")
        return super().readinto(buffer)


@pytest.mark.parametrize("code", [errno.EIO, errno.ETIMEDOUT, errno.ECONNRESET, errno.EAGAIN,
                                  errno.ESTALE])
@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif"])
def test_transient_errors(tmp_path, monkeypatch, code, suffix):
    path = write_image(photo_like(40, 50, seed=1), tmp_path / f"a{suffix}")

    def failing_open(file, mode="r", *args, **kwargs):
        assert mode == "rb"
        handle = _FailingFile(file, "r")
        handle.code = code
        return io.BufferedReader(handle, buffer_size=16)

    monkeypatch.setattr(probe_module, "open", failing_open, raising=False)
    with pytest.raises(TransientError) as info:
        read_image(path)
    assert info.value.errno == code
    assert info.value.error_class == "transient"


def test_transient_error_on_open(tmp_path, monkeypatch):
    path = write_image(photo_like(10, 10, seed=1), tmp_path / "a.png")

    def stale(*args, **kwargs):
        raise OSError(errno.ESTALE, "Stale file handle")

    monkeypatch.setattr(probe_module, "open", stale, raising=False)
    with pytest.raises(TransientError):
        probe_header(path)


def _pillow_probe(path):
    from dagflow.io.probe import count_frames, open_pillow, pillow_layout

    with open(path, "rb") as fp:
        im = open_pillow(fp, "jpeg", path)
        channels, dtype = pillow_layout(im, "jpeg")
        return {"width": im.size[0], "height": im.size[1], "channels": channels,
                "dtype": dtype, "orientation": exif_orientation(im.info.get("exif")),
                "frames": count_frames(im)}


def test_fast_jpeg_header_agrees_with_pillow(tmp_path):
    """The marker walk answers as Pillow would, or leaves the file to Pillow."""
    from dagflow.io.jpeg_header import jpeg_header
    from dagflow.testing.exif import exif_block, garbage_exif_block, insert_exif

    rgb = asymmetric_pattern(37, 53)
    variants = {}
    for mode in ("RGB", "L", "CMYK"):
        image = PILImage.fromarray(rgb).convert(mode)
        for progressive in (False, True):
            buf = io.BytesIO()
            image.save(buf, "JPEG", quality=90, progressive=progressive)
            variants[f"{mode}-{progressive}"] = buf.getvalue()
    base = variants["RGB-False"]
    for orientation in range(1, 9):
        variants[f"exif-{orientation}"] = insert_exif(base, exif_block(orientation))
    variants["garbage-exif"] = insert_exif(base, garbage_exif_block(3))
    big = PILImage.fromarray(rgb)
    buf = io.BytesIO()  # an APP segment past the bytes the walk reads: Pillow's to parse
    big.save(buf, "JPEG", icc_profile=os.urandom(100_000))
    variants["big-icc"] = buf.getvalue()
    buf = io.BytesIO()
    big.save(buf, "MPO", save_all=True, append_images=[big])
    variants["mpo"] = buf.getvalue()
    walked = 0
    for name, data in variants.items():
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(data)
        fast = jpeg_header(data[:65536])
        if name in ("big-icc", "mpo"):
            assert fast is None, name
        else:
            walked += 1
            assert fast == _pillow_probe(path), name
        probed = probe_header(path)
        expected = _pillow_probe(path)
        assert {k: probed[k] for k in expected} == expected, name
    assert walked == len(variants) - 2
    # cut anywhere inside its header, a file is left to Pillow (which names the damage)
    for cut in range(0, 200, 7):
        header = jpeg_header(base[:cut])
        assert header is None or cut >= base.index(b"\xff\xda") + 2

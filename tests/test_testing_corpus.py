"""The public fixtures: synthetic pixels, the sample corpus and the hostile corpus."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from dagflow.exceptions import BadInputError
from dagflow.io import probe_header, read_image
from dagflow.testing import (
    OK,
    bad_corpus_files,
    check_file,
    make_bad_corpus,
    make_sample_corpus,
    photo_like,
)

pytestmark = pytest.mark.filterwarnings("error")

BAD_FILES = bad_corpus_files(seed=0)


def _digests(root: Path, files: list[Path]) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files}


# --- photo_like -------------------------------------------------------------------------------


def test_photo_like_deterministic_and_textured():
    a = photo_like(120, 160, seed=3)
    np.testing.assert_array_equal(a, photo_like(120, 160, seed=3))
    assert not np.array_equal(a, photo_like(120, 160, seed=4))
    assert a.shape == (120, 160, 3) and a.dtype == np.uint8
    assert a.std() > 20  # not flat
    assert np.abs(np.diff(a.astype(int), axis=1)).mean() > 1  # grain / edges
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 1000


@pytest.mark.parametrize("dtype, top", [(np.uint8, 255), (np.uint16, 65535), (np.float32, 1.0)])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_photo_like_dtypes(dtype, top, channels):
    a = photo_like(40, 50, seed=1, channels=channels, dtype=dtype)
    assert a.shape == (40, 50, channels) and a.dtype == dtype
    assert a.min() >= 0 and a.max() <= top and a.max() > 0.6 * top


# --- sample corpus ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("samples")
    return root, make_sample_corpus(root)


def test_sample_corpus_deterministic(corpus, tmp_path):
    root, files = corpus
    again = make_sample_corpus(tmp_path, n_photos=4)
    first, second = _digests(root, files), _digests(tmp_path, again)
    assert set(second) <= set(first)
    assert {name: first[name] for name in second} == second  # byte-identical
    assert sum(name.startswith("photos/") for name in second) == 4
    assert len(second) == len(first) - 20


def test_sample_corpus_contents(corpus):
    root, files = corpus
    names = {p.relative_to(root).as_posix() for p in files}
    assert all(p.is_file() for p in files)
    photos = sorted(n for n in names if n.startswith("photos/"))
    assert len(photos) == 24
    sizes = {tuple(probe_header(root / n)[k] for k in ("width", "height")) for n in photos}
    assert (640, 480) in sizes and (1600, 1200) in sizes and (480, 640) in sizes
    for orientation in range(1, 9):
        assert probe_header(root / f"orientation/orient_{orientation}.jpg")["orientation"] == (
            orientation
        )
    expected = {
        "formats/alpha.png": (4, "uint8"),
        "formats/palette.png": (3, "uint8"),
        "formats/palette_transparent.png": (4, "uint8"),
        "formats/gray8.png": (1, "uint8"),
        "formats/gray.jpg": (1, "uint8"),
        "formats/rgb16_zlib.tif": (3, "uint16"),
        "formats/rgb16.png": (3, "uint16"),
        "formats/gray16.png": (1, "uint16"),
        "formats/photo.webp": (3, "uint8"),
        "formats/animated.gif": (3, "uint8"),
        "formats/cmyk.jpg": (3, "uint8"),
        "formats/png_content.jpg": (3, "uint8"),
    }
    for name, (channels, dtype) in expected.items():
        img = read_image(root / name)
        assert (img.channels, img.dtype.name) == (channels, dtype), name
    assert read_image(root / "formats/animated.gif").meta["frames"] == 3
    assert read_image(root / "formats/png_content.jpg").meta["extension_mismatch"]
    reasons = {}
    for name in ("corrupt/truncated.jpg", "corrupt/random_bytes.jpg", "corrupt/empty.png"):
        with pytest.raises(BadInputError) as info:
            read_image(root / name)
        reasons[name] = info.value.reason
    assert reasons == {"corrupt/truncated.jpg": "truncated",
                       "corrupt/random_bytes.jpg": "unidentified",
                       "corrupt/empty.png": "empty_file"}


def test_sample_orientations_read_upright(corpus):
    root, _files = corpus
    reference = read_image(root / "orientation/orient_1.jpg").data.astype(int)
    for orientation in range(2, 9):
        img = read_image(root / f"orientation/orient_{orientation}.jpg")
        assert img.data.shape == reference.shape
        assert np.abs(img.data.astype(int) - reference).mean() < 8, orientation
        assert img.data[4, 4].tolist() == pytest.approx([230, 20, 20], abs=30)


# --- hostile corpus ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    expectations = make_bad_corpus(root, seed=0)
    assert expectations == {name: exp for name, (_data, exp) in BAD_FILES.items()}
    return root


def test_bad_corpus_deterministic_and_sized():
    again = bad_corpus_files(seed=0)
    assert {n: d for n, (d, _e) in again.items()} == {n: d for n, (d, _e) in BAD_FILES.items()}
    assert len(BAD_FILES) >= 50
    assert sum(name.startswith("mutant_") for name in BAD_FILES) == 20
    for name in ("bomb_20000.png", "bomb_60000.tif"):
        assert len(BAD_FILES[name][0]) < 200_000


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_corpus_file(bad_dir, name):
    expectation = BAD_FILES[name][1]
    outcome = check_file(bad_dir / name, expectation)  # only BadInputError may escape read
    assert expectation.allows(outcome)
    try:
        header = probe_header(bad_dir / name)
    except BadInputError:
        assert not expectation.probe_ok, f"{name}: header should probe"
    else:
        assert header["width"] > 0 and header["height"] > 0
    if outcome == OK and expectation.shape is not None:
        assert read_image(bad_dir / name).data.shape == expectation.shape


# --- TIFF corpus ------------------------------------------------------------------------------


def test_tiff_corpus_is_deterministic_and_written(tmp_path):
    from dagflow.testing import tiff_corpus_files, write_tiff_corpus

    first, again = tiff_corpus_files(seed=3), tiff_corpus_files(seed=3)
    assert {n: c.data for n, c in first.items()} == {n: c.data for n, c in again.items()}
    assert tiff_corpus_files(seed=4)["lzw_rgb.tif"].data != first["lzw_rgb.tif"].data
    paths = write_tiff_corpus(tmp_path, seed=3)
    assert sorted(paths) == sorted(first)
    assert all(paths[n].read_bytes() == first[n].data for n in first)

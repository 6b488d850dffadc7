"""Aggregate ops: stats rows and their Parquet table; the contact sheet's layout."""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import pyarrow.parquet as pq
import pytest

from dagflow.image import Image
from dagflow.ops import get_op
from dagflow.ops.aggregate import (
    image_stats,
    render_contact_sheet,
    sheet_layout,
    thumbnail,
)

RNG = np.random.default_rng(4)


def item(i):
    return {"item_id": i, "path": f"/data/img{i}.png", "rel": f"img{i}.png"}


def test_stats_rows_match_numpy():
    arr = RNG.integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    row = image_stats(Image(arr), item(7))
    assert row["item_id"] == 7 and row["rel"] == "img7.png"
    assert (row["width"], row["height"], row["channels"], row["dtype"]) == (30, 20, 3, "uint16")
    for ch in range(3):
        plane = arr[:, :, ch].astype(np.float64)
        assert row[f"mean_{ch}"] == pytest.approx(plane.mean())
        assert row[f"std_{ch}"] == pytest.approx(plane.std())
        assert row[f"min_{ch}"] == plane.min() and row[f"max_{ch}"] == plane.max()
    assert row["mean"] == pytest.approx(arr.mean())
    assert row["std"] == pytest.approx(arr.astype(np.float64).std())
    assert row["min"] == arr.min() and row["max"] == arr.max()


def test_stats_chunks_reduce_to_one_parquet(tmp_path):
    spec = get_op("stats")
    params = spec.resolve_params({})[0]
    gray = Image(RNG.integers(0, 256, (5, 6, 1), dtype=np.uint8))
    rgba = Image(RNG.integers(0, 256, (7, 8, 4), dtype=np.uint8), {"space": "rgba"})
    part1 = spec.func([rgba, None], [item(3), item(4)], **params)
    part2 = spec.func([gray], [item(1)], **params)
    dest = str(tmp_path / "out" / "stats")
    path = spec.reduce([part1, part2], dest, **params)
    assert path == dest + ".parquet" and os.path.exists(path)
    assert sorted(os.listdir(tmp_path / "out")) == ["stats.parquet"]
    table = pq.read_table(path).to_pydict()
    assert table["item_id"] == [1, 3]
    assert table["channels"] == [1, 4]
    assert table["mean_3"][0] is None and table["mean_3"][1] == pytest.approx(
        rgba.data[:, :, 3].mean())


def test_stats_empty(tmp_path):
    path = get_op("stats").reduce([[], []], str(tmp_path / "s"))
    assert pq.read_table(path).num_rows == 0


def test_sheet_layout():
    width, height, boxes = sheet_layout(10, thumb=50, padding=5, label_height=10)
    assert width == 4 * 55 + 5 and height == 3 * 65 + 5
    assert boxes[0] == (5, 5) and boxes[3] == (5 + 3 * 55, 5) and boxes[4] == (5, 70)
    assert sheet_layout(3, 10, columns=10, padding=0)[:2] == (30, 10)
    assert sheet_layout(0, 10, padding=0)[:2] == (10, 10)


def test_thumbnail_rgb8_long_side():
    img16 = Image(np.full((300, 200, 1), 65535, np.uint16))
    t = thumbnail(img16, 64)
    assert t.shape == (64, 43, 3) and t.dtype == np.uint8 and (t == 255).all()
    rgba = np.zeros((10, 10, 4), np.uint8)
    t = thumbnail(Image(rgba, {"space": "rgba"}), 64, background=[0, 0, 255])
    assert t.shape == (10, 10, 3) and (t == [0, 0, 255]).all()


def test_contact_sheet_tile_placement():
    colours = [10, 60, 110, 160, 210]
    tiles = [{"item_id": i, "label": str(i), "thumb": np.full((16, 8, 3), c, np.uint8)}
             for i, c in enumerate(colours)]
    sheet = render_contact_sheet(tiles, thumb=16, columns=2, padding=2, background=0,
                                 labels=False)
    width, height, boxes = sheet_layout(5, 16, 2, 2)
    assert sheet.shape == (height, width, 3)
    for (x, y), c in zip(boxes, colours, strict=True):
        assert (sheet[y:y + 16, x + 4:x + 12] == c).all()
        assert (sheet[y:y + 16, x:x + 4] == 0).all()


def test_contact_sheet_reduce_sorted(tmp_path, monkeypatch):
    written = {}

    def fake_write_image(image, path, **kwargs):
        written.update(image=image, path=path, kwargs=kwargs)
        return path

    monkeypatch.setitem(sys.modules, "dagflow.io",
                        types.SimpleNamespace(write_image=fake_write_image))
    spec = get_op("contact_sheet")
    params = spec.resolve_params({"thumb": 16, "columns": 3, "padding": 0, "labels": False,
                                  "format": "png", "background": 0})[0]
    images = [Image(np.full((8, 8, 3), 20 * i, np.uint8)) for i in range(5)]
    part_a = spec.func(images[3:], [item(3), item(4)], **params)
    part_b = spec.func(images[:3], [item(0), item(1), item(2)], **params)
    path = spec.reduce([part_a, part_b], str(tmp_path / "sheet"), **params)
    assert path == str(tmp_path / "sheet.png") == written["path"]
    sheet = written["image"].data
    assert sheet.shape == (32, 48, 3)
    for i in range(5):
        y, x = (i // 3) * 16 + 4, (i % 3) * 16 + 4
        assert sheet[y, x, 0] == 20 * i


def test_contact_sheet_labels_drawn_below_tiles():
    tiles = [{"item_id": 0, "label": "a/very/long/relative/path.jpg",
              "thumb": np.zeros((32, 32, 3), np.uint8)}]
    sheet = render_contact_sheet(tiles, thumb=32, padding=0, background=255)
    assert sheet.shape == (32 + 14, 32, 3)
    strip = sheet[32:]
    assert (strip < 128).any() and (strip == 255).any()

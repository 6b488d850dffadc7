"""Aggregate partials are stored as data and read back as data: nothing under an output
directory is ever unpickled."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dagflow
from dagflow import Node, Workflow
from dagflow.exceptions import PartialDataError
from dagflow.ops.partials import (
    KEY_COLUMN,
    collect_partials,
    read_partial,
    rows_table,
    table_rows,
    write_partial,
)
from dagflow.ops.registry import get_op, register_op

STATS = Workflow("w", [Node("load", "load"), Node("stats", "stats", after="load")])


def roundtrip(rows, tmp_path, keys=None):
    keys = keys or [f"k{i}" for i in range(len(rows))]
    path = write_partial(tmp_path / "p.parquet", rows, keys, node_key="nk")
    node_key, got_keys, got = read_partial(path)
    assert (node_key, got_keys) == ("nk", keys)
    return got


# -- the storage ------------------------------------------------------------------------


def test_rows_of_scalars_and_arrays_round_trip(tmp_path):
    thumb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    hist = np.linspace(0, 1, 5, dtype=">f4")  # another byte order, kept
    rows = [
        {"item_id": 3, "label": "a/x.jpg", "thumb": thumb, "mean": 1.5, "ok": True,
         "n": np.int32(7), "f": np.float32(0.25), "raw": b"\x00\x01", "hist": hist},
        {"item_id": 4, "label": "y", "thumb": None, "mean": 2, "ok": False, "n": None,
         "f": 1.0, "raw": None, "hist": hist[::2]},  # a strided view
    ]
    got = roundtrip(rows, tmp_path)
    assert [r["item_id"] for r in got] == [3, 4]
    assert got[0]["label"] == "a/x.jpg" and got[1]["thumb"] is None
    assert got[1]["mean"] == 2.0 and isinstance(got[1]["mean"], float)  # int+float: float
    assert (got[0]["ok"], got[0]["n"], got[0]["f"], got[0]["raw"]) == (True, 7, 0.25, b"\0\1")
    np.testing.assert_array_equal(got[0]["thumb"], thumb)
    assert got[0]["thumb"].dtype == np.uint8 and got[0]["thumb"].flags.writeable
    assert got[0]["hist"].dtype == np.dtype(">f4")
    np.testing.assert_array_equal(got[1]["hist"], hist[::2])


def test_the_built_in_aggregates_partials_round_trip(tmp_path):
    from dagflow.image import Image
    from dagflow.ops.aggregate import contact_sheet, stats

    rng = np.random.default_rng(0)
    images = [Image(rng.integers(0, 255, (9, 7, 3), dtype=np.uint8), {"space": "rgb"}),
              Image(rng.integers(0, 65535, (5, 6, 1), dtype=np.uint16), {"space": "gray"})]
    items = [{"item_id": i, "path": f"/in/{i}.png", "rel": f"{i}.png"} for i in range(2)]
    for rows in (stats(images, items), contact_sheet(images, items, thumb=8)):
        got = roundtrip(rows, tmp_path)
        for want, have in zip(rows, got, strict=True):
            for name, value in want.items():
                np.testing.assert_array_equal(have[name], value)


@pytest.mark.parametrize(("rows", "why"), [
    ([{"a": object()}], "column 'a' of row 0 is object"),
    ([{"a": 1}, {"a": [1, 2]}], "column 'a' of row 1 is list"),
    ([{"a": {"b": 1}}], "column 'a' of row 0 is dict"),
    ([{"a": np.array([object()], dtype=object)}], "column 'a' of row 0 is ndarray"),
    ([{"a": 1}, "row"], "row 1 is str"),
    ({"a": [1, 2]}, "the partial is dict"),
    ([{1: 2}, {1: 2}], "a column name of row 0 is int"),
    ([{KEY_COLUMN: "x"}, {}], "a column name of row 0"),
    ([{"a": 1}, {"a": "x"}], "column 'a' mixes int and str"),
    ([{"a": 2**70}, {"a": 1}], "column 'a' cannot be stored"),
])
def test_a_partial_that_is_not_data_is_refused_saying_what(tmp_path, rows, why):
    keys = [f"k{i}" for i in range(len(rows))]
    with pytest.raises(PartialDataError) as info:
        write_partial(tmp_path / "p.parquet", rows, keys, node_key="nk", op="mine")
    assert why in str(info.value)
    assert "aggregate op 'mine'" in str(info.value)
    assert not (tmp_path / "p.parquet").exists()
    with pytest.raises(PartialDataError, match="returned 2 rows for 3 images"):
        rows_table([{}, {}], ["a", "b", "c"])


def test_reading_refuses_what_is_not_a_partial(tmp_path):
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"a": [1]}), plain)
    with pytest.raises(PartialDataError, match="not an aggregate partial"):
        read_partial(plain)
    good = rows_table([{"v": np.zeros(4, np.float64)}], ["k"])
    meta = {b"dagflow.partial": b"rows/1", b"dagflow.node_key": b"nk"}
    for name, cell, why in [
            ("object", {"dtype": "|O", "shape": [1], "data": b"\0" * 8}, "not a numeric"),
            ("struct", {"dtype": "[('a', 'O')]", "shape": [1], "data": b"\0" * 8},
             "not a numeric"),
            ("length", {"dtype": "<f8", "shape": [5], "data": b"\0" * 32}, "not a numeric"),
            ("garbage", {"dtype": "not a dtype", "shape": [1], "data": b"\0"}, "not a numeric")]:
        cells = pa.array([cell], good.schema.field("v").type)
        table = good.set_column(1, "v", cells).replace_schema_metadata(meta)
        path = tmp_path / f"{name}.parquet"
        pq.write_table(table, path)
        with pytest.raises(PartialDataError, match=why):
            read_partial(path)
    nested = pa.table({KEY_COLUMN: ["k"], "v": pa.array([[1, 2]])}).replace_schema_metadata(meta)
    pq.write_table(nested, tmp_path / "nested.parquet")
    with pytest.raises(PartialDataError, match="which no partial holds"):
        read_partial(tmp_path / "nested.parquet")
    assert np.array_equal(table_rows(good)[0]["v"], np.zeros(4))


def test_aggregate_ops_declare_their_partial():
    def agg(images, items):
        return [{} for _ in images]

    with pytest.raises(ValueError, match="needs reduce= and partial="):
        register_op("no_reduce_demo", kind="aggregate")(agg)
    with pytest.raises(ValueError, match="needs reduce= and partial="):
        register_op("pickled_demo", kind="aggregate", reduce=lambda p, d: d,
                    partial="pickle")(agg)
    with pytest.raises(ValueError, match="aggregate ops only"):
        register_op("not_agg_demo", partial="rows")(agg)
    assert get_op("stats").partial == get_op("contact_sheet").partial == "rows"
    assert register_op("default_partial_demo", kind="aggregate", reduce=lambda p, d: d,
                       replace=True)(agg) is agg
    assert get_op("default_partial_demo").partial == "rows"


# -- nothing is unpickled ---------------------------------------------------------------


class Planted:
    """What someone who can write the output directory plants: unpickling it writes a
    marker file (a stand-in for any code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_is_never_loaded(tmp_path, photos, client):
    out = tmp_path / "out"
    first = dagflow.run(STATS, photos, out, client=client, progress=False)
    assert first.succeeded == 12
    partials = out / "_dagflow" / "aggregates" / "stats"
    marker = tmp_path / "code-ran"
    payload = pickle.dumps({"node_key": "any", "keys": [], "partial": Planted(marker)})
    (partials / "planted.pkl").write_bytes(payload)  # what the old storage unpickled
    (partials / "zzz-planted.parquet").write_bytes(payload)  # a pickle by another name
    os.utime(partials / "zzz-planted.parquet", ns=(2**62, 2**62))  # and the newest file
    again = dagflow.run(STATS, photos, out, client=client, progress=False)
    assert again.executed == 0 and not again.errors
    assert not marker.exists()
    table = pq.read_table(again.aggregates["stats"])
    assert table.num_rows == 12  # every item, from the partials of the first run
    assert sorted(table.column("item_id").to_pylist()) == list(range(12))


def test_a_user_aggregate_whose_partial_is_not_data_fails_its_items_clearly(
        tmp_path, photos, client):
    @register_op("bad_partial_demo", kind="aggregate", reduce=lambda parts, dest: dest,
                 replace=True)
    def bad_partial_demo(images, items):
        """Returns something that is not data."""
        return [{"image": image} for image in images]

    wf = Workflow("w", [Node("load", "load"), Node("agg", "bad_partial_demo", after="load")])
    result = dagflow.run(wf, photos, tmp_path / "out", client=client, progress=False)
    assert (result.succeeded, result.failed) == (0, 12)
    failure = result.failures[0]
    assert (failure["node_id"], failure["error_type"]) == ("agg", "PartialDataError")
    assert "column 'image' of row 0 is Image" in failure["error_message"]
    assert not list((tmp_path / "out" / "_dagflow" / "aggregates").rglob("*.parquet"))


# -- nowhere in dagflow -----------------------------------------------------------------

#: Calls that turn bytes into code or objects that run code; each use below is allowed
#: for a reason (the bytes never come from the disk).
_LOADERS = {("pickle", "load"), ("pickle", "loads"), ("cloudpickle", "load"),
            ("cloudpickle", "loads"), ("marshal", "load"), ("marshal", "loads"),
            ("dill", "load"), ("dill", "loads"), ("yaml", "load"), ("yaml", "unsafe_load"),
            ("yaml", "full_load"), ("shelve", "open"), ("pd", "read_pickle"),
            ("pandas", "read_pickle")}
_ALLOWED = {("compile/spec.py", "pickle.loads")}  # a chunk's items, pickled for the network


def test_nothing_in_dagflow_loads_code_from_bytes():
    """A static guard: no module of dagflow unpickles (or loads YAML unsafely, or loads
    .npy with pickles allowed), apart from a chunk's items sent over the network."""
    import ast
    from pathlib import Path

    root = Path(dagflow.__file__).parent
    found = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else ""
            call = (name, node.func.attr)
            where = path.relative_to(root).as_posix()
            if call in _LOADERS:
                found.add((where, f"{name}.{node.func.attr}"))
            if node.func.attr == "load" and name in ("np", "numpy") and any(
                    k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant)
                                                     and k.value.value is False)
                    for k in node.keywords):
                found.add((where, "np.load(allow_pickle=...)"))
    assert found == _ALLOWED


def test_collect_partials_newest_row_per_item_and_only_this_node(tmp_path, caplog):
    write_partial(tmp_path / "a.parquet", [{"v": 1}, {"v": 2}], ["k1", "k2"], node_key="n")
    write_partial(tmp_path / "b.parquet", [{"v": 20}, {"v": 30}], ["k2", "k3"], node_key="n")
    os.utime(tmp_path / "a.parquet", ns=(10**18, 10**18))  # the older one
    write_partial(tmp_path / "c.parquet", [{"v": 99}], ["k1"], node_key="other-params")
    (tmp_path / "torn.parquet").write_bytes(b"PAR1 torn")
    (tmp_path / "link.parquet").symlink_to(tmp_path / "c.parquet")
    with caplog.at_level("WARNING", logger="dagflow.ops.partials"):
        got = collect_partials(tmp_path, "n", {"k1", "k2", "k3", "k4"}, node="stats")
    assert sorted(r["v"] for part in got for r in part) == [1, 20, 30]
    assert "ignoring" in caplog.text and "torn.parquet" in caplog.text
    assert collect_partials(tmp_path, "n", {"k3"}) == [[{"v": 30}]]

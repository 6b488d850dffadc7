"""Output collisions are found when a run is planned, before anything is made; the save
node's ``name`` template tells the outputs apart, deterministically."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image as PILImage

import dagflow
from dagflow import Node, Workflow
from dagflow.cli import main
from dagflow.exceptions import OutputCollisionError, WorkflowValidationError
from dagflow.io.atomic import clean_parts
from dagflow.ops.naming import output_name, output_names
from dagflow.runtime.collisions import _cleaned, find_collisions
from dagflow.runtime.plan import plan


def save_wf(**params) -> Workflow:
    return Workflow("w", [Node("load", "load"),
                          Node("save", "save", {"format": "png", **params}, after="load")])


def write_image(path, value=0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((8, 12, 3), value, dtype=np.uint8)
    PILImage.fromarray(pixels).save(path)


@pytest.fixture
def same_stems(tmp_path):
    """x.jpg, x.png and x.tif: three images that save as PNG would all make x.png."""
    directory = tmp_path / "in"
    for i, ext in enumerate(("jpg", "png", "tif")):
        write_image(directory / f"x.{ext}", 40 * i)
    write_image(directory / "y.jpg")
    return directory


def blake(path) -> str:
    return hashlib.blake2b(str(path).encode(), digest_size=4).hexdigest()


def items(*rels: str) -> list[dict]:
    return [{"item_id": i, "path": f"/in/{r}", "rel": r} for i, r in enumerate(rels)]


# -- found before anything runs ---------------------------------------------------------


def test_same_stem_different_extensions_is_refused_before_anything_is_made(
        tmp_path, same_stems, client):
    out = tmp_path / "out"
    with pytest.raises(OutputCollisionError) as info:
        dagflow.run(save_wf(), same_stems, out, client=client)
    assert not out.exists()
    assert list(info.value.collisions) == ["x.png"]
    assert info.value.collisions["x.png"] == [
        f"{same_stems / name} (node 'save')" for name in ("x.jpg", "x.png", "x.tif")]
    message = str(info.value)
    assert f"{out / 'x.png'}  <-  {same_stems / 'x.jpg'} (node 'save')" in message
    assert "name: \"{rel}_{ext}\"" in message
    with pytest.raises(OutputCollisionError):  # `dagflow plan` shows it too
        plan(save_wf(), same_stems, out)
    assert not out.exists()


def test_the_cli_exits_2_naming_the_colliding_inputs(tmp_path, same_stems):
    wf = tmp_path / "wf.yaml"
    wf.write_text(save_wf().to_yaml())
    out = tmp_path / "out"
    for command in ("run", "plan"):
        result = CliRunner().invoke(main, [command, str(wf), "-i", str(same_stems),
                                           "-o", str(out)])
        assert result.exit_code == 2, result.output
        assert "outputs would overwrite each other (nothing ran)" in result.output
        assert all(str(same_stems / f"x.{e}") in result.output for e in ("jpg", "png", "tif"))
    assert not out.exists()


def test_manifest_entries_with_the_same_relative_name(tmp_path, client):
    """Absolute paths outside the manifest's directory are named by their file name:
    two of them with one name collide."""
    a, b = tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg"
    write_image(a)
    write_image(b, 9)
    manifest = tmp_path / "lists" / "m.csv"
    manifest.parent.mkdir()
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([["path"], [a], [b]])
    with pytest.raises(OutputCollisionError) as info:
        dagflow.run(save_wf(), manifest, tmp_path / "out", client=client)
    assert info.value.collisions == {"x.png": [f"{a} (node 'save')", f"{b} (node 'save')"]}
    # the template names them by their directory, wherever it is
    for template, names in (("{parent}/{rel}", {"a/x.png", "b/x.png"}),
                            ("{rel}_{hash}", {f"x_{blake(a)}.png", f"x_{blake(b)}.png"})):
        out = tmp_path / template.replace("/", "_")
        result = dagflow.run(save_wf(name=template), manifest, out, client=client,
                             progress=False)
        assert result.succeeded == 2
        assert {p.relative_to(out).as_posix() for p in out.rglob("*.png")} == names


def test_sinks_in_other_subdirs_and_aggregates_count_too():
    wf = Workflow("w", [
        Node("load", "load"),
        Node("plain", "save", {"format": "png"}, after="load"),
        Node("sharp", "save", {"format": "png", "subdir": "sharp"}, after="load"),
        Node("sheet", "contact_sheet", after="load"),
    ])
    found = find_collisions(wf, items("sharp/x.jpg", "x.jpg", "sheet.png", "y.jpg"))
    assert found == {  # not sheet.png: the sheet is sheet.jpg
        "sharp/x.png": ["/in/sharp/x.jpg (node 'plain')", "/in/x.jpg (node 'sharp')"]}
    found = find_collisions(wf, items("sheet.jpg", "sheet.png"))
    assert found["sheet.png"] == ["/in/sheet.jpg (node 'plain')", "/in/sheet.png (node 'plain')"]
    sheet_png = Workflow("w", [*wf.nodes[:2], Node("sheet", "contact_sheet",
                                                   {"format": "png"}, after="load")])
    found = find_collisions(sheet_png, items("sheet.jpg", "other.jpg"))
    assert found == {"sheet.png": ["/in/sheet.jpg (node 'plain')", "aggregate node 'sheet'"]}


def test_a_file_where_another_output_needs_a_directory():
    """``a.jpg`` saves as ``a.png``; ``a.png/b.jpg`` (a directory named like an image)
    saves inside ``a.png/``: one of the two cannot be written."""
    found = find_collisions(save_wf(), items("a.jpg", "a.png/b.jpg", "c.jpg"))
    assert list(found) == ["a.png"]
    assert found["a.png"][0] == "/in/a.jpg (node 'save')"
    assert "whose output a.png/b.png needs a.png as a directory" in found["a.png"][1]


def test_outputs_inside_the_state_directory_are_refused():
    found = find_collisions(save_wf(subdir="_dagflow"), items("x.jpg"))
    assert "inside dagflow's state directory '_dagflow'" in found["_dagflow/x.png"][-1]
    found = find_collisions(save_wf(), items("_dagflow/runs/x.jpg", "y.jpg"))
    assert list(found) == ["_dagflow/runs/x.png"]


def test_names_equal_once_cleaned_collide():
    """Outputs are compared as the workers write them: NFC-normalised, control
    characters removed, backslashes as separators, long names shortened."""
    found = find_collisions(save_wf(), items("e\u0301.jpg", "\u00e9.png", "a\x07b.jpg",
                                             "ab.tif", "d\\f.jpg", "d/f.png", "ok.jpg"))
    assert set(found) == {"\u00e9.png", "ab.png", "d/f.png"}
    long_a, long_b = "x" * 300 + "a.jpg", "x" * 300 + "b.jpg"  # shortened apart, by hash
    assert find_collisions(save_wf(), items(long_a, long_b)) == {}


@pytest.mark.parametrize("rels", [
    ["a/b.jpg", "c.jpg", "d/e/f.PNG"],
    [".hidden.jpg", "a/.b.png", "a.b/c", "a.b/c.jpg", "noext", "a/..x.jpg", "...jpg"],
    ["x/./y.jpg", "x//z.jpg", "./w.jpg", "q/", "é/ü.jpg", "t\\u.jpg", "c:x.jpg",
     "n" * 70 + ".jpg", "tab\there.jpg", "a/../b.jpg"],
])
def test_the_fast_paths_give_what_the_workers_write(rels):
    """Planning names a million items with shortcuts; they must agree with the
    per-item functions the workers use."""
    batch = items(*rels)
    for template in (None, "{rel}", "{dir}/{stem}_{ext}"):
        assert output_names(template, batch, "n") == [output_name(template, i, "n")
                                                      for i in batch]
    names = output_names(None, batch, "n")

    def one(name):
        try:
            return "/".join(clean_parts(name))
        except dagflow.exceptions.BadInputError:
            return None

    assert _cleaned(names) == [one(n) for n in names]


# -- the name template ------------------------------------------------------------------


def test_the_name_template_tells_them_apart_deterministically(tmp_path, same_stems, client):
    out = tmp_path / "out"
    wf = save_wf(name="{rel}_{ext}")
    result = dagflow.run(wf, same_stems, out, client=client, progress=False)
    assert (result.succeeded, result.failed) == (4, 0)
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == ["x_jpg.png", "x_png.png", "x_tif.png", "y_jpg.png"]
    levels = {p.name: int(np.asarray(PILImage.open(p))[0, 0, 0]) for p in out.glob("*.png")}
    assert (levels["x_jpg.png"] in range(-2, 3), levels["x_png.png"], levels["x_tif.png"]) \
        == (True, 40, 80)  # each item's own pixels (the JPEG within its quantisation)
    records = pq.read_table(result.run_dir / "records").to_pylist()
    paths = {r["rel"]: r["output_path"] for r in records if r["node_id"] == "save"}
    assert paths["x.tif"] == "x_tif.png"  # relative to the output root
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.png")}
    again = dagflow.run(wf, same_stems, out, client=client, progress=False)
    assert again.executed == 0  # the same item, node and parameters: the same path
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.png")} == mtimes


def test_every_field_of_the_template():
    item = {"rel": "a/b/x.jpg"}
    item = {"rel": "a/b/x.jpg", "path": "/data/in/a/b/x.jpg"}
    assert output_name("{rel}|{dir}|{stem}|{ext}|{file}|{parent}|{node}", item, "thumbs") \
        == "a/b/x|a/b|x|jpg|x.jpg|b|thumbs"
    digest = output_name("{hash}", item, "n")
    assert len(digest) == 8 and digest == output_name("{hash}", dict(item), "m")
    assert digest != output_name("{hash}", {**item, "path": "/data/in/a/c/x.jpg"}, "n")
    assert output_name("{dir}/{stem}", {"rel": "x.tif"}, "n") == "/x"  # cleaned to x
    wf = save_wf(name="{node}/{dir}/{stem}")
    assert find_collisions(wf, items("x.jpg", "sub/x.jpg")) == {}


@pytest.mark.parametrize(("template", "why"), [
    ("{nam}", "unknown field {nam}"),
    ("../{stem}", "must stay inside the output directory"),
    ("{dir}/../{stem}", "must stay inside the output directory"),
    ("/abs/{stem}", "must stay inside the output directory"),
    ("C:{stem}", "must stay inside the output directory"),
    ("{stem!r}", "no format or conversion"),
    ("{stem:>20}", "no format or conversion"),
    ("{ext}", "names no file"),
    ("{dir}", "names no file"),
    ("{stem", "not a valid template"),
    ("", "non-empty template"),
    ("a\\{stem}", "use '/'"),
    ("a\x00{stem}", "control characters"),
])
def test_a_bad_template_is_refused_before_anything_runs(tmp_path, photos, template, why):
    with pytest.raises(WorkflowValidationError, match="parameter 'name'") as info:
        dagflow.run(save_wf(name=template), photos, tmp_path / "out")
    assert why in str(info.value)
    assert not (tmp_path / "out").exists()


def test_two_save_nodes_with_the_same_template_and_place_collide_in_validation():
    nodes = [Node("load", "load"),
             Node("a", "save", {"format": "png", "name": "{stem}"}, after="load"),
             Node("b", "save", {"format": "png", "name": "{stem}"}, after="load")]
    with pytest.raises(WorkflowValidationError, match="would write the same output files"):
        Workflow("w", nodes).validate()
    nodes[2] = Node("b", "save", {"format": "png", "name": "{stem}_b"}, after="load")
    Workflow("w", nodes).validate()
    nodes[1] = Node("a", "save", {"format": "png", "name": "{node}/{stem}"}, after="load")
    nodes[2] = Node("b", "save", {"format": "png", "name": "{node}/{stem}"}, after="load")
    Workflow("w", nodes).validate()


def test_the_sample_corpus_saves_without_collisions(tmp_path):
    """``make demo`` runs examples/thumbnails.yaml over the sample corpus, whose
    formats/ directory once held gray.jpg beside gray.png (one gray.jpg out of two)."""
    from dagflow.inputs import resolve_inputs
    from dagflow.testing import make_sample_corpus

    make_sample_corpus(tmp_path / "sample", n_photos=2)
    demo = Workflow.from_yaml(Path(__file__).parents[1] / "examples" / "thumbnails.yaml")
    assert find_collisions(demo, resolve_inputs(tmp_path / "sample").items) == {}

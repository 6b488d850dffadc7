"""Workflows: Python and YAML forms, conditions, and every validation error."""

from __future__ import annotations

import pytest
from dask.utils import key_split

from dagflow import Node, Workflow, WorkflowValidationError
from dagflow.workflow import ConditionError, parse_condition, survives_key_split

THUMBNAILS_YAML = """
name: thumbnails
nodes:
  - id: load
    op: load
    params: {auto_orient: true}
  - id: small
    op: resize
    after: [load]
    params: {long_side: 512}
  - id: save
    op: save
    after: [small]
    params: {format: jpeg, quality: 85}
"""


def thumbnails() -> Workflow:
    return Workflow("thumbnails", [
        Node("load", "load", {"auto_orient": True}),
        Node("small", "resize", {"long_side": 512}, after=["load"]),
        Node("save", "save", {"format": "jpeg", "quality": 85}, after=["small"]),
    ])


def problems_of(wf: Workflow) -> list[str]:
    with pytest.raises(WorkflowValidationError) as info:
        wf.validate()
    assert isinstance(info.value, ValueError)
    return info.value.problems


def test_yaml_and_python_give_the_same_workflow():
    from_yaml = Workflow.from_yaml(THUMBNAILS_YAML)
    assert from_yaml == thumbnails()
    assert Workflow.from_dict(from_yaml.to_dict()) == from_yaml
    assert Workflow.from_yaml(from_yaml.to_yaml()) == from_yaml
    assert from_yaml.validate() is from_yaml


def test_yaml_file(tmp_path):
    path = tmp_path / "wf.yaml"
    path.write_text(THUMBNAILS_YAML)
    assert Workflow.from_yaml(path) == thumbnails()
    assert Workflow.from_yaml(str(path)) == thumbnails()


def test_topology_fan_out_and_fan_in():
    wf = Workflow("dag", [
        Node("load", "load"),
        Node("a", "gaussian", {"sigma": 1.0}, after="load"),
        Node("b", "grayscale", after="load"),
        Node("mix", "composite", {"mode": "blend", "alpha": 0.5}, after=["a", "b"]),
        Node("save", "save", after="mix"),
    ]).validate()
    order = [n.id for n in wf.topological_order()]
    assert order.index("load") < order.index("a") < order.index("mix") < order.index("save")
    assert order.index("b") < order.index("mix")
    assert wf.children()["load"] == ["a", "b"]
    assert wf.descendants("a") == {"mix", "save"}
    assert [n.id for n in wf.leaves()] == ["save"]
    assert {n.id for n in wf.to_outputs("a").nodes} == {"load", "a"}


def test_cycle_names_the_nodes():
    wf = Workflow("w", [
        Node("load", "load"),
        Node("a", "gaussian", {"sigma": 1.0}, after="c"),
        Node("b", "gaussian", {"sigma": 1.0}, after="a"),
        Node("c", "gaussian", {"sigma": 1.0}, after="b"),
    ])
    (problem,) = [p for p in problems_of(wf) if "cycle" in p]
    for nid in ("a", "b", "c"):
        assert nid in problem


def test_unknown_op_suggests_close_names():
    (problem,) = problems_of(Workflow("w", [Node("load", "load"),
                                            Node("g", "gausian", after="load")]))
    assert "unknown op 'gausian'" in problem and "'gaussian'" in problem and "'g'" in problem


def test_missing_and_ill_typed_parameters_name_node_parameter_and_expectation():
    problems = problems_of(Workflow("w", [
        Node("load", "load"),
        Node("blur", "gaussian", {"sigma": "big"}, after="load"),
        Node("sz", "resize", {"long_side": 512, "scale": 0.5}, after="load"),
    ]))
    text = "\n".join(problems)
    assert "node 'blur'" in text and "'sigma'" in text and "number" in text
    assert "node 'sz'" in text


def test_missing_required_parameter():
    problems = problems_of(Workflow("w", [Node("load", "load"),
                                          Node("t", "crop", after="load")]))
    assert any("node 't'" in p and "exactly one of 'box'" in p for p in problems)


def test_unknown_parameter_suggests():
    problems = problems_of(Workflow("w", [Node("load", "load"),
                                          Node("g", "gaussian", {"sigmaa": 1}, after="load")]))
    assert any("unknown parameter 'sigmaa'" in p and "'sigma'" in p for p in problems)


def test_after_naming_no_node():
    problems = problems_of(Workflow("w", [Node("load", "load"),
                                          Node("g", "gaussian", {"sigma": 1}, after="lod")]))
    assert any("'after' names 'lod'" in p for p in problems)


def test_duplicate_ids():
    problems = problems_of(Workflow("w", [Node("load", "load"), Node("load", "load")]))
    assert any("duplicate node id 'load'" in p for p in problems)


@pytest.mark.parametrize("bad_id", ["resize-2", "2x", "_private", "a b", "x-deadbeef", "naïve"])
def test_ids_that_would_not_survive_dask_key_naming(bad_id):
    problems = problems_of(Workflow("w", [Node(bad_id, "load")]))
    assert any("would not survive Dask's task naming" in p for p in problems)


@pytest.mark.parametrize("node_id", ["load", "thumb_512", "make-thumbs", "A1", "x-y-z", "resize-2",
                                     "2x", "_p", "x-deadbeef", "a-b1", "load-aaaaaaaa"])
def test_key_split_rule_agrees_with_dask(node_id):
    # dagflow's rule is Dask's, a little stricter (ids start with a letter)
    token = "0123456789abcdef0123456789abcdef"
    kept = key_split(f"{node_id}-{token}") == node_id
    assert survives_key_split(node_id) <= kept
    if node_id[0].isalpha():
        assert survives_key_split(node_id) == kept


def test_wrong_number_of_inputs_and_children_of_a_sink():
    problems = problems_of(Workflow("w", [
        Node("load", "load"),
        Node("mix", "composite", after="load"),
        Node("save", "save", after="load"),
        Node("after_save", "gaussian", {"sigma": 1}, after="save"),
    ]))
    text = "\n".join(problems)
    assert "node 'mix'" in text and "2 nodes" in text
    assert "cannot run after it" in text


def test_colliding_outputs():
    problems = problems_of(Workflow("w", [
        Node("load", "load"),
        Node("a", "save", after="load"),
        Node("b", "save", after="load"),
    ]))
    assert any("same output files" in p and "subdir" in p for p in problems)
    Workflow("w", [Node("load", "load"), Node("a", "save", after="load"),
                   Node("b", "save", {"subdir": "b"}, after="load")]).validate()


def test_no_source_and_bad_run_options():
    problems = problems_of(Workflow("w", [
        Node("load", "load", device="tpu", timeout=-1, concurrency=0, retry={"attemps": 2}),
        Node("g", "gaussian", {"sigma": 1}, after="load"),
    ]))
    text = "\n".join(problems)
    assert "device must be one of" in text and "timeout" in text
    assert "concurrency" in text and "unknown retry keys" in text
    assert any("no source node" in p for p in problems_of(
        Workflow("w", [Node("g", "grayscale", after=["x"])])))


def test_every_problem_is_reported_at_once():
    problems = problems_of(Workflow("w", [
        Node("load", "load"), Node("load", "load"),
        Node("g", "gausian", after="load"), Node("h", "gaussian", {"sigma": "x"}, after="nope"),
    ]))
    assert len(problems) >= 4
    assert "4 problems" in str(WorkflowValidationError(problems[:4], "w"))


def test_yaml_shape_errors_are_clear():
    with pytest.raises(WorkflowValidationError, match="not valid YAML"):
        Workflow.from_yaml("name: [x\nnodes: y\n")
    with pytest.raises(WorkflowValidationError, match="'nodes' must be a non-empty list"):
        Workflow.from_yaml("name: x\nnodes: 3\n")
    with pytest.raises(WorkflowValidationError, match="unknown keys"):
        Workflow.from_yaml("name: x\nnodes:\n  - {id: a, op: load, parms: {}}\n")
    with pytest.raises(WorkflowValidationError, match="does not exist"):
        Workflow.from_yaml("missing.yaml")


def test_conditions_are_safe_and_evaluate():
    c = parse_condition("width > 100 and format in ['jpeg', 'png'] and not channels == 1")
    assert c({"width": 200, "format": "png", "channels": 3})
    assert not c({"width": 200, "format": "tiff", "channels": 3})
    assert not c({"width": 50, "format": "png", "channels": 3})
    for bad in ["__import__('os').system('x')", "width.real > 1", "open('x')",
                "[x for x in y]", "height[0]", "lambda: 1"]:
        with pytest.raises(ConditionError):
            parse_condition(bad)
    with pytest.raises(ConditionError, match="unknown field 'wdth'"):
        parse_condition("wdth > 3")
    predicate = parse_condition(lambda f: f["height"] > f["width"])
    assert predicate({"height": 3, "width": 2}) and not predicate({"height": 1, "width": 2})


def test_condition_error_in_yaml_names_the_node():
    with pytest.raises(WorkflowValidationError, match=r"node 'g'.*unknown field"):
        Workflow.from_yaml("name: x\nnodes:\n  - {id: load, op: load}\n"
                           "  - {id: g, op: grayscale, after: [load], when: 'colour > 1'}\n")


def test_repr_html_draws_the_dag():
    html = thumbnails()._repr_html_()
    assert "<svg" in html and "small: resize" in html and "<table>" in html
    assert "small: resize(long_side=512) <- load" in str(thumbnails())

"""Configuration: dagflow.yaml and dagflow-schema.yaml in sync, user configurations
checked with errors naming the bad key, overrides by environment and Dask config files,
values resolved on the client."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import dask.config
import pytest
import yaml
from click.testing import CliRunner

from dagflow import Node, Workflow, config
from dagflow.cli import main
from dagflow.compile import node_tasks
from dagflow.exceptions import ConfigError

HERE = Path(config.__file__).parent


def test_schema_is_complete():
    """Every key of dagflow.yaml is in the schema, with a description, and nothing else."""

    def check(defaults: Mapping, schema: Mapping, path: str) -> None:
        props = schema.get("properties", {})
        assert set(defaults) == set(props), (
            f"{path}: only in dagflow.yaml: {sorted(set(defaults) - set(props))}; "
            f"only in the schema: {sorted(set(props) - set(defaults))}")
        for key, value in defaults.items():
            sub = props[key]
            assert sub.get("description"), f"{path}.{key} has no description in the schema"
            if isinstance(value, Mapping) and "properties" in sub:
                assert sub.get("additionalProperties") is False, f"{path}.{key}"
                check(value, sub, f"{path}.{key}")

    top = config.SCHEMA["properties"]["dagflow"]
    assert top["additionalProperties"] is False
    check(config.DEFAULTS["dagflow"], top, "dagflow")


def test_defaults_and_config_in_force_are_valid():
    with open(HERE / "dagflow.yaml") as f:
        config.validate_config(yaml.safe_load(f))
    config.validate_config()
    config.validate_config({"distributed": {"anything": 1}})  # other namespaces: not ours


def test_misspelt_key_is_named():
    with pytest.raises(ConfigError) as info:
        config.validate_config({"dagflow": {"retry": {"attemps": 5}}})
    message = str(info.value)
    assert "unknown key 'dagflow.retry.attemps'" in message
    assert "did you mean 'dagflow.retry.attempts'" in message


def test_every_problem_is_listed_with_its_key():
    with pytest.raises(ConfigError) as info:
        config.validate_config({"dagflow": {
            "chunk-size": 0, "retry": {"attempts": "three"}, "runtime": {"progress": "yes"},
            "cluster": {"worker-env": {"A": ["not", "a", "string"]}}, "colour": "blue"}})
    message = str(info.value)
    assert "5 problems" in message
    for text in ("dagflow.chunk-size: 0 is not valid, expected integer >= 1 or 'auto'",
                 "dagflow.retry.attempts: 'three' is not of type 'integer'",
                 "dagflow.runtime.progress", "dagflow.cluster.worker-env.A",
                 "unknown key 'dagflow.colour'"):
        assert text in message


def test_underscores_are_accepted_as_dask_does():
    """Environment variables give `chunk_size` for `chunk-size`; Dask treats them alike."""
    config.validate_config({"dagflow": {"chunk_size": 8, "retry": {"max_delay": 3.0},
                                        "cluster": {"worker_env": {"MALLOC_X_": "1"}}}})
    with pytest.raises(ConfigError, match=r"unknown key 'dagflow\.max_delay'"):
        config.validate_config({"dagflow": {"max_delay": 3.0}})


def test_validate_a_file_and_the_cli(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("dagflow:\n  runtime:\n    window: 100\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dagflow:\n  runtime:\n    windwo: 100\n")
    config.validate_config(good)
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'dagflow\.runtime\.windwo'"):
        config.validate_config(bad)
    runner = CliRunner()
    assert runner.invoke(main, ["config", "validate", str(good)]).exit_code == 0
    result = runner.invoke(main, ["config", "validate", str(bad)])
    assert result.exit_code == 2 and "dagflow.runtime.windwo" in result.output
    with dask.config.set({"dagflow.retry.jiter": 0.1}):
        result = runner.invoke(main, ["config", "validate"])
    assert result.exit_code == 2 and "dagflow.retry.jiter" in result.output


def test_environment_and_config_files_override_defaults_and_home_is_untouched(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    user = tmp_path / "dask-config"
    user.mkdir()
    (user / "site.yaml").write_text("dagflow:\n  runtime:\n    window: 5\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env.update(HOME=str(home), DASK_CONFIG=str(user), DASK_DAGFLOW__RETRY__ATTEMPTS="7",
               DASK_DAGFLOW__CHUNK_SIZE="8")
    code = ("from dagflow import config; config.validate_config(); "
            "print(config.get('retry.attempts'), config.get('chunk-size'), "
            "config.get('runtime.window'), config.get('retry.delay'))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["7", "8", "5", "0.2"]
    shown = subprocess.run([str(Path(sys.executable).parent / "dagflow"), "config", "show"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout)["dagflow"]["runtime"]["window"] == 5
    assert list(home.rglob("*")) == []
    assert sorted(p.name for p in user.iterdir()) == ["site.yaml"]


def test_values_are_resolved_on_the_client():
    """Tasks carry the client's values: a worker never reads its own configuration for
    them (see test_clusters.py for the same against real worker processes)."""
    wf = Workflow("w", [Node("load", "load"),
                        Node("small", "resize", {"long_side": 8}, after="load")]).validate()
    with dask.config.set({"dagflow.retry.attempts": 9, "dagflow.timeout": 12.5,
                          "dagflow.max-pixels": 1234}):
        tasks = node_tasks(wf)
    shipped = pickle.loads(pickle.dumps(tasks))  # what a worker receives
    assert shipped["small"].policy.attempts == 9
    assert shipped["small"].timeout == 12.5
    assert shipped["load"].params["max_pixels"] == 1234

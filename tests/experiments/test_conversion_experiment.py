"""Experiment kind ``conversion`` on a tiny YAML: 1 depth, 1 structure, 2 methods, 1 epoch."""

import json

import pytest

import spikebridge.experiments.conversion as conversion_kind
from spikebridge.errors import ConfigError
from spikebridge.experiments import parse_overrides, run_experiment

TINY_YAML = """
kind: conversion
dataset: synthetic
models: [resnet20]
blocks: [pre-add]
methods: [robust, qcfs]
timesteps: [1, 2, 4]
device: cpu
activations:
  relu: {}
  qcfs: {qcfs_levels: 4, threshold: 2.0}
profiles:
  cpu:
    calibration_size: 16
    test_images: 48
    train: {width: 0.25, subset: 48, val_size: 16, epochs: 1, batch_size: 16, progress: false}
"""


def quiet(_line):
    pass


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    (root / "tiny.yaml").write_text(TINY_YAML)
    results = run_experiment(root / "tiny.yaml", "cpu", root / "out", log=quiet)
    return root, results


def test_runner_writes_results_table_json_and_plot(finished):
    root, results = finished
    out = root / "out"
    rows = json.loads((out / "results.json").read_text())["rows"]
    # robust needs a relu ANN, qcfs a qcfs ANN: two ANNs, one conversion each
    assert [(r["activation"], r["method"]) for r in rows] == [("relu", "robust"), ("qcfs", "qcfs")]
    assert all(list(r["accuracy"]) == ["1", "2", "4"] for r in rows)
    assert all(r["accuracy_by_timestep"].keys() == {"1", "2", "3", "4"} for r in rows)
    table = (out / "results.md").read_text()
    assert "| depth | structure | ANN act | ANN acc | method | T=1 | T=2 | T=4 |" in table
    assert table.count("| resnet20 | pre-add |") == 2
    assert (out / "accuracy_vs_t.png").stat().st_size > 1000
    assert results["rows"] == rows
    assert sorted(p.name for p in (out / "anns").iterdir()) == [
        "resnet20-pre-add-qcfs", "resnet20-pre-add-relu",
    ]  # fmt: skip


def test_rerun_reuses_finished_anns_and_conversions(finished, monkeypatch):
    root, results = finished

    def fail(*_args, **_kwargs):
        raise AssertionError("a finished ANN or conversion was redone")

    monkeypatch.setattr(conversion_kind, "train_run", fail)
    monkeypatch.setattr(conversion_kind, "convert_run", fail)
    again = run_experiment(root / "tiny.yaml", "cpu", root / "out", log=quiet)
    assert again["rows"] == results["rows"]
    # --set activations.relu=null methods=[qcfs]: a sub-sweep of the same folder
    only = run_experiment(
        root / "tiny.yaml", "cpu", root / "out", log=quiet,
        overrides=parse_overrides(["activations.relu=null", "methods=[qcfs]"]),
    )  # fmt: skip
    assert only["rows"] == results["rows"][1:]
    # skip: an arm is not run and its rows say why
    skipped = run_experiment(
        root / "tiny.yaml", "cpu", root / "out2", log=quiet,
        overrides=parse_overrides(["skip={resnet20-pre-add-relu: collapses}",
                                   "activations.qcfs=null"]),
    )  # fmt: skip
    assert [(r["activation"], r["error"]) for r in skipped["rows"]] == [
        ("relu", "not run: collapses")
    ]
    assert "not run: collapses" in (root / "out2" / "results.md").read_text()


def test_overrides_parse_nested_yaml_values():
    assert parse_overrides(["train.epochs=2", "models=[resnet20, resnet56]", "x.y.z=null"]) == {
        "train": {"epochs": 2}, "models": ["resnet20", "resnet56"], "x": {"y": {"z": None}},
    }  # fmt: skip
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["epochs"])


def test_unknown_method_in_the_spec_is_a_config_error(tmp_path):
    (tmp_path / "bad.yaml").write_text(TINY_YAML.replace("[robust, qcfs]", "[robust, magic]"))
    with pytest.raises(ConfigError, match="magic"):
        run_experiment(tmp_path / "bad.yaml", "cpu", tmp_path / "out", log=quiet)

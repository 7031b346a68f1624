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
report_at: [1, 2, 4]
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
    # collect_only: tabulate what the folder holds, never train or convert
    collected = run_experiment(
        root / "tiny.yaml", "cpu", root / "out", log=quiet,
        overrides=parse_overrides(["collect_only=true", "methods=[maxnorm, robust, qcfs]",
                                   "models=[resnet20, resnet56]"]),
    )  # fmt: skip
    got = [(r["model"], r["activation"], r["method"], r.get("error", "")[:7])
           for r in collected["rows"]]  # fmt: skip
    assert got == [
        ("resnet20", "relu", "maxnorm", "not run"), ("resnet20", "relu", "robust", ""),
        ("resnet20", "qcfs", "qcfs", ""), ("resnet56", "relu", "maxnorm", "not run"),
        ("resnet56", "relu", "robust", "not run"), ("resnet56", "qcfs", "qcfs", "not run"),
    ]  # fmt: skip


def test_ttrbr_is_tuned_at_each_timestep(finished):
    root, _ = finished
    out = run_experiment(
        root / "tiny.yaml", "cpu", root / "out3", log=quiet,
        overrides=parse_overrides(["methods=[qcfs, ttrbr]", "activations.relu=null",
                                   "tune_at=[1, 2]", "tune_epochs=1", "tune_lr=0.02"]),
    )  # fmt: skip
    qcfs_row, row = out["rows"]  # the tuning list leaves the other methods alone
    assert qcfs_row["method"] == "qcfs" and qcfs_row["tune_timesteps"] is None
    assert row["tune_timesteps"] == [1, 2]
    conv = root / "out3" / "conversions"
    t1 = json.loads((conv / "resnet20-pre-add-qcfs-ttrbr-t1" / "summary.json").read_text())
    t2 = json.loads((conv / "resnet20-pre-add-qcfs-ttrbr-t2" / "summary.json").read_text())
    assert (t1["tune_timesteps"], t2["tune_timesteps"]) == (1, 2)
    assert (t1["tune_lr"], t1["tune_epochs"]) == (0.02, 1)  # the file reaches every option
    assert "tune_lr" not in json.loads(
        (conv / "resnet20-pre-add-qcfs-qcfs" / "summary.json").read_text()
    )  # an option of ttrbr only: qcfs converted with its own options
    assert set(t1["accuracy_by_timestep"]) == {"1"}  # simulated only as far as it serves
    assert row["accuracy_by_timestep"] == {"1": t1["accuracy_by_timestep"]["1"],
                                           **{k: v for k, v in t2["accuracy_by_timestep"].items()
                                              if k != "1"}}  # fmt: skip
    assert "ttrbr (tuned at T = 1, 2)" in (root / "out3" / "results.md").read_text()


def test_combine_per_timestep_takes_each_cell_from_the_nearest_tuning_at_or_above():
    part = lambda t, upto: {"accuracy_by_timestep": {str(u): t + u / 100 for u in range(1, upto + 1)},  # noqa: E731
                            "run_dir": f"t{t}", "convert_time_s": 1.0}  # fmt: skip
    row = conversion_kind.combine_per_timestep({1: part(1, 1), 4: part(4, 4), 8: part(8, 16)})
    got = {int(k): v for k, v in row["accuracy_by_timestep"].items()}
    assert got == {1: 1.01, 2: 4.02, 3: 4.03, 4: 4.04, **{u: 8 + u / 100 for u in range(5, 17)}}
    assert row["tune_timesteps"] == [1, 4, 8] and row["convert_time_s"] == 3.0


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


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("tune_epoch: 2", "has no key 'tune_epoch'; did you mean 'tune_epochs'?"),
        ("percentile: 99.99\ntune_phi: true", "'tune_phi', which was removed"),
        ("tune_reference: teacher", "'tune_reference' is 'teacher'; expected one of"),
        ("selection_size: many", "'selection_size' is 'many'; expected an integer"),
    ],
)
def test_unknown_or_bad_keys_in_the_file_are_refused_before_any_training(tmp_path, line, message):
    (tmp_path / "bad.yaml").write_text(TINY_YAML.replace("device: cpu", f"device: cpu\n{line}"))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("?", r"\?")):
        run_experiment(tmp_path / "bad.yaml", "cpu", tmp_path / "out", log=quiet)
    assert not (tmp_path / "out" / "anns").exists()


def test_old_key_names_work_with_a_notice(finished, monkeypatch):
    root, results = finished
    old = TINY_YAML.replace("report_at: [1, 2, 4]", "timesteps: [1, 2, 4]")
    (root / "old.yaml").write_text(old)
    lines = []
    again = run_experiment(root / "old.yaml", "cpu", root / "out", log=lines.append)
    assert "warning: the experiment key 'timesteps' is deprecated; use 'report_at'" in lines
    assert again["rows"] == results["rows"]  # the same folder: every conversion reused

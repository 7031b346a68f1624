"""IDSNN runs: ``spikebridge distill`` / ``idsnn`` on tiny synthetic runs (METHODS 1)."""

import pytest
import torch

from spikebridge.cli import main
from spikebridge.engine import checkpoint as ckpt
from spikebridge.errors import ConfigError
from spikebridge.runs.idsnn import arm_name, distill_run
from spikebridge.runs.train import train_run

TINY = {"dataset": "synthetic", "model": "resnet20", "width": 0.25, "epochs": 1,
        "batch_size": 16, "val_size": 64, "schedule": "cosine", "progress": False}  # fmt: skip
TINY_ARGS = ["--dataset", "synthetic", "--model", "resnet20", "--width", "0.25", "--epochs",
             "1", "--batch-size", "16", "--val-size", "64", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A tiny trained ANN teacher run (resnet32: 5 blocks per stage, wider than the student)."""
    out = tmp_path_factory.mktemp("runs") / "teacher"
    train_run({**TINY, "model": "resnet32", "width": 0.5, "epochs": 2, "out": str(out)})
    return out


@pytest.mark.parametrize(
    ("init", "kd", "expected"),
    [("none", 0.0, "baseline"), ("first", 0.0, "init-only"), ("none", 0.5, "kd-only"),
     ("spread", 0.3, "init+kd")],
)  # fmt: skip
def test_arm_name(init, kd, expected):
    assert arm_name(init, kd) == expected


def test_distill_cli_writes_run_folder(teacher_run, tmp_path, capsys):
    out = tmp_path / "student"
    args = ["distill", *TINY_ARGS, "--teacher", str(teacher_run), "--timesteps", "2",
            "--init", "spread", "--kd-weight", "0.3", "--kd-temperature", "4", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "metrics.jsonl", "model.safetensors", "summary.json",
            "init_report.md", "init_report.json"} <= files  # fmt: skip
    summary = ckpt.read_json(out / "summary.json")
    teacher_summary = ckpt.read_json(teacher_run / "summary.json")
    assert summary["arm"] == "init+kd"
    assert summary["teacher_accuracy"] == teacher_summary["test_accuracy"]
    assert 0.0 <= summary["firing_rate"] <= 1.0 and summary["sops_per_image"] > 0
    assert list(summary["accuracy_by_timestep"]) == ["1", "2"]
    assert summary["neuron"] == "lif" and summary["timesteps"] == 2
    config = ckpt.read_json(out / "config.json")
    assert config["distill"]["init"] == "spread" and config["distill"]["kd_weight"] == 0.3
    assert config["distill"]["teacher"] == str(teacher_run)
    record = ckpt.read_jsonl(out / "metrics.jsonl")[0]
    assert "kd_loss" in record and "ce_loss" in record  # the DistillationTask trained it
    assert "arm: init+kd" in capsys.readouterr().out


def test_init_report_lists_rows(teacher_run, tmp_path):
    out = tmp_path / "init-only"
    summary = distill_run({**TINY, "teacher": str(teacher_run), "init": "first",
                           "kd_weight": 0, "init_shortcuts": False, "out": str(out)})  # fmt: skip
    assert summary["arm"] == "init-only"
    text = (out / "init_report.md").read_text()
    assert "| student parameter | teacher parameter |" in text
    assert "| conv1.weight | conv1.weight |" in text
    report = ckpt.read_json(out / "init_report.json")
    assert report["blocks"] == "first" and report["shortcuts"] is False
    assert report["block_map"] == [[0, 1, 2]] * 3
    assert len(report["rows"]) > 50 and sum(report["counts"].values()) == len(report["rows"])
    assert report["counts"]["random (not copied)"] > 0  # the shortcuts were left random
    assert "kd_loss" not in ckpt.read_jsonl(out / "metrics.jsonl")[0]  # kd 0: plain CE


def test_no_init_no_kd_equals_plain_classification(teacher_run, tmp_path):
    """init=none + kd 0 is train's classification path: the same losses, epoch by epoch."""
    cfg = {**TINY, "neuron": "lif", "timesteps": 2, "epochs": 2}
    plain = train_run({**cfg, "out": str(tmp_path / "plain")})
    distilled = distill_run({**cfg, "teacher": str(teacher_run), "init": "none",
                             "kd_weight": 0, "out": str(tmp_path / "d")})  # fmt: skip
    a = ckpt.read_jsonl(tmp_path / "plain" / "metrics.jsonl")
    b = ckpt.read_jsonl(tmp_path / "d" / "metrics.jsonl")
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    assert plain["test_accuracy"] == distilled["test_accuracy"]
    assert distilled["arm"] == "baseline"
    wa = ckpt.load_weights(tmp_path / "plain" / "model.safetensors")
    wb = ckpt.load_weights(tmp_path / "d" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_init_changes_the_student_and_baseline_does_not_need_a_teacher(tmp_path):
    summary = distill_run({**TINY, "init": "none", "kd_weight": 0, "out": str(tmp_path / "b")})
    assert summary["teacher_accuracy"] is None and summary["arm"] == "baseline"
    with pytest.raises(ConfigError, match="--teacher"):
        distill_run({**TINY, "init": "first", "out": str(tmp_path / "x")})


def test_distill_cli_errors_exit_2(teacher_run, tmp_path):
    assert main(["distill", *TINY_ARGS, "--out", str(tmp_path / "a")]) == 2  # no teacher
    bad = ["distill", *TINY_ARGS, "--teacher", str(tmp_path / "nope"), "--out", str(tmp_path)]
    assert main(bad) == 2
    assert main(["distill", *TINY_ARGS, "--teacher", str(teacher_run), "--kd-weight",
                 "-1", "--out", str(tmp_path / "c")]) == 2  # fmt: skip


def test_idsnn_pipeline_trains_teacher_then_student(tmp_path, capsys):
    out = tmp_path / "pipe"
    args = ["idsnn", *TINY_ARGS, "--timesteps", "2", "--teacher-model", "resnet32",
            "--teacher-width", "0.5", "--teacher-epochs", "1", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    teacher = ckpt.read_json(out / "teacher" / "summary.json")
    student = ckpt.read_json(out / "student" / "summary.json")
    assert teacher["model"] == "resnet32" and teacher["neuron"] is None
    assert student["model"] == "resnet20" and student["neuron"] == "lif"
    assert student["teacher_accuracy"] == teacher["test_accuracy"]
    assert (out / "student" / "init_report.md").is_file() and (out / "idsnn.json").is_file()
    printed = capsys.readouterr().out
    assert "| teacher | resnet32 |" in printed and "| student | resnet20 |" in printed

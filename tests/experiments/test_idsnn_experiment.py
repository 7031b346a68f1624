"""Experiment kind ``idsnn`` and ``spikebridge experiment``: a tiny 2-arm synthetic file."""

import json

import pytest
import yaml

from spikebridge.analysis.ablation import epochs_to_reach
from spikebridge.cli import main
from spikebridge.experiments.idsnn import _schedule, add_convergence

TINY_SPEC = {
    "kind": "idsnn",
    "name": "tiny",
    "baseline": "baseline",
    "settings": {"dataset": "synthetic", "batch_size": 16, "val_size": 64, "threads": 1,
                 "progress": False, "schedule": "cosine"},
    "teacher": {"model": "resnet20", "width": 0.25, "epochs": 1},
    "student": {"model": "resnet20", "width": 0.25, "neuron": "lif", "timesteps": 2},
    "arms": [{"name": "baseline", "init": "none", "kd_weight": 0},
             {"name": "init+kd", "init": "first", "kd_weight": 0.3, "reference": "baseline"}],
    "profiles": {"cpu": {"student": {"epochs": 1}}, "full": {"student": {"epochs": 200}}},
}  # fmt: skip


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_SPEC))
    return path


def test_experiment_writes_results(tiny_yaml, tmp_path):
    out = tmp_path / "out"
    assert main(["experiment", str(tiny_yaml), "--profile", "cpu", "--out", str(out)]) == 0
    text = (out / "results.md").read_text()
    assert "| baseline | none |" in text and "| init+kd | first |" in text
    assert "| 1 | cosine |" in text and "x0.1 at" not in text  # the schedule that ran
    assert "best test over epochs (paper comparison)" in text
    results = json.loads((out / "results.json").read_text())
    assert [a["name"] for a in results["arms"]] == ["baseline", "init+kd"]
    assert all(len(a["test_by_epoch"]) == 1 for a in results["arms"])
    assert results["arms"][1]["summary"]["arm"] == "init+kd"
    png = (out / "test_accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    assert (out / "teacher" / "summary.json").is_file()
    # a second run reuses the finished teacher and arms
    assert main(["experiment", str(tiny_yaml), "--out", str(out)]) == 0


def test_unknown_profile_exit_2(tiny_yaml, tmp_path, capsys):
    assert main(["experiment", str(tiny_yaml), "--profile", "gpu", "--out", str(tmp_path)]) == 2
    assert "no profile 'gpu'" in capsys.readouterr().err


def test_bad_arms_exit_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**TINY_SPEC, "arms": [{"init": "none"}]}))
    assert main(["experiment", str(path), "--out", str(tmp_path / "o")]) == 2


def test_epochs_to_reach_and_speedup():
    assert epochs_to_reach([0.1, 0.5, 0.7, 0.6], 0.6) == 3
    assert epochs_to_reach([0.1, 0.2], 0.6) is None
    assert epochs_to_reach([0.1], None) is None
    arms = [
        {"name": "base", "test_by_epoch": [0.2, 0.4, 0.6, 0.8],
         "summary": {"final_test_accuracy": 0.8}},
        {"name": "fast", "test_by_epoch": [0.85, 0.9], "reference": "base",
         "summary": {"final_test_accuracy": 0.9}},
    ]  # fmt: skip
    assert add_convergence(arms, "base") == 0.8
    assert arms[0]["epochs_to_baseline"] == 4 and arms[0]["speedup"] == 1.0
    assert arms[1]["epochs_to_baseline"] == 1 and arms[1]["speedup"] == 4.0
    assert arms[1]["final_minus_reference"] == pytest.approx(0.1)


def test_schedule_column_names_cosine_and_multistep_fractions():
    assert _schedule({"schedule": "cosine", "milestones": [0.3]}) == "cosine"
    assert _schedule({"schedule": "multistep", "milestones": [0.3, 0.6]}) == "x0.1 at 0.3,0.6"
    assert _schedule({"milestones": [0.5]}) == "x0.1 at 0.5"  # results from before the field


def test_demo_ablation_file_has_exactly_the_demo_budget():
    """experiments/idsnn_ablation_demo.yaml (benchmarks/idsnn_ablation.py) must stay the
    demo's budget (spikebridge/demo.py) and its init+kd arm the demo's IDSNN student."""
    from pathlib import Path

    from spikebridge import demo
    from spikebridge.experiments import load_experiment, merge

    path = Path(__file__).resolve().parents[2] / "experiments" / "idsnn_ablation_demo.yaml"
    spec = load_experiment(path, "demo")
    settings = spec["settings"]
    data, optim = demo.DEMO_DATA, demo.DEMO_OPTIM  # typed config sections
    demo_data = {k: getattr(data, k) for k in ("dataset", "subset", "val_size", "batch_size",
                                                "augment")}  # fmt: skip
    demo_data.update(lr=optim.lr, grad_clip=optim.grad_clip)
    assert {k: settings[k] for k in demo_data} == demo_data
    assert merge(settings, spec["teacher"])["subset"] == demo.TEACHER_DATA.subset
    teacher, student = demo.TEACHER, demo.STUDENT
    assert {k: spec["teacher"][k] for k in ("model", "width", "epochs")} == {
        "model": teacher.name, "width": teacher.width, "epochs": demo.TEACHER_EPOCHS}  # fmt: skip
    keys = ("model", "width", "neuron", "timesteps", "epochs")
    assert {k: spec["student"][k] for k in keys} == {
        "model": student.name, "width": student.width, "neuron": student.neuron,
        "timesteps": student.timesteps, "epochs": demo.STUDENT_EPOCHS}  # fmt: skip
    arms = {a["name"]: a for a in spec["arms"]}
    assert list(arms) == ["baseline", "init-only", "kd-only", "init+kd"]
    assert (arms["init+kd"]["init"], arms["init+kd"]["kd_weight"]) == ("first", 0.3)

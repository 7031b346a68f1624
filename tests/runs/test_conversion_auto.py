"""``--method auto`` (spikebridge.runs.conversion_auto): every method scored on held-out
images at every total T, the best kept per T, on tiny models."""

import json

import torch

from spikebridge.cli import main
from spikebridge.config import TRAIN_SECTIONS, load_config
from spikebridge.conversion import METHODS, CosConfig, QcfsConfig, convert
from spikebridge.engine import load_run
from spikebridge.models import build
from spikebridge.runs import train_run
from spikebridge.runs.conversion_auto import readouts, score_methods

TINY = {
    "dataset": "synthetic", "subset": 64, "val_size": 16, "batch_size": 16, "model": "resnet20",
    "width": 0.25, "epochs": 1, "lr": 0.1, "schedule": "cosine", "progress": False,
    "device": "cpu", "activation": "qcfs", "block": "pre-add",
}  # fmt: skip


def _tiny_qcfs():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    ann = build("resnet20", width=0.25, activation="qcfs", block="pre-add", threshold=1.0)
    x = torch.randn(24, 3, 16, 16)
    return ann.eval(), x  # BN at its initial statistics: an affine map, enough here


def test_methods_are_compared_at_the_same_total_time_steps() -> None:
    ann, x = _tiny_qcfs()
    (qcfs, _), (cos, _) = (
        convert(ann, QcfsConfig(timesteps=4)),
        convert(ann, CosConfig(timesteps=4), x),
    )
    assert readouts(cos, [2, 4, 6]) == {6: 2}  # ρ = L = 4 dry steps: T = 6 reads t = 2
    assert readouts(qcfs, [2, 4, 6]) == {2: 2, 4: 4, 6: 6}
    labels = qcfs(x).argmax(-1)  # qcfs's own answers at T = 4: it is right on every image
    held_out = [(x[:12], labels[:12]), (x[12:], labels[12:])]
    report = score_methods({"cos": cos, "qcfs": qcfs}, held_out, [6, 2, 4])
    assert report.images == 24 and list(report.chosen) == ["2", "4", "6"]
    assert report.accuracy["qcfs"]["4"] == 1.0 and report.chosen["4"] == "qcfs"
    assert report.accuracy["cos"]["2"] is None and report.chosen["2"] == "qcfs"
    assert report.readout["cos"] == {"6": 2}
    table = report.to_markdown()
    assert "**100.00**" in table and "(t=2)" in table and "| cos | - | - |" in table


def test_ties_go_to_the_earlier_method() -> None:
    ann, x = _tiny_qcfs()
    (a, _), (b, _) = convert(ann, QcfsConfig(timesteps=2)), convert(ann, QcfsConfig(timesteps=2))
    held_out = [(x, torch.zeros(24, dtype=torch.long))]
    assert score_methods({"b": b, "a": a}, held_out, [1, 2]).chosen == {"1": "b", "2": "b"}


def test_convert_auto_through_the_cli_records_every_method_and_keeps_the_best_per_t(
    tmp_path, capsys
) -> None:
    cfg = load_config(TRAIN_SECTIONS, overrides={**TINY, "out": str(tmp_path / "ann")})
    train_run(cfg, log=lambda _: None)
    out = tmp_path / "auto"
    argv = ["convert", str(tmp_path / "ann"), "--method", "auto", "--report-at", "1,2",
            "--presim-steps", "1", "--tune-epochs", "1", "--calibration-size", "16",
            "--selection-size", "16", "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    table = summary["auto_selection"]
    assert list(table["accuracy"]) == list(METHODS)  # every registered method, in order
    # ρ = 1 dry step (--presim-steps reaches cos only): T = 1 leaves no room, T = 2 reads t = 1
    assert table["accuracy"]["cos"]["1"] is None and table["readout"]["cos"] == {"2": 1}
    for total, kept in summary["chosen_by_timestep"].items():
        best = max(v[total] for v in table["accuracy"].values() if v[total] is not None)
        assert table["accuracy"][kept][total] == best
    assert summary["method"] == "auto" and list(summary["accuracy_by_timestep"]) == ["1", "2"]
    report = (out / "conversion.md").read_text()
    assert all(f"| {name} |" in report for name in METHODS)
    assert "| cos | - |" in capsys.readouterr().out  # the table is printed too
    snn, config = load_run(out, "cpu")
    assert config["conversion"]["kept"] == summary["chosen_by_timestep"]["2"]


def test_convert_auto_bad_input_exits_2_and_writes_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "auto"
    missing = ["convert", str(tmp_path / "none"), "--method", "auto", "--out", str(out)]
    assert main([*missing, "--device", "cpu"]) == 2
    assert main([*missing, "--report-at", "0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--report-at is [0]" in err and not out.exists()

"""The user-CNN benchmark's own logic (``benchmarks/user_cnn_vs_spikingjelly.py``), on fake
numbers: the best SpikingJelly setup per T, the markdown table, the JSON writer, the refusal
of bad options; and that its three networks trace and convert on our side. The figures
themselves come from running the benchmark (docs/RESULTS.md), not from a test."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conversion_helpers import convert_by_name
from user_cnns import DeepResidualCNN, FashionCNN, fashion_sequential_cnn

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "user_cnn_vs_spikingjelly", ROOT / "benchmarks" / "user_cnn_vs_spikingjelly.py"
)
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _fake_record() -> dict:
    sj = {"max": {"1": 0.10, "2": 0.30, "4": 0.80},
          "99.9%": {"1": 0.40, "2": 0.30, "4": 0.70}}  # fmt: skip
    net = {"ann_accuracy": 0.85, "spikebridge": {"robust": {"1": 0.20, "2": 0.50, "4": 0.75},
           "ttrbr": {"1": 0.60, "2": 0.70, "4": 0.80}}, "spikingjelly": sj}  # fmt: skip
    return {"setup": {"timesteps": [1, 2, 4]}, "networks": {"sequential": net}}


def test_best_setup_per_t_takes_the_most_accurate_and_the_first_on_a_tie() -> None:
    sj = _fake_record()["networks"]["sequential"]["spikingjelly"]
    assert bench.best_per_t(sj, [1, 2, 4]) == {
        "1": (0.40, "99.9%"), "2": (0.30, "max"), "4": (0.80, "max"),
    }  # fmt: skip


def test_markdown_table_rows_bold_best_and_setup_names() -> None:
    lines = bench.markdown_table(_fake_record()).splitlines()
    assert lines[0] == "| network (ANN accuracy) | conversion | T = 1 | T = 2 | T = 4 |"
    assert len(lines) == 2 + 3  # header, rule, robust, ttrbr, SpikingJelly's best
    label = "| (a) Sequential, 2 MaxPool (85.00 %) |"
    assert lines[2] == f"{label} spikebridge `robust` | 20.00 | 50.00 | 75.00 |"
    assert lines[3] == f"{label} spikebridge `ttrbr` | **60.00** | **70.00** | **80.00** |"
    assert lines[4] == (
        f"{label} SpikingJelly, best setup at each T | 40.00 (99.9%) | 30.00 (max) | "
        "**80.00** (max) |"
    )


def test_write_json_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "results" / "out.json"
    bench.write_json({"a": 1}, path)
    bench.write_json(_fake_record(), path)
    assert json.loads(path.read_text()) == _fake_record()
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]  # no temporary left


def test_report_prints_both_tables_of_a_written_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "r.json"
    bench.write_json(_fake_record(), path)
    assert bench.main(["--report", str(path)]) == 0
    out = capsys.readouterr().out
    assert bench.markdown_table(_fake_record()) in out
    assert "| (a) Sequential, 2 MaxPool | `99.9%` | 40.00 | 30.00 | 70.00 |" in out
    for bad in ('{"setup": {}}', "[1]", "{"):
        path.write_text(bad)
        assert bench.main(["--report", str(path)]) == 2
    assert bench.main(["--report", str(tmp_path)]) == 2  # a folder
    assert "expected a JSON file this benchmark wrote" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--networks", "vgg"], "--networks 'vgg': expected some of"),
        (["--methods", "qcfs"], "--methods 'qcfs': expected robust, ttrbr or maxnorm"),
        (["--timesteps", "0,4"], "--timesteps '0,4': expected positive integers"),
        (["--test-images", "0"], "--test-images must be a positive integer"),
        (["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
        (["--peer-python", "no/such/python"], "no peer Python at no/such/python"),
    ],
)
def test_bad_options_exit_2_with_one_sentence_and_write_nothing(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.json"
    assert bench.main([*argv, "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("build", [fashion_sequential_cnn, FashionCNN, DeepResidualCNN])
def test_benchmark_networks_convert_on_our_side(build) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    ann, x = build().eval(), torch.randn(6, 1, 28, 28)
    assert ann(x).shape == (6, 10)
    snn = convert_by_name(ann, "robust", x, 2)
    assert snn.forward_steps(x).shape == (2, 6, 10)
    if build is DeepResidualCNN:
        assert sum(isinstance(m, torch.nn.Conv2d) for m in ann.modules()) == 9

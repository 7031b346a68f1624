"""``spikebridge report``: report.md and PNG figures from a run folder; absent data said so."""

import json

import pytest

from spikebridge.analysis.report import (
    format_measurement,
    read_error_table,
    read_run_files,
    timestep_curves,
    write_report,
)
from spikebridge.cli import main
from spikebridge.conversion.decomposition import ErrorTable, LayerErrors

TINY = ["--dataset", "synthetic", "--model", "resnet20", "--width", "0.25", "--epochs", "1",
        "--subset", "128", "--batch-size", "32", "--no-progress", "--threads", "1",
        "--neuron", "lif", "--timesteps", "2", "--block", "pre-add"]  # fmt: skip
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SNN_FIGURES = ("curves.png", "accuracy_by_timestep.png", "firing_rates.png", "operations.png")


@pytest.fixture(scope="module")
def snn_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "snn"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert main(["eval", str(out), "--timesteps", "3", "--device", "cpu"]) == 0
    return out


def error_table(timesteps=4):
    rows = [
        LayerErrors(f"site{i}", 1.0 + i, 0.1 * i, 0.05, 0.02 * i, 0.2, 0.04, 0.3, 0.1 + 0.01 * i)
        for i in range(3)
    ]
    return ErrorTable(rows, timesteps)


def test_report_of_a_tiny_snn_run(snn_run, capsys):
    assert main(["report", str(snn_run)]) == 0
    assert "report.md" in capsys.readouterr().out
    text = (snn_run / "report.md").read_text()
    for name in SNN_FIGURES:
        data = (snn_run / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name
        assert f"]({name})" in text
    summary = json.loads((snn_run / "summary.json").read_text())
    assert f"{summary['sops_per_image'] * 1e-6:.4g} M" in text
    # per-t tables of both measurements (summary at T = 2, eval.json at t = 1..3)
    assert "Per time-step, from `summary.json`" in text and "from `eval.json`" in text
    assert f"| SNN energy estimate, T = 2 | {summary['energy_estimate_uj']:.4g} µJ |" in text
    assert "No `errors.csv`" in text  # the absent section is named, not dropped
    curves = timestep_curves(read_run_files(snn_run))
    assert set(curves) == {"summary.json", "eval.json (test split)"}
    assert sorted(curves["eval.json (test split)"]) == [1, 2, 3]


def test_error_section_from_csv(tmp_path):
    table = error_table()
    table.to_csv(tmp_path / "errors.csv")
    back = read_error_table(tmp_path / "errors.csv", 4)
    assert back == table
    (tmp_path / "summary.json").write_text(json.dumps({"timesteps": 4}))
    text = write_report(tmp_path).read_text()
    assert (tmp_path / "errors.png").read_bytes().startswith(PNG_MAGIC)
    assert table.to_markdown() in text


def test_absent_data_are_reported_as_absent(tmp_path):
    ann = {"test_accuracy": 0.5, "macs_per_image": 2e6, "ann_energy_estimate_uj": 9.2}
    (tmp_path / "summary.json").write_text(json.dumps(ann))
    text = write_report(tmp_path).read_text()
    assert "No `metrics.jsonl`" in text
    assert "No result file has `accuracy_by_timestep`" in text
    assert "No firing rates recorded" in text
    assert "ANN run: no synaptic operations" in text and "| ANN MACs | 2 M |" in text
    assert not list(tmp_path.glob("*.png"))


def test_nested_conversion_results_give_one_curve_each(tmp_path):
    convert = {"maxnorm": {"accuracy_by_timestep": {"1": 0.1, "2": 0.4}}, "method": "x"}
    (tmp_path / "conversion.json").write_text(json.dumps(convert))
    curves = timestep_curves(read_run_files(tmp_path))
    assert curves == {"conversion.json: maxnorm": {1: 0.1, 2: 0.4}}


def test_format_measurement():
    ann = format_measurement({"macs_per_image": 4.0e7, "ann_energy_estimate_uj": 184.0})
    assert "40 M" in ann and "184 µJ" in ann and "SOPs" not in ann
    snn = {"macs_per_image": 4.0e7, "ann_energy_estimate_uj": 184.0, "sops_per_image": 1e7,
           "energy_estimate_uj": 9.0, "firing_rate": 0.1, "silent_fraction": 0.02,
           "measured_images": 1024, "measured_timesteps": 4}  # fmt: skip
    text = format_measurement(snn)
    assert "SOPs/image 10 M" in text and "9 µJ" in text and "1024 images" in text
    assert text.count("SNN at T = 4:") == 2  # every SNN figure names its T
    assert "MAC count of the same architecture" in text
    assert format_measurement({}) == ""


def test_report_of_a_missing_folder_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err

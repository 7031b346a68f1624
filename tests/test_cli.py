"""The ``spikebridge`` command line: tiny ANN and SNN runs that learn, eval, errors, help."""

import json
import subprocess
import sys

import pytest
import torch

from spikebridge.cli import main
from spikebridge.engine import checkpoint as ckpt
from spikebridge.models import ModelConfig, build_from_config

CHANCE = 0.25  # the synthetic dataset has 4 balanced classes
SUMMARY_KEYS = {
    "test_accuracy", "val_accuracy", "best_test_accuracy", "final_test_accuracy", "epochs",
    "timesteps", "model", "dataset", "params", "train_time_s", "test_samples",
}  # fmt: skip
RUN_FILES = {"config.json", "metrics.jsonl", "model.safetensors", "checkpoint.pt",
             "summary.json"}  # fmt: skip
TINY = ["--dataset", "synthetic", "--model", "resnet20", "--width", "0.25", "--epochs", "4",
        "--schedule", "cosine", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead on a shared CPU
    yield
    torch.set_num_threads(before)


def train(tmp_path_factory, name, *extra):
    out = tmp_path_factory.mktemp("runs") / name
    assert main(["train", *TINY, "--out", str(out), *extra]) == 0
    return out


@pytest.fixture(scope="module")
def ann_run(tmp_path_factory):
    return train(tmp_path_factory, "ann", "--lr", "0.1", "--batch-size", "32")


@pytest.fixture(scope="module")
def snn_run(tmp_path_factory):
    # pre-add blocks (METHODS 2.5) keep the identity path spike-to-spike; the tiny post-add
    # LIF network needs many more epochs to leave chance level on this data
    return train(tmp_path_factory, "snn", "--neuron", "lif", "--timesteps", "2",
                 "--block", "pre-add", "--lr", "0.1", "--batch-size", "16",
                 "--eval-timesteps", "3")  # fmt: skip


def check_run(run, spiking):
    assert {p.name for p in run.iterdir()} >= RUN_FILES
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary) >= SUMMARY_KEYS
    metrics = ckpt.read_jsonl(run / "metrics.jsonl")
    assert len(metrics) == 4 == summary["epochs"]
    assert metrics[-1]["train_loss"] < 0.8 * metrics[0]["train_loss"]  # the loss falls
    assert summary["test_accuracy"] > CHANCE + 0.3  # clearly above chance
    assert summary["best_test_accuracy"] == max(m["test_accuracy"] for m in metrics)
    assert summary["final_test_accuracy"] == metrics[-1]["test_accuracy"]
    assert isinstance(summary["test_samples"], int) and summary["test_samples"] > 0
    config = json.loads((run / "config.json").read_text())
    model = build_from_config(ModelConfig(**config["model"]))  # the config rebuilds the model
    assert model.spiking == spiking and (config["model"]["in_channels"], model.fc.out_features) == (
        1,
        4,
    )
    return summary


def test_ann_run_learns_and_writes_the_run_folder(ann_run, capsys):
    summary = check_run(ann_run, spiking=False)
    assert summary["timesteps"] == 1 and "accuracy_by_timestep" not in summary


def test_snn_run_learns_and_reports_every_timestep(snn_run):
    summary = check_run(snn_run, spiking=True)
    assert summary["timesteps"] == 2  # trained at T=2, tested up to --eval-timesteps 3
    assert set(summary["accuracy_by_timestep"]) == {"1", "2", "3"}
    assert summary["accuracy_by_timestep"]["2"] == summary["test_accuracy"]


def test_eval_subcommand_reports_requested_timesteps(snn_run, capsys):
    assert main(["eval", str(snn_run), "--report-at", "1,2"]) == 0
    report = json.loads((snn_run / "eval.json").read_text())
    summary = json.loads((snn_run / "summary.json").read_text())
    expected = {t: summary["accuracy_by_timestep"][t] for t in ("1", "2")}
    assert report["accuracy_by_timestep"] == expected
    captured = capsys.readouterr()
    assert "accuracy" in captured.out and captured.out.count("%") == 2 and captured.err == ""
    assert main(["eval", str(snn_run), "--timesteps", "3", "--split", "val"]) == 0
    report = json.loads((snn_run / "eval.json").read_text())
    assert list(report["accuracy_by_timestep"]) == ["1", "2", "3"] and report["split"] == "val"


def test_eval_old_timestep_list_still_works_with_a_notice(snn_run, tmp_path, capsys):
    """``--timesteps 1,2`` (before issue 22) is ``--report-at 1,2``, and a --config file
    is overridden by the command line."""
    (tmp_path / "eval.yaml").write_text("eval: {split: val, report_at: [3]}\n")
    argv = ["eval", str(snn_run), "--config", str(tmp_path / "eval.yaml"), "--split", "test"]
    assert main([*argv, "--timesteps", "1,2"]) == 0
    err = capsys.readouterr().err
    assert err == "warning: --timesteps with a list is deprecated; use --report-at 1,2\n"
    report = json.loads((snn_run / "eval.json").read_text())
    assert list(report["accuracy_by_timestep"]) == ["1", "2"] and report["split"] == "test"


def test_eval_of_an_ann_refuses_timesteps(ann_run, capsys):
    assert main(["eval", str(ann_run)]) == 0
    assert main(["eval", str(ann_run), "--timesteps", "4"]) == 2
    assert "is an ANN" in capsys.readouterr().err


def test_resume_through_the_cli_reports_a_finished_run(ann_run, capsys):
    assert main(["train", "--resume", "--out", str(ann_run)]) == 0
    assert "already finished" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--dataset", "fashion-mnist", "--data-dir", "/nonexistent/fmnist"], "fmnist"),
        (["train", "--dataset", "mnist"], "expected one of fashion-mnist"),
        (["train", "--lr", "fast"], "'lr' is 'fast'"),
        (["eval", "/nonexistent/run"], "does not exist"),
        (
            ["train", "--dataset", "synthetic", "--width", "nan"],
            "'width' is 'nan'; expected a finite number",
        ),
        (
            ["train", "--dataset", "synthetic", "--width", "0"],
            "'width' is 0.0; expected a finite number > 0",
        ),
        (["train", "--dataset", "synthetic", "--timesteps", "0"], "'timesteps' is 0"),
        (["report", "/nonexistent/run"], "does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "r")] if argv[0] == "train" else argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert "Traceback" not in err and not (tmp_path / "r").exists()  # nothing left behind


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("optim: {lr: 0.1\n", "line 2, column 1"),
        ("optim:\n  lr: 0.1\n   x: 2\n", "line 3, column 5"),
    ],
)
def test_yaml_syntax_error_exits_2_with_one_line(tmp_path, capsys, text, where):
    (tmp_path / "c.yaml").write_text(text)
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "is not valid YAML (" + where in err and not (tmp_path / "r").exists()


def test_unknown_yaml_key_exits_2_naming_the_nearest(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("optim: {learning_rate: 0.1}\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "did you mean 'optim." in capsys.readouterr().err


def test_help_lists_options_with_defaults(capsys):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in ["--model MODEL", "--width WIDTH", "--timesteps TIMESTEPS", "--neuron",
                   "--batch-size", "--data-dir", "--lr LR", "--epochs", "--seed", "--out",
                   "--no-progress", "--resume", "--config FILE.yaml"]:  # fmt: skip
        assert option in text
    assert "(default: 0.05)" in text and "(default: fashion-mnist)" in text
    assert main([]) == 2  # a subcommand is required


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "spikebridge", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("spikebridge ")


def test_every_help_page_renders(capsys):
    # argparse %-formats help strings: a bare "%" in one breaks `spikebridge --help`.
    from spikebridge.cli import SUBCOMMANDS

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SUBCOMMANDS)
    for name in SUBCOMMANDS:
        assert main([name, "--help"]) == 0, name

"""Bad input through the real command line (issue 21): each is refused with exit code 2 and
ONE line on stderr naming the input and what would be accepted, no traceback, and nothing
half-written. Every command runs in a subprocess (``python -m spikebridge``), as a user
runs it; the run folders they read are two tiny runs shared by the whole module."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spikebridge.engine import checkpoint as ckpt
from spikebridge.runs import train_run

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "dataset": "synthetic", "subset": 96, "val_size": 32, "batch_size": 16, "model": "resnet20",
    "width": 0.25, "epochs": 1, "progress": False, "device": "cpu",
}  # fmt: skip
TINY_ARGS = ["--dataset", "synthetic", "--subset", "96", "--val-size", "32", "--batch-size",
             "16", "--model", "resnet20", "--width", "0.25", "--epochs", "1", "--no-progress",
             "--device", "cpu"]  # fmt: skip
EXPERIMENT = REPO / "experiments" / "conversion_depth.yaml"


def run_cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m spikebridge ARGV`` with this checkout first on the path, one thread."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "SPIKEBRIDGE_COMPILE": "0"}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "spikebridge", *map(str, argv)], capture_output=True, text=True,
        env=env, cwd=cwd, timeout=300,
    )  # fmt: skip


def assert_refused(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, one ``error:`` line on stderr holding every one of ``words``, no traceback."""
    err = proc.stderr
    assert proc.returncode == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` -> its bytes (None for a folder): to compare byte for byte."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A finished ANN run and a finished LIF run (one epoch each, synthetic data)."""
    root = tmp_path_factory.mktemp("runs")
    quiet = {"log": lambda _: None}
    train_run({**TINY, "out": str(root / "ann")}, **quiet)
    train_run({**TINY, "neuron": "lif", "timesteps": 2, "out": str(root / "lif")}, **quiet)
    return {"ann": root / "ann", "lif": root / "lif"}


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--width", "1e6"], ["needs at least", "PiB", "memory is free", "--width"]),
        (["--neuron", "lif", "--timesteps", "100000", "--width", "1", "--batch-size", "64"],
         ["needs at least", "TiB", "T = 100000", "--timesteps"]),
        (["--width", "1e-9"], ["'width' is 1e-09", ">= 1/16 = 0.0625"]),
        (["--neuron", "lif", "--decay", "5"], ["'decay' is 5.0", "(0, 1]"]),
        (["--batch-size", "0"], ["batch_size is 0", ">= 1"]),
        (["--neuron", "lif", "--timesteps", "2", "--eval-timesteps", "100000000"],
         ["simulating resnet20 for T = 100000000 steps", "--timesteps"]),
    ],
    ids=["width-1e6", "timesteps-100000", "width-1e-9", "decay-5", "batch-size-0",
         "eval-timesteps-1e8"],
)  # fmt: skip
def test_impossible_sizes_are_refused_up_front(tmp_path, extra, words):
    out = tmp_path / "run"
    assert_refused(run_cli("train", *TINY_ARGS, *extra, "--out", out), *words)
    assert not out.exists()  # refused before the run folder was created


# ----------------------------------------------------------------------------- outputs


def test_export_to_a_folder(runs, tmp_path):
    before = tree(runs["lif"])
    err = assert_refused(run_cli("export", runs["lif"], "-o", tmp_path), "is a folder")
    assert "model.nir" in err and tree(runs["lif"]) == before and not list(tmp_path.iterdir())


def test_compare_json_to_a_folder_is_refused_before_the_comparison(runs, tmp_path):
    proc = run_cli("compare", runs["ann"], runs["ann"], "--json", tmp_path, "--device", "cpu")
    assert_refused(proc, "--json", "is a folder", "compare.json")
    assert proc.stdout == "" and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["compare", "{ann}", "{ann}", "--test-images", "-1"], ["--test-images is -1", ">= 1"]),
        (["compare", "{ann}", "{ann}", "--batch-size", "0"], ["--batch-size is 0"]),
        (["eval", "{ann}", "--batch-size", "0"], ["--batch-size is 0", ">= 1"]),
        (["convert", "{ann}", "--method", "maxnorm", "--test-images", "0", "--out",
          "{tmp}/c"], ["--test-images is 0"]),
        (["convert", "{ann}", "--method", "maxnorm", "--calibration-size", "0",
          "--out", "{tmp}/c"], ["--calibration-size is 0"]),
        (["analyze", "{ann}", "--method", "maxnorm", "--calibration-images", "0"],
         ["--calibration-images is 0"]),
        (["distill", "--teacher", "{lif}", *TINY_ARGS, "--out", "{tmp}/c"],
         ["holds a spiking network", "expected an ANN run"]),
        (["train", "--bogus"], ["unrecognized arguments: --bogus"]),
        (["eval", "{lif}", "--timesteps", "100000000"],
         ["simulating resnet20 for T = 100000000 steps", "memory is free", "--timesteps"]),
        (["compare", "{ann}", "{lif}", "--report-at", "1,100000000"],
         ["simulating resnet20 for T = 100000000 steps"]),
    ],
    ids=["compare-test-images-neg", "compare-batch-0", "eval-batch-0", "convert-test-images-0",
         "convert-calibration-0", "analyze-calibration-images-0", "distill-snn-teacher",
         "unknown-option", "eval-huge-T", "compare-huge-T"],
)  # fmt: skip
def test_bad_counts_and_inputs_of_readers(runs, tmp_path, argv, words):
    before = {name: tree(run) for name, run in runs.items()}
    argv = [a.format(ann=runs["ann"], lif=runs["lif"], tmp=tmp_path) for a in argv]
    assert_refused(run_cli(*argv), *words)
    assert {name: tree(run) for name, run in runs.items()} == before  # no eval.json either
    assert not (tmp_path / "c").exists()


# ----------------------------------------------------------------------------- report


@pytest.mark.parametrize("name", [ckpt.METRICS_FILE, ckpt.SUMMARY_FILE, ckpt.CONFIG_FILE])
def test_report_of_a_run_file_that_is_not_utf8(runs, tmp_path, name):
    run = copy_run(runs["ann"], tmp_path / "run")
    (run / name).write_bytes(b"\xff\xfe\x00 not text")
    assert_refused(run_cli("report", run), repr(str(run / name)), "not UTF-8")
    assert not (run / "report.md").exists()


def test_report_names_a_damaged_eval_json_it_leaves_out(runs, tmp_path):
    """Our choice: note it (stdout and report.md) instead of refusing the report: the run's
    own files still make a valid report, and a truncated eval.json only removes its rows."""
    run = copy_run(runs["ann"], tmp_path / "run")
    (run / "eval.json").write_text('{"split": "test", "accuracy": 0.')
    (run / "notes.json").write_bytes(b"\xff\xfe")
    proc = run_cli("report", run)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "note: eval.json was left out of the report (not valid JSON, line 1" in proc.stdout
    assert "note: notes.json was left out of the report (not UTF-8 text)" in proc.stdout
    report = (run / "report.md").read_text()
    assert "Left out of this report: `eval.json` (not valid JSON" in report


# ----------------------------------------------------------------------------- experiment


def test_experiment_file_that_is_not_text(tmp_path):
    bad = tmp_path / "binary.yaml"
    bad.write_bytes(bytes(range(256)))
    proc = run_cli("experiment", bad, "--out", tmp_path / "x")
    assert_refused(proc, "experiment file", "binary.yaml", "not UTF-8 text; expected a YAML")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("model=[resnet110]", ["--set model", "did you mean 'models'?"]),
        ("bogus.key=1", ["--set bogus", "no setting 'bogus'"]),
        ("train.widht=0.5", ["--set train.*", "did you mean 'width'?"]),
    ],
    ids=["model-for-models", "bogus-key", "nested-typo"],
)  # fmt: skip
def test_experiment_set_typos_name_the_nearest_key(tmp_path, setting, words):
    proc = run_cli("experiment", EXPERIMENT, "--out", tmp_path / "x", "--set", setting)
    assert_refused(proc, *words)
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- data


def test_an_image_folder_smaller_than_a_batch_trains(tmp_path):
    """24 training images, the default batch of 32: one short batch per epoch, as before."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 2)):
        for c in range(3):
            folder = tmp_path / "imgs" / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, size=(12, 12, 3)).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    out = tmp_path / "run"
    proc = run_cli(
        "train", "--dataset", "imagefolder", "--data-dir", tmp_path / "imgs", "--image-size",
        "8", "--workers", "0", "--val-size", "3", "--model", "resnet20", "--width", "0.25",
        "--epochs", "1", "--out", out, "--device", "cpu", "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert ckpt.read_json(out / ckpt.SUMMARY_FILE)["epochs"] == 1

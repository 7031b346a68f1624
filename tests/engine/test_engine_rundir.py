"""Transactional run folders (issue 17): one atomic checkpoint per epoch, a lock on the folder,
failed runs that resume or rerun cleanly, and readers that accept finished folders only."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from spikebridge import demo
from spikebridge.cli import main
from spikebridge.config import TRAIN_SECTIONS, load_config
from spikebridge.engine import checkpoint as ckpt
from spikebridge.engine import rundir, validate_run_dir
from spikebridge.engine.train import Trainer
from spikebridge.errors import ConfigError, RunError
from spikebridge.runs import conversion, eval_run, train_run
from spikebridge.runs.conversion import convert_run

TINY_RUN = {
    "dataset": "synthetic", "subset": 96, "val_size": 32, "batch_size": 16, "model": "resnet20",
    "width": 0.25, "epochs": 3, "lr": 0.1, "schedule": "cosine", "progress": False,
}  # fmt: skip
TINY_ARGS = ["--dataset", "synthetic", "--subset", "96", "--val-size", "32", "--batch-size",
             "16", "--model", "resnet20", "--width", "0.25", "--epochs", "1", "--no-progress"]  # fmt: skip
QUIET = {"log": lambda _: None}


def tiny_config(out, **changes):
    return load_config(TRAIN_SECTIONS, overrides={**TINY_RUN, "out": str(out), **changes})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 3-epoch run: what every interrupted-and-resumed run must equal."""
    out = tmp_path_factory.mktemp("ref") / "full"
    train_run(tiny_config(out), **QUIET)
    return out


@pytest.fixture(scope="module")
def converted(reference, tmp_path_factory):
    out = tmp_path_factory.mktemp("conv") / "maxnorm"
    options = {"calibration_size": 32, "out": out, "device": "cpu", "test_images": 64}
    convert_run({"ann_run": reference, "method": "maxnorm", "report_at": [1, 2], **options},
                **QUIET)  # fmt: skip
    return out


def assert_same_run(a, b):
    """Same selected weights, same last-epoch weights, same metrics (times aside)."""
    best = load_file(str(a / ckpt.BEST_WEIGHTS)), load_file(str(b / ckpt.BEST_WEIGHTS))
    last = [ckpt.load_checkpoint(run / ckpt.CHECKPOINT)["model"] for run in (a, b)]
    for first, second in (best, last):
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first)
    metrics = [ckpt.read_jsonl(run / ckpt.METRICS_FILE) for run in (a, b)]
    for record in metrics[0] + metrics[1]:
        record.pop("epoch_time_s")
    assert metrics[0] == metrics[1] and [r["epoch"] for r in metrics[0]] == [1, 2, 3]


def copy_run(run, dest, drop=()):
    shutil.copytree(run, dest)
    for name in drop:
        (dest / name).unlink()
    return dest


def killed_run(run, monkeypatch, owner, name, fake):
    """Train into ``run`` with ``owner.name`` replaced by ``fake`` (which raises
    KeyboardInterrupt somewhere, as a kill would stop the process there)."""
    with monkeypatch.context() as patch:
        patch.setattr(owner, name, fake)
        with pytest.raises(KeyboardInterrupt):
            train_run(tiny_config(run), **QUIET)


def one_error_line(capsys):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


# ----------------------------------------------------------------------------- kills


def test_a_kill_inside_the_checkpoint_write_keeps_the_previous_epoch(
    reference, tmp_path, monkeypatch
):
    run, calls, real = tmp_path / "run", [], ckpt.save_checkpoint

    def killed_at_epoch_2(path, state):  # what kill -9 leaves: a stray half-written temp file
        calls.append(path)
        if len(calls) == 2:
            (path.parent / f".{path.name}.abc{ckpt.TMP_SUFFIX}").write_bytes(b"half a file")
            raise KeyboardInterrupt
        real(path, state)

    killed_run(run, monkeypatch, ckpt, "save_checkpoint", killed_at_epoch_2)
    assert ckpt.load_checkpoint(run / ckpt.CHECKPOINT)["fit"]["epoch"] == 1
    assert len(ckpt.read_jsonl(run / ckpt.METRICS_FILE)) == 1
    train_run(tiny_config(run, resume=True), **QUIET)
    assert_same_run(reference, run)
    assert not list(run.glob(f"*{ckpt.TMP_SUFFIX}"))  # the stray temp file was swept


def test_a_kill_between_the_checkpoint_and_its_derived_files_resumes_bit_exactly(
    reference, tmp_path, monkeypatch
):
    run, calls, real = tmp_path / "run", [], Trainer._write_derived

    def killed_at_the_last_epoch(self, best):
        calls.append(best)
        if len(calls) == 3:  # epoch 3's checkpoint is committed; metrics, weights are not
            raise KeyboardInterrupt
        real(self, best)

    killed_run(run, monkeypatch, Trainer, "_write_derived", killed_at_the_last_epoch)
    assert ckpt.load_checkpoint(run / ckpt.CHECKPOINT)["fit"]["epoch"] == 3
    assert len(ckpt.read_jsonl(run / ckpt.METRICS_FILE)) == 2  # one epoch behind
    with pytest.raises(RunError, match="training stopped before the end .*--resume"):
        validate_run_dir(run)  # unfinished: no reader takes it
    train_run(tiny_config(run, resume=True), **QUIET)
    assert_same_run(reference, run)


# ----------------------------------------------------------------------------- the lock


def test_a_second_writer_is_refused_while_the_folder_is_locked(tmp_path, capsys):
    run = tmp_path / "run"
    with rundir.locked(run):  # another process's run, as flock sees it (a second open file)
        with pytest.raises(RunError, match=rf"in use by another spikebridge process \(pid {os.getpid()}\)"):  # fmt: skip
            train_run(tiny_config(run, epochs=1), **QUIET)
        assert main(["train", *TINY_ARGS, "--out", str(run)]) == 2
        assert "choose another --out" in one_error_line(capsys)
        assert {p.name for p in run.iterdir()} == {ckpt.LOCK_FILE}  # nothing was written
    assert main(["train", *TINY_ARGS, "--out", str(run)]) == 0  # the .lock file left is free
    validate_run_dir(run)


def test_a_reader_of_a_folder_being_written_names_the_writer(reference, tmp_path):
    cut = copy_run(reference, tmp_path / "cut", drop=(ckpt.SUMMARY_FILE,))
    with rundir.locked(cut), pytest.raises(RunError, match=f"process {os.getpid()} is still"):
        validate_run_dir(cut)


def test_a_lock_held_by_a_killed_process_is_released(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(run / ckpt.LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'%d' % os.getpid())\n"
         "print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert rundir.lock_holder(run) == holder.pid
        with pytest.raises(RunError, match=f"pid {holder.pid}"), rundir.locked(run):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert rundir.lock_holder(run) is None
    with rundir.claim_run_dir(run, resume=False) as status:
        assert status == rundir.NEW


# ----------------------------------------------------------------------------- failed runs


def test_a_run_that_failed_before_its_first_checkpoint_is_rerun_cleanly(
    tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"

    def diverge(self, epoch):
        raise ConfigError("training diverged (loss nan in epoch 1); lower --lr or disable --amp.")

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "run_epoch", diverge)
        assert main(["train", *TINY_ARGS, "--lr", "50", "--out", str(run)]) == 2
    assert "diverged" in one_error_line(capsys)
    assert not run.exists()  # created by the failed run, removed by it

    # the same failure cut by kill -9 (no clean-up): config.json, a temporary file, and a
    # file the user put into the folder since
    def killed(self, epoch):
        (run / f".{ckpt.CONFIG_FILE}.x{ckpt.TMP_SUFFIX}").write_text("{")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "run_epoch", killed)
        patch.setattr(rundir, "_after_failure", lambda *args: None)  # what kill -9 skips
        assert main(["train", *TINY_ARGS, "--lr", "50", "--out", str(run)]) == 130
    assert "nothing was left to resume" in capsys.readouterr().err
    (run / "notes.txt").write_text("mine")
    assert rundir.run_status(run) == rundir.UNSTARTED
    assert main(["train", *TINY_ARGS, "--lr", "0.05", "--out", str(run)]) == 0  # no --resume
    assert ckpt.read_json(run / ckpt.CONFIG_FILE)["optim"]["lr"] == 0.05
    assert {p.name for p in run.iterdir()} == {
        ckpt.LOCK_FILE, ckpt.MANIFEST_FILE, ckpt.CONFIG_FILE, ckpt.CHECKPOINT, ckpt.METRICS_FILE,
        ckpt.BEST_WEIGHTS, ckpt.SUMMARY_FILE, "notes.txt",
    }  # fmt: skip
    assert (run / "notes.txt").read_text() == "mine"


def test_a_run_folder_of_the_old_layout(reference, tmp_path, capsys):
    old = copy_run(reference, tmp_path / "old", drop=(ckpt.CHECKPOINT,))
    (old / ckpt.TRAIN_STATE).write_bytes(b"format 1")
    (old / ckpt.LAST_WEIGHTS).write_bytes(b"weights")
    assert eval_run(old, device="cpu")["samples"] > 0  # a finished old run stays readable
    (old / ckpt.SUMMARY_FILE).unlink()  # an unfinished one cannot be resumed safely
    assert main(["train", "--resume", "--out", str(old)]) == 2
    assert "older spikebridge" in one_error_line(capsys)


def test_an_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("mine")
    assert main(["train", *TINY_ARGS, "--out", str(tmp_path / "f")]) == 2
    assert "is a file" in one_error_line(capsys)
    assert (tmp_path / "f").read_text() == "mine"


# ----------------------------------------------------------------------------- readers


def reader_commands(run, other, tmp_path):
    return {
        "eval": ["eval", str(run), "--device", "cpu"],
        "report": ["report", str(run)],
        "export": ["export", str(run)],
        "compare": ["compare", str(other), str(run), "--device", "cpu"],
        "analyze": ["analyze", str(run), "--method", "maxnorm", "--device", "cpu"],
        "convert": ["convert", str(run), "--method", "maxnorm", "--device", "cpu",
                    "--out", str(tmp_path / "out")],
        "distill": ["distill", "--teacher", str(run), *TINY_ARGS, "--neuron", "lif",
                    "--out", str(tmp_path / "out")],
    }  # fmt: skip


@pytest.mark.parametrize("reader", ["eval", "report", "export", "compare", "analyze", "convert",
                                    "distill"])  # fmt: skip
def test_every_reader_refuses_a_folder_without_summary(reference, tmp_path, capsys, reader):
    cut = copy_run(reference, tmp_path / "cut", drop=(ckpt.SUMMARY_FILE,))
    before = sorted(p.name for p in cut.iterdir())
    assert main(reader_commands(cut, reference, tmp_path)[reader]) == 2
    err = one_error_line(capsys)
    assert "has no summary.json: its training stopped" in err and "--resume" in err
    assert sorted(p.name for p in cut.iterdir()) == before and not (tmp_path / "out").exists()


def test_a_damaged_config_or_summary_is_one_sentence(reference, tmp_path, capsys):
    run = copy_run(reference, tmp_path / "run")
    (run / ckpt.SUMMARY_FILE).write_text('{"test_accuracy": 0.5')  # cut mid-file by hand
    assert main(["report", str(run)]) == 2
    assert "summary.json' is not valid JSON (line 1" in one_error_line(capsys)
    (run / ckpt.CONFIG_FILE).write_text("{model: resnet20}")
    for argv in (["eval", str(run)], ["train", "--resume", "--out", str(run)]):
        assert main(argv) == 2
        assert "config.json' is not valid JSON (line 1, column 2" in one_error_line(capsys)
    (run / ckpt.CONFIG_FILE).write_text('["model"]')
    assert main(["eval", str(run)]) == 2
    assert "does not hold a run configuration" in one_error_line(capsys)


def test_convert_refuses_a_spiking_input(converted, tmp_path, capsys):
    argv = ["convert", str(converted), "--method", "maxnorm", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "holds a spiking network; expected an ANN run" in one_error_line(capsys)


def test_a_conversion_cut_before_its_summary_is_unfinished_and_reruns(
    reference, converted, tmp_path, monkeypatch, capsys
):
    out, real = tmp_path / "conv", conversion.write_converted

    def killed_before_summary(out_dir, *args):
        real(out_dir, *args)
        (out_dir / ckpt.SUMMARY_FILE).unlink()
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(conversion, "write_converted", killed_before_summary)
        with pytest.raises(KeyboardInterrupt):
            options = {"calibration_size": 32, "out": out, "device": "cpu"}
            convert_run({"ann_run": reference, "method": "maxnorm", "report_at": [1, 2],
                         **options}, **QUIET)  # fmt: skip
    assert not out.exists()  # the failed conversion removed what it had written
    cut = copy_run(converted, out, drop=(ckpt.SUMMARY_FILE,))  # the same, cut by kill -9
    assert demo._finished(cut) is None and demo._finished(converted) is not None
    assert main(["eval", str(cut), "--device", "cpu"]) == 2
    assert "its conversion did not finish" in one_error_line(capsys)
    argv = ["convert", str(reference), "--method", "maxnorm", "--report-at", "1,2",
            "--calibration-size", "32", "--test-images", "64", "--device", "cpu", "--out", str(cut)]  # fmt: skip
    assert main(argv) == 0  # the same command starts it again
    assert json.loads((cut / ckpt.SUMMARY_FILE).read_text()) == demo._finished(cut)
    assert main(argv) == 2  # a finished conversion is never overwritten
    assert "already holds a run" in one_error_line(capsys)


def test_report_of_an_unrelated_folder_says_it_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a run")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "neither config.json nor summary.json" in err
    with pytest.raises(RunError, match="is it a spikebridge run folder"):
        validate_run_dir(tmp_path, kind="results")

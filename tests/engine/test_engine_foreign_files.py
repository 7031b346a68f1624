"""A run never deletes or overwrites a file it did not write (issue 21).

Every failure path -- a bad option, an exception, Ctrl-C before and after the first
committed epoch, SIGTERM -- is driven against folders that hold the user's own files, and
each of those files must survive byte for byte: as ``--out`` itself (refused: not a run
folder), and inside one of our run folders that a user added files to.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spikebridge.cli import interrupted_message, main
from spikebridge.engine import checkpoint as ckpt
from spikebridge.engine import rundir
from spikebridge.engine.train import Trainer
from spikebridge.errors import RunError, Terminated, mark_resumable

REPO = Path(__file__).resolve().parents[2]
TINY_ARGS = ["--dataset", "synthetic", "--subset", "96", "--val-size", "32", "--batch-size",
             "16", "--model", "resnet20", "--width", "0.25", "--epochs", "2", "--no-progress",
             "--device", "cpu"]  # fmt: skip


def foreign_files(folder: Path) -> dict[str, bytes | None]:
    """Put the user's files into ``folder`` (names a run also uses among them); return them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tensorboard").mkdir()
    (folder / "tensorboard" / "events").write_bytes(b"x\x00y")
    (folder / "notes.txt").write_text("my notes\n")
    (folder / f".notes.txt.abc{ckpt.TMP_SUFFIX}").write_text("an editor's temp file")
    return snapshot(folder, ("tensorboard", "notes.txt", f".notes.txt.abc{ckpt.TMP_SUFFIX}"))


def snapshot(folder: Path, names=None) -> dict[str, bytes | None]:
    """Paths under ``folder`` (only those under ``names``, if given) -> bytes (None: a folder)."""
    paths = [p for p in sorted(folder.rglob("*"))
             if names is None or p.relative_to(folder).parts[0] in names]  # fmt: skip
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in paths}


def survived(folder: Path, before: dict[str, bytes | None]) -> bool:
    after = snapshot(folder)
    return all(after.get(path, b"<gone>") == data for path, data in before.items())


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture()
def our_folder_with_user_files(tmp_path, monkeypatch):
    """A run folder of ours whose attempt was killed (kill -9: no clean-up) before its first
    epoch, into which the user then put files of their own."""
    run = tmp_path / "run"

    def killed(self, epoch):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "run_epoch", killed)
        patch.setattr(rundir, "_after_failure", lambda *args: None)  # what kill -9 skips
        assert main(["train", *TINY_ARGS, "--out", str(run)]) == 130
    assert rundir.run_status(run) == rundir.UNSTARTED
    return run, foreign_files_in_our_folder(run)


def foreign_files_in_our_folder(run: Path) -> dict[str, bytes | None]:
    (run / "notes.txt").write_text("my notes\n")
    (run / "plots").mkdir()
    (run / "plots" / "a.png").write_bytes(b"\x89PNG")
    (run / f".notes.txt.abc{ckpt.TMP_SUFFIX}").write_text("an editor's temp file")
    return snapshot(run, ("notes.txt", "plots", f".notes.txt.abc{ckpt.TMP_SUFFIX}"))


# ----------------------------------------------------------------------------- --out foreign


def test_the_issue_repro_is_refused_and_nothing_is_touched(tmp_path, capsys):
    u = tmp_path / "u"
    (u / "tensorboard").mkdir(parents=True)
    (u / "tensorboard" / "ev").write_text("x\n")
    (u / ckpt.CONFIG_FILE).write_text("{}\n")
    before = snapshot(u)
    assert main(["train", *TINY_ARGS, "--out", str(u)]) == 2
    assert "is a folder that is not a spikebridge run folder" in one_line(capsys)
    assert snapshot(u) == before  # no .lock, no record: the folder is exactly as it was


@pytest.mark.parametrize(
    "argv",
    [
        ["train", *TINY_ARGS],
        ["train", *TINY_ARGS, "--resume"],
        ["distill", *TINY_ARGS, "--init", "none", "--kd-weight", "0"],
        ["idsnn", *TINY_ARGS],
        ["experiment", str(REPO / "experiments" / "conversion_depth.yaml")],
    ],
    ids=["train", "train-resume", "distill", "idsnn", "experiment"],
)
def test_every_writer_refuses_a_foreign_folder(tmp_path, capsys, argv):
    out = tmp_path / "mine"
    before = foreign_files(out)
    assert main([*argv, "--out", str(out)]) == 2
    err = one_line(capsys)  # a run folder's writers, and those of a folder of several runs:
    assert "is a folder that is not a spikebridge run folder" in err or (
        "is a folder holding files spikebridge did not write" in err
    )
    assert snapshot(out) == before


def test_convert_and_analyze_refuse_a_foreign_folder(tmp_path, capsys):
    ann = tmp_path / "ann"
    assert main(["train", *TINY_ARGS, "--epochs", "1", "--out", str(ann)]) == 0
    out = tmp_path / "mine"
    before = foreign_files(out)
    argv = ["convert", str(ann), "--method", "maxnorm", "--device", "cpu"]
    assert main([*argv, "--out", str(out)]) == 2
    assert "not a spikebridge run folder" in one_line(capsys)
    argv = ["analyze", str(ann), "--method", "maxnorm", "--device", "cpu",
            "--calibration-images", "8"]  # fmt: skip
    assert main([*argv, "--out", str(out)]) == 2
    assert "spikebridge did not write" in one_line(capsys)
    assert snapshot(out) == before


# ----------------------------------------------------------------------------- failure paths


def test_a_bad_option_leaves_our_folder_as_it_was(our_folder_with_user_files, capsys):
    run, _ = our_folder_with_user_files
    before = snapshot(run)
    assert main(["train", *TINY_ARGS, "--lr", "-1", "--out", str(run)]) == 2
    one_line(capsys)
    assert snapshot(run) == before


def test_an_exception_removes_only_what_the_run_wrote(our_folder_with_user_files, monkeypatch):
    run, user = our_folder_with_user_files

    def bug(self, epoch):
        raise RuntimeError("a bug")

    monkeypatch.setattr(Trainer, "run_epoch", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["train", *TINY_ARGS, "--out", str(run)])
    assert survived(run, user)
    assert not (run / ckpt.CONFIG_FILE).exists()  # the previous attempt's, and this one's
    assert rundir.recorded_files(run) == []  # still ours: the same command can start again


def test_ctrl_c_before_the_first_epoch(our_folder_with_user_files, monkeypatch, capsys):
    run, user = our_folder_with_user_files

    def interrupted(self, epoch):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "run_epoch", interrupted)
    assert main(["train", *TINY_ARGS, "--out", str(run)]) == 130
    err = one_line(capsys)
    assert "--resume" not in err and "nothing was left to resume" in err
    assert survived(run, user) and not (run / ckpt.CONFIG_FILE).exists()


def test_ctrl_c_after_an_epoch_then_resume(our_folder_with_user_files, monkeypatch, capsys):
    run, user = our_folder_with_user_files
    real = Trainer.run_epoch

    def interrupted_in_epoch_2(self, epoch):
        if epoch == 1:  # epochs count from 0
            raise KeyboardInterrupt
        return real(self, epoch)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "run_epoch", interrupted_in_epoch_2)
        assert main(["train", *TINY_ARGS, "--out", str(run)]) == 130
    assert f"continue with: spikebridge train --resume --out {run}" in one_line(capsys)
    assert survived(run, user)
    assert main(["train", *TINY_ARGS, "--resume", "--out", str(run)]) == 0
    assert survived(run, user) and rundir.run_status(run) == rundir.FINISHED


def test_sigterm_removes_only_what_the_run_wrote(our_folder_with_user_files):
    run, user = our_folder_with_user_files
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "SPIKEBRIDGE_COMPILE": "0"}  # fmt: skip
    argv = [a if a != "2" else "200" for a in TINY_ARGS]  # --epochs 200: still running
    proc = subprocess.Popen(
        [sys.executable, "-m", "spikebridge", "train", *argv, "--out", str(run)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        deadline, lock = time.monotonic() + 120, run / ckpt.LOCK_FILE
        while lock.read_text().strip() != str(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # until the new attempt holds the folder (its pid in .lock)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert err.startswith("terminated (SIGTERM)") and err.count("\n") == 1, err
    assert survived(run, user)
    if rundir.run_status(run) == rundir.INTERRUPTED:  # an epoch was committed in time
        assert f"--resume --out {run}" in err
    else:
        assert not (run / ckpt.CONFIG_FILE).exists() and "nothing was left" in err


def test_a_file_that_appeared_unrecorded_is_never_overwritten(tmp_path):
    run = tmp_path / "run"
    with rundir.claim_run_dir(run, resume=False):
        ckpt.write_json(run / ckpt.CONFIG_FILE, {"model": {}})  # recorded, then written
        (run / ckpt.METRICS_FILE).write_text("the user's\n")  # appeared meanwhile
        with pytest.raises(RunError, match="was not written by this run"):
            ckpt.write_jsonl(run / ckpt.METRICS_FILE, [{"epoch": 1}])
    assert (run / ckpt.METRICS_FILE).read_text() == "the user's\n"


# ----------------------------------------------------------------------------- messages


def test_an_interrupted_experiment_does_not_suggest_a_resume_it_has_no(tmp_path, monkeypatch,
                                                                        capsys):  # fmt: skip
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        "kind: conversion\ndataset: synthetic\nmodels: [resnet20]\nblocks: [post-add]\n"
        "methods: [maxnorm]\ntimesteps: [1, 2]\nprofiles:\n  cpu:\n    device: cpu\n"
        "    train: {subset: 96, val_size: 32, batch_size: 16, width: 0.25, epochs: 2}\n"
    )
    real = Trainer.run_epoch

    def interrupted_in_epoch_2(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, epoch)

    monkeypatch.setattr(Trainer, "run_epoch", interrupted_in_epoch_2)
    assert main(["experiment", str(spec), "--out", str(tmp_path / "exp")]) == 130
    err = capsys.readouterr().err.splitlines()[-1]
    assert "--resume" not in err and err.startswith("interrupted; run the same command again")
    assert rundir.run_status(tmp_path / "exp" / "anns" / "resnet20-post-add-relu") == (
        rundir.INTERRUPTED
    )


@pytest.mark.parametrize(
    ("command", "marked", "expected"),
    [
        ("train", True, "continue with: spikebridge train --resume --out R"),
        ("train", False, "nothing was left to resume"),
        ("distill", True, "spikebridge distill --resume --out R"),
        ("experiment", True, "run the same command again"),
        ("experiment", False, "nothing was left to resume"),
        ("convert", False, "nothing was left to resume"),
        ("eval", False, "nothing was left to resume"),
    ],
)  # fmt: skip
def test_the_interrupted_line_suggests_only_what_works(command, marked, expected):
    exc = KeyboardInterrupt()
    if marked:
        mark_resumable(exc, "R")
    message = interrupted_message(command, exc)
    assert message.startswith("interrupted;") and expected in message
    if command not in ("train", "distill"):
        assert "--resume" not in message
    assert interrupted_message(command, Terminated()).startswith("terminated (SIGTERM);")

"""End to end through the CLI: a tiny IDX folder reaches train, eval, convert, analyze,
compare, report, distill and export, an image folder train, convert and eval; shape, classes
and normalization are recorded and reused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from idx_files import write_idx_folder
from PIL import Image

from spikebridge.cli import main
from spikebridge.data import load_dataset
from spikebridge.errors import ConfigError

TINY = ["--model", "resnet20", "--width", "0.25", "--epochs", "1", "--batch-size", "16",
        "--device", "cpu", "--no-progress", "--threads", "1"]  # fmt: skip


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _convert(run: Path, out: Path) -> dict:
    argv = ["convert", str(run), "--method", "robust", "--report-at", "1,2",
            "--calibration-size", "16", "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    return _read(out / "summary.json")


def test_idx_folder_train_eval_convert_export(tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    write_idx_folder(folder, size=8, channels=3, classes=3, n_train=60, n_test=30)
    run = tmp_path / "ann"
    argv = ["train", "--dataset", "idx", "--data-dir", str(folder), "--val-size", "12",
            "--augment", "crop", "--out", str(run), *TINY]  # fmt: skip
    assert main(argv) == 0
    config, summary = _read(run / "config.json"), _read(run / "summary.json")
    expected = load_dataset("idx", folder, val_size=12).info  # the 48 training images' stats
    assert config["data"]["augment"] == "crop"
    np.testing.assert_allclose(config["data"]["mean"], expected.mean, rtol=1e-12)
    np.testing.assert_allclose(config["data"]["std"], expected.std, rtol=1e-12)
    assert (config["model"]["in_channels"], config["model"]["num_classes"]) == (3, 3)
    assert summary["dataset"] == "idx" and summary["dataset_info"]["shape"] == [3, 8, 8]
    assert summary["dataset_info"]["num_classes"] == 3

    assert main(["eval", str(run), "--device", "cpu"]) == 0
    first = _read(run / "eval.json")
    assert first["samples"] == 30
    # eval normalizes with the RECORDED values: changing the record changes the loss
    config["data"]["mean"] = [m + 0.2 for m in config["data"]["mean"]]
    (run / "config.json").write_text(json.dumps(config))
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    assert _read(run / "eval.json")["loss"] != pytest.approx(first["loss"], rel=1e-6)

    converted = _convert(run, tmp_path / "snn")
    assert converted["dataset_info"]["shape"] == [3, 8, 8]
    assert _read(tmp_path / "snn" / "config.json")["data"]["mean"] == config["data"]["mean"]
    assert main(["eval", str(tmp_path / "snn"), "--device", "cpu"]) == 0
    # the other commands that read a run's data: analyze, compare, report, distill
    analyze = ["analyze", str(tmp_path / "snn"), "--calibration-images", "8", "--device", "cpu"]
    assert main(analyze) == 0
    assert main(["compare", str(run), str(tmp_path / "snn"), "--device", "cpu"]) == 0
    assert main(["report", str(tmp_path / "snn")]) == 0
    student = tmp_path / "student"
    argv = ["distill", "--teacher", str(run), "--dataset", "idx", "--data-dir", str(folder),
            "--val-size", "12", "--neuron", "lif", "--timesteps", "2", "--out", str(student),
            *TINY]  # fmt: skip
    assert main(argv) == 0
    # the student recomputes the same statistics from the same training split
    np.testing.assert_allclose(_read(student / "config.json")["data"]["mean"], expected.mean)
    pytest.importorskip("nir")
    from spikebridge.export import import_nir

    assert main(["export", str(tmp_path / "snn"), "-o", str(tmp_path / "m.nir")]) == 0
    graph = import_nir(tmp_path / "m.nir")
    np.testing.assert_allclose(graph.metadata["input_mean"], config["data"]["mean"])
    assert tuple(graph.nodes["input"].input_type["input"]) == (3, 8, 8)


def test_image_folder_train_convert_eval(tmp_path: Path) -> None:
    """The same path for a lazily decoded dataset (conversion used to refuse imagefolder)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("val", 3)):
        for c, color in enumerate(((220, 30, 30), (30, 200, 40))):
            (tmp_path / "imgs" / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                noise = rng.integers(-30, 30, size=(12, 14, 3))
                pixels = np.clip(np.array(color) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / "imgs" / split / f"c{c}" / f"{i}.png")
    run = tmp_path / "ann"
    argv = ["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "imgs"),
            "--image-size", "8", "--workers", "0", "--val-size", "4", "--augment", "flip",
            "--out", str(run), *TINY]  # fmt: skip
    assert main(argv) == 0
    assert _read(run / "config.json")["data"]["mean"] == [0.485, 0.456, 0.406]  # ImageNet's
    converted = _convert(run, tmp_path / "snn")
    assert converted["test_samples"] == 6
    assert converted["dataset_info"]["class_names"] == ["c0", "c1"]
    assert main(["eval", str(tmp_path / "snn"), "--device", "cpu"]) == 0


def test_a_run_interrupted_before_the_record_resumes(tmp_path: Path, monkeypatch) -> None:
    """A run stored without data.mean/std (older spikebridge) resumes; one stored with other
    values is refused like any changed setting."""
    from spikebridge.config import TRAIN_SECTIONS, load_config
    from spikebridge.engine.train import Trainer
    from spikebridge.runs import train_run

    tiny = {"dataset": "synthetic", "subset": 32, "val_size": 16, "batch_size": 16,
            "model": "resnet20", "width": 0.25, "epochs": 2, "progress": False,
            "out": str(tmp_path / "run")}  # fmt: skip
    original = Trainer.run_epoch

    def stop_at_second(self, epoch):  # type: ignore[no-untyped-def]
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "run_epoch", stop_at_second)
        with pytest.raises(KeyboardInterrupt):
            train_run(load_config(TRAIN_SECTIONS, overrides=tiny), log=lambda _: None)
    stored = _read(tmp_path / "run" / "config.json")
    assert stored["data"]["mean"] == [0.5]
    stored["data"]["std"] = [0.3]
    (tmp_path / "run" / "config.json").write_text(json.dumps(stored))
    resume = load_config(TRAIN_SECTIONS, overrides={**tiny, "resume": True})
    with pytest.raises(ConfigError, match=r"data.std=\[0.3\]"):
        train_run(resume, log=lambda _: None)
    del stored["data"]["mean"], stored["data"]["std"]
    (tmp_path / "run" / "config.json").write_text(json.dumps(stored))
    assert train_run(resume, log=lambda _: None)["epochs"] == 2


@pytest.mark.parametrize("case", ["no folder", "no data dir", "truncated", "bad header"])
def test_bad_idx_input_exits_2_with_one_sentence(tmp_path: Path, case: str, capsys) -> None:
    folder = tmp_path / "idx"
    write_idx_folder(folder, gz=False)
    if case == "truncated":
        path = folder / "t10k-images-idx3-ubyte"
        path.write_bytes(path.read_bytes()[:-7])
    elif case == "bad header":
        (folder / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00")
    data = {"no folder": ["--data-dir", str(tmp_path / "absent")], "no data dir": []}.get(
        case, ["--data-dir", str(folder)]
    )
    out = tmp_path / "run"
    assert main(["train", "--dataset", "idx", *data, "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and err.endswith(".")
    assert not out.exists()  # nothing half-written

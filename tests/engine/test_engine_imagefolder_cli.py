"""`spikebridge train/eval --dataset imagefolder`: an ImageNet-layout folder end to end."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from spikebridge.cli import main

COLORS = ((220, 30, 30), (30, 200, 40), (40, 40, 230))


def _image_folder(root: Path, per_class: int) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 4)):
        for c, color in enumerate(COLORS):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                noise = rng.integers(-30, 30, size=(30, 40, 3))
                pixels = np.clip(np.array(color) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_train_and_eval_on_an_image_folder(tmp_path):
    root = _image_folder(tmp_path / "imgs", per_class=12)
    out = tmp_path / "run"
    argv = [
        "train", "--dataset", "imagefolder", "--data-dir", str(root), "--image-size", "16",
        "--workers", "0", "--val-size", "6", "--model", "resnet18", "--width", "0.125",
        "--stem", "7x7", "--epochs", "3", "--batch-size", "8", "--lr", "0.05",
        "--out", str(out), "--device", "cpu", "--no-progress", "--no-amp",
    ]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "imagefolder"
    assert summary["test_accuracy"] > 1 / 3  # colour classes: above chance after 3 epochs
    assert main(["eval", str(out), "--device", "cpu"]) == 0
    assert json.loads((out / "eval.json").read_text())["samples"] == 12


def test_imagefolder_without_data_dir_is_a_clear_error(tmp_path, capsys):
    argv = ["train", "--dataset", "imagefolder", "--out", str(tmp_path / "r"), "--epochs", "1"]
    assert main(argv) == 2
    assert "needs --data-dir" in capsys.readouterr().err

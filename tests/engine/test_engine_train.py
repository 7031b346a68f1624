"""The training loop: bit-exact resume, extras logging, model selection, run-folder checks,
any DataLoader."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

from spikebridge.config import TRAIN_SECTIONS, TrainConfig, load_config
from spikebridge.data import DeviceLoader, load_splits
from spikebridge.engine import ClassificationTask, Loaders, fit, progress
from spikebridge.engine import checkpoint as ckpt
from spikebridge.engine.train import Trainer
from spikebridge.errors import ConfigError
from spikebridge.models import build
from spikebridge.runs import train_run


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead on a shared CPU
    yield
    torch.set_num_threads(before)


TINY_RUN = {
    "dataset": "synthetic", "subset": 96, "val_size": 32, "batch_size": 16, "model": "resnet20",
    "width": 0.25, "epochs": 3, "lr": 0.1, "schedule": "cosine", "progress": False,
}  # fmt: skip


def tiny_config(out, **changes):
    return load_config(TRAIN_SECTIONS, overrides={**TINY_RUN, "out": str(out), **changes})


def interrupt_after(monkeypatch, epochs_done):
    """Make the next run stop (KeyboardInterrupt) once ``epochs_done`` epochs are saved."""
    original = Trainer.run_epoch

    def run_epoch(self, epoch):
        if epoch == epochs_done:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "run_epoch", run_epoch)


def assert_same_tensors(path_a, path_b):
    a, b = load_file(str(path_a)), load_file(str(path_b))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, monkeypatch):
    full = train_run(tiny_config(tmp_path / "full"), log=lambda _: None)
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            train_run(tiny_config(tmp_path / "cut"), log=lambda _: None)
    state = ckpt.load_checkpoint(tmp_path / "cut" / ckpt.CHECKPOINT)
    assert state["fit"]["epoch"] == 1 and not (tmp_path / "cut" / ckpt.SUMMARY_FILE).exists()
    resumed = train_run(tiny_config(tmp_path / "cut", resume=True), log=lambda _: None)
    assert_same_tensors(tmp_path / "full" / ckpt.BEST_WEIGHTS, tmp_path / "cut" / ckpt.BEST_WEIGHTS)
    last = [ckpt.load_checkpoint(tmp_path / run / ckpt.CHECKPOINT) for run in ("full", "cut")]
    assert last[0]["model"].keys() == last[1]["model"].keys()
    for key, value in last[0]["model"].items():
        assert torch.equal(value, last[1]["model"][key]), key
    drop = ("train_time_s", "run_dir")
    assert {k: v for k, v in full.items() if k not in drop} == {
        k: v for k, v in resumed.items() if k not in drop
    }
    metrics = [ckpt.read_jsonl(tmp_path / run / ckpt.METRICS_FILE) for run in ("full", "cut")]
    for record in metrics[0] + metrics[1]:
        record.pop("epoch_time_s")
    assert metrics[0] == metrics[1] and [r["epoch"] for r in metrics[0]] == [1, 2, 3]


def test_resuming_checks_the_config_and_reports_a_finished_run(tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            train_run(tiny_config(tmp_path / "run", epochs=2), log=lambda _: None)
    with pytest.raises(ConfigError, match="trained with optim.lr=0.1, not 0.2"):
        train_run(tiny_config(tmp_path / "run", epochs=2, lr=0.2, resume=True))
    with pytest.raises(ConfigError, match="already holds a run, interrupted; pass --resume"):
        train_run(tiny_config(tmp_path / "run", epochs=2))
    train_run(tiny_config(tmp_path / "run", epochs=2, resume=True), log=lambda _: None)
    lines = []
    summary = train_run(tiny_config(tmp_path / "run", epochs=2, resume=True), log=lines.append)
    assert summary["epochs"] == 2 and "already finished" in lines[0]


def test_fit_logs_task_extras_and_selects_on_validation(tmp_path):
    splits = load_splits("synthetic", subset=64, val_size=32)
    make = lambda x, y, shuffle: DeviceLoader(x, y, 16, splits.info, "cpu", shuffle, shuffle, 0)  # noqa: E731
    loaders = Loaders(
        make(splits.train_x, splits.train_y, True),
        make(splits.val_x, splits.val_y, False),
        make(splits.test_x[:64], splits.test_y[:64], False),
    )
    base = ClassificationTask()

    def task(model, images, labels):
        out = base(model, images, labels)
        return {**out, "ce_loss": out["loss"].detach(), "constant": 2.0}

    torch.manual_seed(0)
    model = build("resnet20", num_classes=4, in_channels=1, width=0.25)
    cfg = TrainConfig(epochs=2, progress=False)
    result = fit(model, task, loaders, tiny_config(tmp_path).optim, cfg, log=lambda _: None)
    for record in result.history:
        assert record["ce_loss"] == pytest.approx(record["train_loss"])
        assert record["constant"] == pytest.approx(2.0)
    vals = [r["val_accuracy"] for r in result.history]
    assert result.state.best_epoch == 1 + vals.index(max(vals))
    assert result.state.best_test == max(r["test_accuracy"] for r in result.history)
    assert result.state.final_test == result.history[-1]["test_accuracy"]
    assert set(result.test["accuracy_by_timestep"]) == {"1"}


def test_fit_reports_every_training_batch_to_a_progress_listener(tmp_path):
    ticks = []
    with progress.listening(ticks.append):  # what a demo worker forwards to its lane
        train_run(tiny_config(tmp_path / "run", epochs=2), log=lambda _: None)
    # 96 training images in batches of 16: 6 per epoch
    assert [(t.epoch, t.step) for t in ticks] == [(e, s) for e in (1, 2) for s in range(1, 7)]
    assert {(t.epochs, t.steps) for t in ticks} == {(2, 6)}
    assert ticks[-1].fraction == 1.0 and ticks[5].fraction == 0.5
    progress.report(1, 1, 1, 1)  # outside the block: nobody listens, nothing recorded
    assert len(ticks) == 12


@pytest.mark.parametrize("clip", [None, 0.01])
def test_grad_clip_bounds_the_global_gradient_norm(clip):
    splits = load_splits("synthetic", subset=32, val_size=16)
    loader = DeviceLoader(splits.train_x, splits.train_y, 16, splits.info, "cpu", True, True, 0)
    torch.manual_seed(0)
    model = build("resnet20", num_classes=4, in_channels=1, width=0.25)
    optim = tiny_config("unused", grad_clip=clip).optim
    trainer = Trainer(model, ClassificationTask(), Loaders(loader, None, None), optim,
                      TrainConfig(epochs=1, progress=False), None, lambda _: None)  # fmt: skip
    images, labels = next(iter(loader))
    trainer.step(images, labels)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    if clip is None:
        assert norm > 0.1  # an unclipped first step: the bound below is not vacuous
    else:
        assert norm <= clip * (1 + 1e-4)


def test_grad_clip_must_be_positive():
    with pytest.raises(ConfigError, match="grad_clip"):
        tiny_config("unused", grad_clip=0.0)


def plain_loaders(batch_size=16):
    """torch DataLoaders over TensorDatasets: no set_epoch, no device handling."""
    splits = load_splits("synthetic", subset=64, val_size=32)
    data = lambda x, y: TensorDataset(x.float() / 255, y)  # noqa: E731
    train = DataLoader(data(splits.train_x, splits.train_y), batch_size, shuffle=True)
    val = DataLoader(data(splits.val_x, splits.val_y), 64)
    return Loaders(train, val, DataLoader(data(splits.test_x[:64], splits.test_y[:64]), 64))


def test_fit_takes_a_plain_dataloader_and_resumes_it_bit_exactly(tmp_path, monkeypatch):
    optim, cfg = tiny_config("unused").optim, TrainConfig(epochs=2, progress=False, seed=3)

    def run(out, resume=False):
        torch.manual_seed(0)
        model = build("resnet20", num_classes=4, in_channels=1, width=0.25)
        train = dataclasses.replace(cfg, resume=resume)
        return fit(model, ClassificationTask(), plain_loaders(), optim, train, out, lambda _: None)

    full = run(tmp_path / "full")
    assert len(full.history) == 2 and full.test["samples"] == 64
    assert full.history[-1]["train_loss"] < full.history[0]["train_loss"]  # it trains
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / "cut")
    resumed = run(tmp_path / "cut", resume=True)  # the shuffle order comes from (seed, epoch)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    assert_same_tensors(tmp_path / "full" / ckpt.BEST_WEIGHTS, tmp_path / "cut" / ckpt.BEST_WEIGHTS)


def test_fit_refuses_a_loader_without_len():
    model = build("resnet20", num_classes=4, in_channels=1, width=0.25)
    batches = ((torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)) for _ in range(2))
    with pytest.raises(ConfigError, match="has no len"):
        fit(model, ClassificationTask(), Loaders(batches, None, None),
            tiny_config("unused").optim, TrainConfig(epochs=1, progress=False))  # fmt: skip

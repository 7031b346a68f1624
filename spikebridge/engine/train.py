"""The training loop: one loop for ANN, SNN and (later) distillation.

:func:`fit` trains a model with a *task* (``task(model, images, labels) -> {"loss",
"output", ...extras}``, see :mod:`spikebridge.engine.tasks`), SGD and a per-iteration
schedule. Each epoch it measures train loss/accuracy, validation accuracy (model selection),
test accuracy (logged only for the paper-comparison figure), the learning rate, the epoch
time and the task's extras, and writes them as one line of ``metrics.jsonl``.

Model selection happens on the validation split: the weights of the epoch with the best
validation accuracy are kept (``model.safetensors``) and tested ONCE at the end. The best
test accuracy over epochs is also recorded, labelled as the figure papers report (DESIGN).

The training batches may come from any re-iterable with ``len()`` that yields ``(images,
labels)``: the project's loaders or a plain ``torch.utils.data.DataLoader``. Batches are moved
to the model's device when they are elsewhere.

Resume is bit-exact on CPU: every random stream is re-seeded from ``(seed, epoch)`` at the
start of each epoch; data order comes from ``loader.set_epoch(epoch)`` when the loader has it
(else a shuffling DataLoader draws its order from that re-seeded torch RNG); the weights,
optimizer, schedule, AMP scaler and RNG states are restored from ``checkpoint.pt``, the one
file an epoch commits (see :mod:`spikebridge.engine.checkpoint`).
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from spikebridge.config import OptimConfig, TrainConfig
from spikebridge.engine import checkpoint as ckpt
from spikebridge.engine import distributed as ddp
from spikebridge.engine import progress
from spikebridge.engine.checkpoint import note_write
from spikebridge.engine.distributed import evaluate_sharded as evaluate
from spikebridge.engine.optim import build_optimizer, build_scheduler
from spikebridge.engine.tasks import Task
from spikebridge.errors import ConfigError, ModelError

EPOCH_STREAM, INIT_STREAM = 1, 2  # keys of derive_seed, so streams never coincide
POSTFIX_EVERY = 10  # refresh the progress bar's loss every N steps (each refresh syncs)
TENSORBOARD_DIR = "tensorboard"  # RUN/tensorboard holds the event files (--tensorboard)


def print_flush(message: str) -> None:
    """The default ``log``: print and flush, so epoch lines reach a redirected log at once."""
    print(message, flush=True)


def derive_seed(*keys: int) -> int:
    """A 32-bit seed mixed from integers (``numpy.random.SeedSequence``), e.g. (seed, epoch)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def open_tensorboard(run_dir: str | Path | None) -> Any:
    """A ``SummaryWriter`` into ``run_dir/tensorboard`` (None without ``run_dir``).

    tensorboard is optional, so it is imported only here; ConfigError when it is missing.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "--tensorboard needs the tensorboard package; install it with "
            "pip install 'spikebridge[tensorboard]'."
        ) from None
    if run_dir is None:
        return None
    note_write(Path(run_dir) / TENSORBOARD_DIR)  # this run's folder, recorded before it exists
    return SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR))


@dataclass
class Loaders:
    """Batches ``(images, labels)`` of the three splits. ``train`` is re-iterable with
    ``len()`` (batches per epoch, for the schedule), e.g. a plain DataLoader; its
    ``set_epoch(epoch)`` is called when it has one. ``val`` may be None (no held-out split:
    the last epoch is selected); ``test`` may be None (not measured)."""

    train: Any
    val: Iterable[Any] | None
    test: Iterable[Any] | None


@dataclass
class FitState:
    """Progress saved in ``checkpoint.pt``; accuracies are fractions."""

    epoch: int = 0  # epochs completed
    best_val: float | None = None  # validation accuracy of the selected epoch
    best_epoch: int = 0  # selected epoch (1-based; 0 = none yet)
    best_test: float | None = None  # max test accuracy over epochs (paper comparison only)
    final_test: float | None = None  # test accuracy after the last epoch
    train_time_s: float = 0.0  # wall time of all epochs, summed over resumes


@dataclass
class FitResult:
    """What :func:`fit` returns: the state, the per-epoch records and the selected model's
    test evaluation (``evaluate`` dict at the model's T, ``None`` without a test loader)."""

    state: FitState
    history: list[dict[str, Any]] = field(default_factory=list)
    test: dict[str, Any] | None = None


class Trainer:
    """The objects of one training run and its steps (set-up, epoch, save, resume, finish)."""

    def __init__(
        self, model: nn.Module, task: Task, loaders: Loaders, optim: OptimConfig,
        train: TrainConfig, run_dir: str | Path | None, log: Callable[[str], None],
    ) -> None:  # fmt: skip
        self.model, self.task, self.loaders, self.cfg, self.log = model, task, loaders, train, log
        self.grad_clip = optim.grad_clip
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.device = next(model.parameters()).device
        self.use_amp = train.amp and self.device.type == "cuda"
        self.writes = ddp.is_main_process()  # only rank 0 writes files (docs/SCALING.md)
        wrapped = ddp.wrap_model(model, getattr(train, "sync_bn", False))  # DDP if torchrun
        self.forward_model = torch.compile(wrapped) if train.compile else wrapped
        self.optimizer = build_optimizer(model, optim)
        steps = batches_per_epoch(loaders.train)
        self.scheduler = build_scheduler(self.optimizer, optim, train.epochs, steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.state, self.history = FitState(), []
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.best_changed = False  # the selected weights changed in the epoch being saved
        wants_tb = getattr(train, "tensorboard", False)  # per-epoch scalars for TensorBoard
        self.writer = open_tensorboard(self.run_dir) if wants_tb and self.writes else None

    # ------------------------------------------------------------------ one epoch

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training batches; returns averaged loss, accuracy and extras."""
        if hasattr(self.loaders.train, "set_epoch"):
            self.loaders.train.set_epoch(epoch)
        seed_everything(derive_seed(self.cfg.seed, epoch, EPOCH_STREAM))
        self.forward_model.train()
        sums: dict[str, torch.Tensor] = {}
        n = 0
        bar = tqdm(
            self.loaders.train, total=len(self.loaders.train), leave=False,
            desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
            disable=not (self.cfg.progress and sys.stderr.isatty() and self.writes),
        )  # fmt: skip
        for i, (images, labels) in enumerate(bar):
            images, labels = images.to(self.device), labels.to(self.device)  # no-op if there
            out = self.step(images, labels)
            _accumulate(sums, out, labels)
            n += len(labels)
            progress.report(epoch + 1, self.cfg.epochs, i + 1, bar.total)  # demo lanes
            if not bar.disable and i % POSTFIX_EVERY == 0:
                bar.set_postfix(loss=f"{out['loss'].item():.4f}")
        sums, n = ddp.all_reduce_sums(sums, n)  # sums over ranks (no-op in one process)
        stats = {k: v.item() / n for k, v in sums.items()}
        if not math.isfinite(stats["loss"]):
            raise ConfigError(f"training diverged (loss {stats['loss']} in epoch {epoch + 1}); "
                              "lower --lr or disable --amp.")  # fmt: skip
        return stats

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward the task (under autocast on CUDA), back-propagate ``loss``, step SGD + lr."""
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            out = self.task(self.forward_model, images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out["loss"]).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return out

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Train, measure val and test, select on val; returns the ``metrics.jsonl`` record."""
        start, lr = time.perf_counter(), self.optimizer.param_groups[0]["lr"]
        train = self.train_one_epoch(epoch)
        val = evaluate(self.model, self.loaders.val) if self.loaders.val is not None else None
        test = evaluate(self.model, self.loaders.test) if self.loaders.test is not None else None
        seconds = time.perf_counter() - start
        record = {"epoch": epoch + 1, "lr": lr, "train_loss": train.pop("loss")}
        record["train_accuracy"] = train.pop("accuracy")
        for name, result in (("val", val), ("test", test)):
            record[f"{name}_accuracy"] = result["accuracy"] if result else None
            record[f"{name}_loss"] = result["loss"] if result else None
        record.update(epoch_time_s=seconds, **train)
        self._update_state(record, seconds)
        return record

    def _update_state(self, record: dict[str, Any], seconds: float) -> None:
        s, val, test = self.state, record["val_accuracy"], record["test_accuracy"]
        s.epoch, s.train_time_s, s.final_test = record["epoch"], s.train_time_s + seconds, test
        if test is not None:
            s.best_test = test if s.best_test is None else max(s.best_test, test)
        if val is None or s.best_val is None or val > s.best_val:
            s.best_val, s.best_epoch = val, record["epoch"]
            self.best_weights = {
                k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
            }
            self.best_changed = True

    # ------------------------------------------------------------------ save / resume

    def save(self, record: dict[str, Any]) -> None:
        """Commit the epoch: ``checkpoint.pt`` first (one atomic file holding everything a
        resume needs), then the files derived from it (``metrics.jsonl``, and
        ``model.safetensors`` when the selection changed). A kill between them leaves a
        consistent checkpoint, from which :meth:`resume` rewrites the derived files."""
        self.history.append(record)
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.writer.add_scalar(key, value, record["epoch"])
            self.writer.flush()
        if self.run_dir is not None and self.writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)  # fit used as a library function
            ckpt.save_checkpoint(self.run_dir / ckpt.CHECKPOINT, self._checkpoint())
            self._write_derived(best=self.best_changed)
        self.best_changed = False

    def _write_derived(self, best: bool) -> None:
        """``metrics.jsonl`` from the history; ``model.safetensors`` when ``best``."""
        ckpt.write_jsonl(self.run_dir / ckpt.METRICS_FILE, self.history)
        if best and self.best_weights is not None:
            ckpt.save_weights(self.best_weights, self.run_dir / ckpt.BEST_WEIGHTS)

    def _checkpoint(self) -> dict[str, Any]:
        """The epoch's resume state; ``best`` is None when the selected weights are this
        epoch's (``model``), so they are stored once."""
        model = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        best = None if self.state.best_epoch == self.state.epoch else self.best_weights
        return {
            "format": ckpt.CHECKPOINT_FORMAT, "fit": asdict(self.state), "rng": ckpt.capture_rng(),
            "model": model, "best": best, "history": self.history,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }  # fmt: skip

    def resume(self) -> None:
        """Continue from ``checkpoint.pt`` when the run has one (else start at epoch 1)."""
        path = self.run_dir / ckpt.CHECKPOINT if self.run_dir is not None else None
        if path is None or not path.is_file():
            if path is not None and (self.run_dir / ckpt.TRAIN_STATE).is_file():
                raise ModelError(
                    f"run folder {str(self.run_dir)!r} was written by an older spikebridge "
                    f"({ckpt.TRAIN_STATE}), which cannot be resumed safely; start it again."
                )
            self.log("no saved training state found; starting from epoch 1")
            return
        saved = ckpt.load_checkpoint(path)
        ckpt.load_state_into(self.model, saved["model"], str(path))
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        ckpt.restore_rng(saved["rng"])
        self.state = FitState(**saved["fit"])
        self.history = list(saved["history"])
        if self.state.best_epoch > 0:
            self.best_weights = saved["best"] if saved["best"] is not None else saved["model"]
        if self.writes:  # a kill may have cut the derived files: rewrite them from the checkpoint
            self._write_derived(best=True)
        self.log(f"resumed after epoch {self.state.epoch} of {self.cfg.epochs}")

    # ------------------------------------------------------------------ the end

    def finish(self) -> FitResult:
        """Load the selected weights into the model and test it once (at ``eval_timesteps``)."""
        if self.writer is not None:
            self.writer.close()
        if self.best_weights is not None:
            ckpt.load_state_into(self.model, self.best_weights, "the selected weights")
        result = FitResult(self.state, self.history)
        if self.loaders.test is not None:
            result.test = final_test(self.model, self.loaders.test, self.cfg.eval_timesteps)
        return result


def batches_per_epoch(loader: Any) -> int:
    """``len(loader)``: the schedule is laid out in steps; ConfigError when it has none."""
    try:
        steps = len(loader)
    except TypeError:
        raise ConfigError(
            f"the training loader ({type(loader).__name__}) has no len(); fit needs the number "
            "of batches per epoch for the learning-rate schedule (use a map-style dataset)."
        ) from None
    if steps < 1:
        raise ConfigError("the training loader has no batches; expected at least one.")
    return steps


def _accumulate(sums: dict[str, torch.Tensor], out: dict[str, Any], labels: torch.Tensor) -> None:
    """Add a batch's loss, correct count and scalar extras (weighted by batch size)."""
    n = len(labels)
    batch = {"loss": out["loss"].detach().double() * n}
    batch["accuracy"] = (out["output"].detach().argmax(1) == labels).sum().double()
    for key, value in out.items():
        if key not in ("loss", "output"):
            batch[key] = torch.as_tensor(value).detach().double().to(labels.device) * n
    for key, value in batch.items():
        sums[key] = sums[key] + value if key in sums else value


def final_test(model: nn.Module, loader: Iterable[Any], eval_timesteps: int | None) -> dict:
    """Test once; a spiking model runs ``max(T, eval_timesteps)`` steps and reports every t,
    while ``accuracy``/``loss`` stay those at its own T."""
    T = int(getattr(model, "timesteps", 1))
    if not getattr(model, "spiking", False):
        return evaluate(model, loader)
    result = evaluate(model, loader, timesteps=max(T, eval_timesteps or T))
    result["accuracy"] = result["accuracy_by_timestep"][str(T)]
    result["loss"] = result["loss_by_timestep"][str(T)]
    return result


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['train_loss']:.4f}",
             f"train {record['train_accuracy']:.2%}"]  # fmt: skip
    for name in ("val", "test"):
        if record[f"{name}_accuracy"] is not None:
            parts.append(f"{name} {record[f'{name}_accuracy']:.2%}")
    parts += [f"lr {record['lr']:.3g}", f"{record['epoch_time_s']:.1f}s"]
    return "  ".join(parts)


def fit(
    model: nn.Module,
    task: Task,
    loaders: Loaders,
    optim: OptimConfig,
    train: TrainConfig,
    run_dir: str | Path | None = None,
    log: Callable[[str], None] = print_flush,
) -> FitResult:
    """Train ``model`` (already on its device) for ``train.epochs`` epochs with ``task``.

    ``loaders.train`` may be any re-iterable of ``(images, labels)`` batches with ``len()``,
    e.g. a plain ``torch.utils.data.DataLoader`` (see :class:`Loaders`). With ``run_dir``,
    commits ``checkpoint.pt`` after every epoch, then ``metrics.jsonl`` and
    ``model.safetensors`` (selected weights); ``train.resume`` continues from the checkpoint.
    Returns a :class:`FitResult`; the model holds the selected (best-validation) weights.
    """
    trainer = Trainer(model, task, loaders, optim, train, run_dir, log)
    if train.resume:
        trainer.resume()
    for epoch in range(trainer.state.epoch, train.epochs):
        record = trainer.run_epoch(epoch)
        trainer.save(record)
        log(_epoch_line(record, train.epochs))
    return trainer.finish()

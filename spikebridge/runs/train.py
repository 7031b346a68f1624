"""``train_run``: the library entry point behind ``spikebridge train``.

A run is a sequence of named steps (torchtune style): resolve the device, prepare the run
folder, set up data, set up the model, claim the folder, ``fit``, measure, write the summary
(the steps live in :mod:`spikebridge.runs.setup` and :mod:`spikebridge.runs.measure`, where
the distillation and conversion runs reuse them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikebridge.config import TRAIN_SECTIONS, Config, load_config
from spikebridge.engine import checkpoint as ckpt
from spikebridge.engine import distributed as ddp
from spikebridge.engine import rundir
from spikebridge.engine.memory import check_run_fits
from spikebridge.engine.tasks import ClassificationTask
from spikebridge.engine.train import FitResult, fit, open_tensorboard, print_flush
from spikebridge.runs.measure import count_parameters, measure_step
from spikebridge.runs.setup import (
    check_resumable,
    claim_for_training,
    eval_batch,
    finished_summary,
    prepare_run_dir,
    setup_data,
    setup_model,
    setup_runtime,
    with_dataset,
    write_config,
)

BEST_TEST_NOTE = (
    "test_accuracy: the model selected on the validation split, tested once (the headline). "
    "best_test_accuracy: the maximum test accuracy over epochs, the figure papers report; "
    "for comparison with papers only. final_test_accuracy: after the last epoch."
)


def make_summary(config: Config, model: nn.Module, result: FitResult, run_dir: Path) -> dict:
    """The ``summary.json`` record (accuracies are fractions)."""
    state, test, m = result.state, result.test or {}, config.model
    summary = {
        "test_accuracy": test.get("accuracy"), "test_loss": test.get("loss"),
        "test_samples": test.get("samples"),
        "val_accuracy": state.best_val, "best_epoch": state.best_epoch,
        "best_test_accuracy": state.best_test, "final_test_accuracy": state.final_test,
        "epochs": state.epoch, "timesteps": m.timesteps if m.neuron else 1,
        "model": m.name, "neuron": m.neuron, "dataset": config.data.dataset,
        "params": count_parameters(model), "train_time_s": state.train_time_s,
        "run_dir": str(run_dir), "note": BEST_TEST_NOTE,
    }  # fmt: skip
    if m.neuron and test:
        summary["accuracy_by_timestep"] = test["accuracy_by_timestep"]
    return summary


def train_run(config: Config | Mapping[str, Any], log: Callable[[str], None] = print_flush) -> dict:
    """Train a model as ``config`` says, in a run folder; return the summary dict.

    ``config`` is a :class:`Config` (sections data, model, optim, train) or a mapping of
    keys for :func:`load_config`, e.g. ``{"dataset": "synthetic", "epochs": 2}``.
    """
    if not isinstance(config, Config):
        config = load_config(TRAIN_SECTIONS, overrides=config)
    with ddp.session(setup_runtime(config.train)) as device:  # torchrun: one rank per device
        summary = _train_steps(config, device, ddp.main_only(log))
        ddp.barrier()  # the other ranks wait for rank 0's files
    return summary


def _train_steps(config: Config, device: torch.device, log: Callable[[str], None]) -> dict:
    """The steps of :func:`train_run` on this rank; only rank 0 writes the run folder."""
    run_dir = ddp.on_main(prepare_run_dir, config)  # one name (it has a timestamp) for all
    config = config.replace("train", out=str(run_dir))
    if config.train.resume and (done := finished_summary(run_dir, log)) is not None:
        return done
    loaders, info = setup_data(config.data, config.train.seed, device)
    config = with_dataset(config, info)
    if config.train.resume:
        check_resumable(run_dir, config)
    check_run_fits(config, info.image_size, eval_batch(config.data), device.type)
    model = setup_model(config.model, config.train.seed, device)
    if getattr(config.train, "tensorboard", False):
        open_tensorboard(None)  # fail before the run folder exists when tensorboard is missing
    with claim_for_training(run_dir, config) as status:
        if status == rundir.FINISHED:  # finished by another process since the first check
            return finished_summary(run_dir, log) or {}
        if config.train.resume:
            check_resumable(run_dir, config)  # again, under the lock
        write_config(run_dir, config, status)
        task = ClassificationTask()
        result = fit(model, task, loaders, config.optim, config.train, run_dir, log)
        summary = make_summary(config, model, result, run_dir)
        summary["dataset_info"] = info.to_dict()
        summary.update(measure_step(model, loaders, log))
        if ddp.is_main_process():
            ckpt.write_json(run_dir / ckpt.SUMMARY_FILE, summary)  # last: the run is finished
    return summary


def format_percent(value: float | None) -> str:
    """A fraction as a percentage with two decimals (``n/a`` for None)."""
    return "n/a" if value is None else f"{100 * value:.2f} %"


def format_summary(summary: dict[str, Any]) -> str:
    """The headline lines printed at the end of a training run."""
    lines = [
        f"run folder: {summary['run_dir']}",
        f"test accuracy (model selected on validation, epoch {summary['best_epoch']}): "
        f"{format_percent(summary['test_accuracy'])}",
        f"validation accuracy: {format_percent(summary['val_accuracy'])}   "
        f"final-epoch test: {format_percent(summary['final_test_accuracy'])}   "
        f"best test over epochs (paper-comparison figure): "
        f"{format_percent(summary['best_test_accuracy'])}",
    ]
    by_t = summary.get("accuracy_by_timestep")
    if by_t:
        lines.append(
            "test accuracy by t: " + "  ".join(f"{t}:{format_percent(a)}" for t, a in by_t.items())
        )
    return "\n".join(lines)

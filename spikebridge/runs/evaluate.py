"""``eval_run``: the library entry point behind ``spikebridge eval``; it reads finished run
folders only (:func:`spikebridge.engine.rundir.validate_run_dir`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikebridge.analysis.ops import only_timesteps
from spikebridge.config import check_count, stored_data_section
from spikebridge.engine import checkpoint as ckpt
from spikebridge.engine import rundir
from spikebridge.engine.evaluate import evaluate
from spikebridge.engine.memory import check_simulation_fits
from spikebridge.errors import ConfigError
from spikebridge.runs.measure import measure_run
from spikebridge.runs.setup import eval_batch, load_run_splits, resolve_device

EVAL_FILE = "eval.json"


def _split_loader(
    config: Mapping[str, Any], split: str, data_dir: str | None, device: torch.device,
    batch_size: int | None,
) -> Any:  # fmt: skip
    """A plain (no shuffle, no augment) loader of the run's ``split``, re-made from its config."""
    if split not in ("test", "val"):
        raise ConfigError(f"split is {split!r}; expected test or val.")
    data = stored_data_section(config.get("data", {}), data_dir=data_dir)
    seed = int(config.get("train", {}).get("seed", 0))
    splits = load_run_splits(data, seed)
    if splits.count(split) == 0:
        raise ConfigError(f"the run has no {split} split (val_size was {data.val_size}).")
    size = eval_batch(data, batch_size)
    return splits.loader(split, size, device, seed=seed, workers=data.workers)


def eval_run(
    run_dir: str | Path,
    timesteps: Sequence[int] | int | None = None,
    split: str = "test",
    data_dir: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
) -> dict:
    """Evaluate a finished run folder's selected model; writes and returns ``eval.json``.

    Adds the :func:`measure_run` numbers (firing rates, SOPs, MACs, energy estimate) on the
    first :data:`MEASURE_IMAGES` images of the split, from one simulation at the largest t
    asked for: the top-level figures at that t (``measured_timesteps``, the t of
    ``accuracy``), and per t (``*_by_timestep``) at every reported t, each over the first t
    steps only (METHODS 3).

    ``timesteps``: a single T (report every t <= T), a list (report those t), or None
    (the model's T). All t come from one pass at the largest T (METHODS 3).
    """
    check_count("--batch-size", batch_size)
    dev = resolve_device(device)
    model, config = rundir.load_run(run_dir, dev)
    wanted = _wanted_timesteps(model, timesteps)
    loader = _split_loader(config, split, data_dir, dev, batch_size)
    check_simulation_fits(model.config, loader.info.image_size, loader.batch_size,
                          max(wanted), dev.type)  # fmt: skip
    result = evaluate(model, loader, timesteps=max(wanted) if model.spiking else None)
    report = {
        "run_dir": str(run_dir), "split": split, "samples": result["samples"],
        "spiking": model.spiking, "timesteps": wanted,
        "accuracy": result["accuracy_by_timestep"][str(max(wanted))],
        "loss": result["loss_by_timestep"][str(max(wanted))],
        "accuracy_by_timestep": {str(t): result["accuracy_by_timestep"][str(t)] for t in wanted},
        "loss_by_timestep": {str(t): result["loss_by_timestep"][str(t)] for t in wanted},
    }  # fmt: skip
    t_max = max(wanted) if model.spiking else None
    report.update(only_timesteps(measure_run(model, loader, timesteps=t_max), wanted))
    ckpt.write_json(Path(run_dir) / EVAL_FILE, report)
    return report


def _wanted_timesteps(model: nn.Module, timesteps: Sequence[int] | int | None) -> list[int]:
    """The t to report: all of 1..T for a single T (or None = the model's T), else the list."""
    if timesteps is None:
        timesteps = model.timesteps
    wanted = list(range(1, timesteps + 1)) if isinstance(timesteps, int) else sorted(set(timesteps))
    if not wanted or min(wanted) < 1:
        raise ConfigError(f"timesteps are {timesteps!r}; expected integers >= 1.")
    if not model.spiking and max(wanted) > 1:
        raise ConfigError("this run's model is an ANN (T = 1); --timesteps applies to SNNs.")
    return wanted

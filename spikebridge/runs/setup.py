"""The set-up steps of a run, shared by every run of this layer: the device, the data, the
model, the run folder (chosen, checked for ``--resume`` and claimed) and its ``config.json``.

Run folders are transactional (:mod:`spikebridge.engine.rundir`): the writer holds a lock on
the folder for the whole run, ``summary.json`` is written last, an interrupted run continues
with ``--resume`` and one that failed before its first epoch was committed is started again
by the same command.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikebridge.config import DEFAULT_RUNS_DIR, Config, DataConfig, TrainConfig, load_config
from spikebridge.data import DatasetInfo, load_dataset, make_loaders, parse_augment
from spikebridge.engine import checkpoint as ckpt
from spikebridge.engine import distributed as ddp
from spikebridge.engine import rundir
from spikebridge.engine.train import INIT_STREAM, TENSORBOARD_DIR, Loaders, derive_seed
from spikebridge.errors import ConfigError
from spikebridge.models import ModelConfig, build_from_config

EVAL_BATCH_FACTOR = 4  # default evaluation batch = 4 x the training batch (no gradients kept)
# Keys that may differ between an interrupted run and its resumption (nothing numerical).
RUNTIME_KEYS = frozenset(
    {
        "train.resume",
        "train.progress",
        "train.device",
        "train.threads",
        "train.tensorboard",
        "train.out",
        "data.data_dir",
    }
)

# Keys a run records from its dataset (normalization); runs stored before have none.
RECORDED_KEYS = frozenset({"data.mean", "data.std"})


def eval_batch(data: DataConfig, batch_size: int | None = None) -> int:
    """The evaluation batch: ``batch_size`` if given, else ``--eval-batch-size``, else
    :data:`EVAL_BATCH_FACTOR` x the training batch."""
    return batch_size or data.eval_batch_size or EVAL_BATCH_FACTOR * data.batch_size


def resolve_device(name: str) -> torch.device:
    """``auto`` = cuda if available, else cpu; ConfigError for unknown or absent devices."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but CUDA is not available here.")
    return device


# ----------------------------------------------------------------------------- set-up steps


def setup_runtime(cfg: TrainConfig) -> torch.device:
    """Apply the CPU thread count and resolve the device."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    return resolve_device(cfg.device)


def load_run_splits(cfg: DataConfig, seed: int, whole_test_set: bool = False) -> Any:
    """The registry's splits of a data section (``whole_test_set``: the whole test file)."""
    return load_dataset(
        cfg.dataset, cfg.data_dir, None if whole_test_set else cfg.subset, cfg.val_size, seed,
        image_size=cfg.image_size, mean=cfg.mean, std=cfg.std,
    )  # fmt: skip


def setup_data(cfg: DataConfig, seed: int, device: torch.device) -> tuple[Loaders, DatasetInfo]:
    """Load the splits (any registered dataset) and make the run's loaders: train shuffled,
    augmented as ``cfg.augment`` says and sharded over ranks; val and test plain."""
    splits = load_run_splits(cfg, seed)
    loaders = make_loaders(
        splits, cfg.batch_size, eval_batch(cfg), device, seed=seed,
        augment=parse_augment(cfg.augment), rank=ddp.get_rank(),
        world_size=ddp.get_world_size(), workers=cfg.workers,
    )  # fmt: skip
    return Loaders(*loaders), splits.info


def with_dataset(config: Config, info: DatasetInfo) -> Config:
    """``config`` with the dataset's class count, channels and normalization recorded (the
    stored config.json then re-makes the same inputs for eval, convert and export)."""
    config = config.replace("model", num_classes=info.num_classes, in_channels=info.in_channels)
    return config.replace("data", mean=info.mean, std=info.std)


def setup_model(cfg: ModelConfig, seed: int, device: torch.device) -> nn.Module:
    """Build the model with initial weights drawn from ``seed`` alone."""
    torch.manual_seed(derive_seed(seed, 0, INIT_STREAM))
    return build_from_config(cfg).to(device)


def default_run_dir(config: Config) -> Path:
    """``runs/<dataset>-<model>-<ann|neuron-tT>-<YYYYmmdd-HHMMSS>`` (made unique)."""
    m = config.model
    kind = f"{m.neuron}-t{m.timesteps}" if m.neuron else "ann"
    base = (
        Path(DEFAULT_RUNS_DIR)
        / f"{config.data.dataset}-{m.name}-{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    return path


def prepare_run_dir(config: Config) -> Path:
    """Choose the run folder; refuse early what :func:`rundir.claim_run_dir` would refuse
    (a file, a finished or interrupted run without ``--resume``), before any data is loaded.

    The folder itself is created (and locked) only once data and model are set up, so bad
    input leaves nothing behind. The check is repeated under the lock.
    """
    t = config.train
    if t.resume and not t.out:
        raise ConfigError("--resume needs the run folder to continue, given as --out RUN_DIR.")
    run_dir = rundir.check_out_path(t.out) if t.out else default_run_dir(config)
    rundir.check_claimable(run_dir, rundir.run_status(run_dir), t.resume, resumable=True)
    return run_dir


def stored_config(run_dir: str | Path | None) -> dict[str, Any] | None:
    """The ``config.json`` of a run folder, or None when there is none (yet); RunError when
    it is damaged. A folder that never committed an epoch has no stored config to keep."""
    if not run_dir or not (Path(run_dir) / ckpt.CONFIG_FILE).is_file():
        return None
    return rundir.read_run_config(run_dir)


def _flatten(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, section in cfg.items() for k, v in section.items()}


def check_resumable(run_dir: Path, config: Config) -> None:
    """ConfigError naming the first setting that differs from the stored run's."""
    if rundir.run_status(run_dir) != rundir.INTERRUPTED:
        return  # nothing committed yet: the new config is the run's
    saved = stored_config(run_dir)
    # Fill keys added to the config since the run was stored with their defaults.
    base = load_config(config.sections, base=saved) if saved else config
    stored = _flatten(base.to_dict())
    current = _flatten(config.to_dict())
    for key in sorted(set(stored) | set(current)):
        if key in RECORDED_KEYS and stored.get(key) is None:
            continue  # stored before the dataset's values were recorded: they were the same
        if key not in RUNTIME_KEYS and stored.get(key) != current.get(key):
            raise ConfigError(
                f"run folder {str(run_dir)!r} was trained with {key}={stored.get(key)!r}, not "
                f"{current.get(key)!r}; resume it with its stored configuration."
            )


def finished_summary(run_dir: Path, log: Callable[[str], None]) -> dict | None:
    """The summary of a finished run folder (``--resume`` of it has nothing to do), else None."""
    if rundir.run_status(run_dir) != rundir.FINISHED:
        return None
    log(f"run {run_dir} is already finished; nothing to resume.")
    return ckpt.read_json(run_dir / ckpt.SUMMARY_FILE)


def claim_for_training(run_dir: Path, config: Config, leftovers: Sequence[str] = ()) -> Any:
    """Rank 0: :func:`rundir.claim_run_dir` (lock held for the run); other ranks: no lock."""
    if not ddp.is_main_process():
        return contextlib.nullcontext(rundir.NEW)
    leftovers = (TENSORBOARD_DIR, *leftovers)
    return rundir.claim_run_dir(run_dir, config.train.resume, leftovers=leftovers)


def write_config(run_dir: Path, config: Config, status: str) -> None:
    """Rank 0: ``config.json`` of a run that has committed nothing yet (a resumed run keeps
    the stored one, which :func:`check_resumable` compared)."""
    if ddp.is_main_process() and status != rundir.INTERRUPTED:
        ckpt.write_json(run_dir / ckpt.CONFIG_FILE, config.to_dict())

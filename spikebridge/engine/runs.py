"""Library entry points behind the CLI: ``train_run``, ``eval_run``, ``export_run``.

``train_run`` is a recipe of named steps (torchtune style): resolve the device, prepare the
run folder, set up data, set up the model, claim the folder, ``fit``, measure, write the
summary. Each step is a function that other recipes (distillation, conversion) can reuse;
:func:`measure_run` is the measurement step (METHODS 3: firing rates, SOPs, MACs, energy
estimate).

Run folders are transactional (:mod:`spikebridge.engine.rundir`): the writer holds a lock on
the folder for the whole run, ``summary.json`` is written last, an interrupted run continues
with ``--resume`` and one that failed before its first epoch was committed is started again
by the same command. Readers (:func:`eval_run`, :func:`export_run`) accept finished folders
only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikebridge.analysis import measure_snn
from spikebridge.analysis.ops import only_timesteps
from spikebridge.config import (
    DEFAULT_RUNS_DIR,
    TRAIN_SECTIONS,
    Config,
    DataConfig,
    TrainConfig,
    build_section,
    check_count,
    load_config,
)
from spikebridge.data import DatasetInfo, DeviceLoader, load_splits
from spikebridge.data.imagefolder import ImageFolderLoader, load_imagefolder
from spikebridge.data.spec import DATASET_INFO
from spikebridge.engine import checkpoint as ckpt
from spikebridge.engine import distributed as ddp
from spikebridge.engine import rundir
from spikebridge.engine.evaluate import evaluate, simulating
from spikebridge.engine.memory import check_run_fits, check_simulation_fits
from spikebridge.engine.tasks import ClassificationTask
from spikebridge.engine.train import (
    INIT_STREAM,
    TENSORBOARD_DIR,
    FitResult,
    Loaders,
    derive_seed,
    fit,
    open_tensorboard,
    print_flush,
)
from spikebridge.errors import ConfigError
from spikebridge.models import ModelConfig, build_from_config

EVAL_FILE = "eval.json"
EVAL_BATCH_FACTOR = 4  # default evaluation batch = 4 x the training batch (no gradients kept)
# Firing rates, SOPs and energy are measured on the first MEASURE_IMAGES test images (in file
# order, no augmentation): enough for stable averages, and a bounded cost (two forward passes
# per batch) however large the test set is.
MEASURE_IMAGES = 1024
EXPORT_FORMATS = ("nir",)
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
BEST_TEST_NOTE = (
    "test_accuracy: the model selected on the validation split, tested once (the headline). "
    "best_test_accuracy: the maximum test accuracy over epochs, the figure papers report; "
    "for comparison with papers only. final_test_accuracy: after the last epoch."
)


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


def setup_imagefolder(
    cfg: DataConfig, seed: int, device: torch.device, rank: int = 0, world_size: int = 1
) -> tuple[Loaders, DatasetInfo]:
    """ImageNet-layout folders: lazily decoded in worker processes (ROOT/val is the test set)."""
    if not cfg.data_dir:
        raise ConfigError(
            "--dataset imagefolder needs --data-dir ROOT (with ROOT/train, ROOT/val)."
        )
    splits = load_imagefolder(cfg.data_dir, cfg.image_size, cfg.val_size, seed, cfg.subset)
    eval_size = eval_batch(cfg)

    def loader(ds: Any, batch: int, train: bool) -> ImageFolderLoader | None:
        if not train and len(ds) == 0:
            return None
        # Training drops a short last batch, unless it is the only one (fewer images than
        # the batch size: the folder still trains, on one smaller batch per epoch).
        drop_last = train and len(ds) >= batch * world_size
        return ImageFolderLoader(
            ds, batch, splits.info, device, shuffle=train, augment=train and cfg.augment,
            seed=seed, drop_last=drop_last, rank=rank if train else 0,
            world_size=world_size if train else 1, num_workers=cfg.workers,
        )  # fmt: skip

    train = loader(splits.train, cfg.batch_size, True)
    loaders = Loaders(
        train, loader(splits.val, eval_size, False), loader(splits.test, eval_size, False)
    )
    return loaders, splits.info


def setup_data(cfg: DataConfig, seed: int, device: torch.device) -> tuple[Loaders, DatasetInfo]:
    """Load the splits and wrap them in device loaders (train: shuffled and augmented)."""
    if cfg.dataset == "imagefolder":
        return setup_imagefolder(cfg, seed, device, ddp.get_rank(), ddp.get_world_size())
    splits = load_splits(cfg.dataset, cfg.data_dir, cfg.subset, cfg.val_size, seed)
    info, eval_size = splits.info, eval_batch(cfg)
    train = DeviceLoader(
        splits.train_x, splits.train_y, cfg.batch_size, info, device,
        shuffle=True, augment=cfg.augment, seed=seed,
        rank=ddp.get_rank(), world_size=ddp.get_world_size(),  # this rank's shard (torchrun)
    )  # fmt: skip

    def plain(x: torch.Tensor, y: torch.Tensor) -> DeviceLoader | None:
        if len(y) == 0:
            return None
        return DeviceLoader(x, y, eval_size, info, device, shuffle=False, augment=False, seed=seed)

    loaders = Loaders(train, plain(splits.val_x, splits.val_y), plain(splits.test_x, splits.test_y))
    return loaders, info


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
        if key not in RUNTIME_KEYS and stored.get(key) != current.get(key):
            raise ConfigError(
                f"run folder {str(run_dir)!r} was trained with {key}={stored.get(key)!r}, not "
                f"{current.get(key)!r}; resume it with its stored configuration."
            )


# ----------------------------------------------------------------------------- results


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class _FirstImages:
    """Image batches of a loader (tensors or ``(images, labels)``), cut at ``max_images``;
    ``.seen`` counts the images handed out (streamed: no batch is kept)."""

    def __init__(self, loader: Iterable[Any], max_images: int) -> None:
        self.loader, self.max_images, self.seen = loader, max_images, 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        for batch in self.loader:
            if self.seen >= self.max_images:
                return
            images = (batch if torch.is_tensor(batch) else batch[0])[: self.max_images - self.seen]
            self.seen += len(images)
            yield images


def measure_run(
    model: nn.Module,
    loader: Iterable[Any],
    max_images: int = MEASURE_IMAGES,
    timesteps: int | None = None,
    headline_t: int | None = None,
) -> dict[str, Any]:
    """METHODS 3 numbers of ``model`` on the first ``max_images`` images of ``loader``.

    ``loader`` yields ``(images[B, C, H, W], labels)`` or image tensors (e.g. the test
    DeviceLoader, unshuffled). A spiking model is simulated once for ``timesteps`` steps
    (None: its own T; restored afterwards) and gives, at ``measured_timesteps`` =
    ``headline_t`` (None: the simulated T): ``firing_rate`` (spikes per neuron per step over
    all sites, in [0, 1]), ``firing_rate_by_layer``, ``silent_fraction``, ``sops_per_image``,
    ``first_layer_macs_per_image``, ``energy_estimate_uj`` (SNN); and at every t of the
    pass: ``firing_rate_by_timestep``, ``sops_by_timestep``, ``first_layer_macs_by_timestep``,
    ``energy_by_timestep``. Both kinds give ``macs_per_image`` (the ANN equivalent),
    ``ann_energy_estimate_uj`` and ``energy_note``. ``measured_images`` = images used (an
    ANN's MACs need only one batch). Energies are estimates: E_MAC = 4.6 pJ, E_AC = 0.9 pJ
    (45 nm, Horowitz 2014).
    """
    if max_images < 1:
        raise ConfigError(f"max_images is {max_images}; expected an integer >= 1.")
    images = _FirstImages(loader, max_images)
    spiking = getattr(model, "spiking", False)
    with simulating(model, timesteps if spiking else None):
        result = measure_snn(model, images, t=headline_t if spiking else None)
    result.pop("images", None)
    result["measured_images"] = images.seen
    return result


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


def measure_step(model: nn.Module, loaders: Loaders, log: Callable[[str], None]) -> dict:
    """The recipe's measurement step: :func:`measure_run` on the test split (else val)."""
    loader = loaders.test if loaders.test is not None else loaders.val
    if loader is None:
        log("no test or validation split: firing rates, SOPs and energy not measured")
        return {}
    return measure_run(model, loader)


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


def _train_steps(config: Config, device: torch.device, log: Callable[[str], None]) -> dict:
    """The steps of :func:`train_run` on this rank; only rank 0 writes the run folder."""
    run_dir = ddp.on_main(prepare_run_dir, config)  # one name (it has a timestamp) for all
    config = config.replace("train", out=str(run_dir))
    if config.train.resume and (done := finished_summary(run_dir, log)) is not None:
        return done
    loaders, info = setup_data(config.data, config.train.seed, device)
    config = config.replace("model", num_classes=info.num_classes, in_channels=info.in_channels)
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
        summary.update(measure_step(model, loaders, log))
        if ddp.is_main_process():
            ckpt.write_json(run_dir / ckpt.SUMMARY_FILE, summary)  # last: the run is finished
    return summary


# ----------------------------------------------------------------------------- eval


def _split_loader(
    config: Mapping[str, Any], split: str, data_dir: str | None, device: torch.device,
    batch_size: int | None,
) -> DeviceLoader:  # fmt: skip
    """A plain (no shuffle, no augment) loader of the run's ``split``, re-made from its config."""
    if split not in ("test", "val"):
        raise ConfigError(f"split is {split!r}; expected test or val.")
    data = build_section("data", config.get("data", {}))
    seed = int(config.get("train", {}).get("seed", 0))
    if data.dataset == "imagefolder":
        data = dataclasses.replace(
            data,
            data_dir=data_dir or data.data_dir,
            eval_batch_size=batch_size or data.eval_batch_size,
        )
        loaders, _ = setup_imagefolder(data, seed, device)
        loader = loaders.test if split == "test" else loaders.val
        if loader is None:
            raise ConfigError(f"the run has no {split} split (val_size was {data.val_size}).")
        return loader  # type: ignore[return-value]
    splits = load_splits(data.dataset, data_dir or data.data_dir, data.subset, data.val_size, seed)
    x, y = (splits.test_x, splits.test_y) if split == "test" else (splits.val_x, splits.val_y)
    if len(y) == 0:
        raise ConfigError(f"the run has no {split} split (val_size was {data.val_size}).")
    size = eval_batch(data, batch_size)
    return DeviceLoader(x, y, size, splits.info, device, shuffle=False, augment=False, seed=seed)


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
    model, config = ckpt.load_run(run_dir, dev)
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


# ----------------------------------------------------------------------------- export


def _input_shape(config: Mapping[str, Any]) -> tuple[int, int, int]:
    """One image ``(C, H, W)`` of the run's dataset (from the dataset's description)."""
    dataset = config.get("data", {}).get("dataset")
    info = DATASET_INFO.get(dataset)
    if info is None:
        raise ConfigError(
            f"the input size of dataset {dataset!r} is unknown; pass input_shape (C, H, W)."
        )
    channels = int(config.get("model", {}).get("in_channels") or info.in_channels)
    return channels, info.image_size, info.image_size


def export_run(
    run_dir: str | Path,
    fmt: str = "nir",
    out: str | Path | None = None,
    input_shape: tuple[int, int, int] | None = None,
    target: str = "portable",
) -> Path:
    """Export a spiking run folder's selected model to ``out`` (default ``RUN/model.<fmt>``).

    Formats: ``nir`` (:func:`spikebridge.export.export_nir`; needs the ``nir`` package;
    ``target`` ``portable`` or ``compact``). The dataset's mean/std become the graph's
    first node, so the file takes raw pixels in [0, 1]. ANN runs are refused
    (ConfigError): NIR describes spiking networks; convert the ANN or train with
    ``--neuron lif`` first. Returns the written path.
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(
            f"export format {fmt!r} is unknown; expected one of {', '.join(EXPORT_FORMATS)}."
        )
    model, config = ckpt.load_run(run_dir, "cpu")
    if not getattr(model, "spiking", False):
        raise ConfigError(
            f"run {str(run_dir)!r} is an ANN; {fmt} export covers spiking runs (train with "
            "--neuron lif, or convert the ANN first)."
        )
    from spikebridge.export import export_nir

    path = Path(out) if out is not None else Path(run_dir) / f"model.{fmt}"
    rundir.check_output_file(path, "-o", f"model.{fmt}")
    info = DATASET_INFO.get(config.get("data", {}).get("dataset"))
    normalization = (info.mean, info.std) if info is not None else None
    export_nir(model, path, input_shape or _input_shape(config), target=target,
               normalization=normalization)  # fmt: skip
    return path

"""Training configuration: the ``data``, ``model``, ``optim`` and ``train`` sections, the named
presets, and :func:`load_config`, which resolves any registered sections from their sources.

The config API in one place: the machinery (sections, value coercion, YAML, unknown keys,
:mod:`spikebridge.config_core`) and the argparse side (``--config``, one option per field,
deprecated spellings, :mod:`spikebridge.config_cli`) are re-exported here; the sections of
the other commands (eval, compare, ...) are :mod:`spikebridge.config_commands`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spikebridge.config_cli import (  # noqa: F401 - re-exported: the config API in one place
    add_config_arguments,
    config_from_args,
    deprecated_alias,
    given_options,
    warn_deprecated,
)
from spikebridge.config_core import (  # noqa: F401 - re-exported
    SECTIONS,
    Config,
    Section,
    build_section,
    check_count,
    check_sections,
    coerce,
    flat_names,
    merge_sources,
    option,
    preset_values,
    read_yaml,
    register_finisher,
    register_presets,
    register_section,
    resolve_config,
    shared_sections,
)
from spikebridge.data import DATASETS, dataset_entry, normalize_augment
from spikebridge.errors import ConfigError
from spikebridge.models import ModelConfig
from spikebridge.models.resnet import ACTIVATIONS, CONV_INITS, NEURONS, STRUCTURES
from spikebridge.nn.neurons import BACKENDS
from spikebridge.nn.surrogate import SURROGATES

DEFAULT_RUNS_DIR = "runs"  # parent folder of auto-named run folders
SCHEDULES = ("cosine", "multistep", "onecycle")
OPTIMIZERS = ("sgd", "adamw")
DEFAULT_LR = {"sgd": 0.1, "adamw": 2e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 1e-4, "adamw": 0.05}
# Named presets: flat config keys applied over the defaults and under --config / options.
PRESETS: dict[str, dict[str, Any]] = {
    # The IDSNN authors' recipe (METHODS 1.4): SGD 0.05, momentum 0.9, wd 1e-4 on all
    # parameters, batch 64, 200 epochs, x0.1 at 60/120/160, crop + flip, AMP, PyTorch's init,
    # no gradient clipping, no zero-initialised residual branches.
    "idsnn-paper": {
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 1e-4,
        "schedule": "multistep",
        "warmup": 0.0,
        "milestones": (0.3, 0.6, 0.8),
        "gamma": 0.1,
        "batch_size": 64,
        "epochs": 200,
        "augment": "crop,flip",
        "amp": True,
        "conv_init": "default",
        "grad_clip": None,
        "zero_init_residual": False,
    },
}
# Conversion-aware ANNs (no neuron; clip or qcfs) get these model values where no source set
# them: zero-initialised residual branches (at 100+ layers their straight-through gradients
# explode without: results-history.md, "Training 100+ layer conversion-aware ANNs") and, for
# qcfs, an initial lambda of 2 (with L = 4, steps of 0.5; every documented run uses it; a
# pre-add QCFS ResNet-56, 2 epochs: 75.3 % against 11.0 % with lambda 8, results-history.md
# "Defaults against our own measurements").
ANN_DEFAULTS: dict[str, dict[str, Any]] = {
    "clip": {"zero_init_residual": True},
    "qcfs": {"zero_init_residual": True, "threshold": 2.0},
}
# Defaults that depend on other options, as --help shows them.
register_presets(PRESETS)
DEFAULT_SHOWN = {
    "zero_init_residual": "on for clip/qcfs ANNs, else off",
    "threshold": "lif 0.5, if 1.0",
}
DEVICES_HELP = "auto (cuda if available, else cpu), cpu, cuda, cuda:N"


@register_section("data")
@dataclass
class DataConfig:
    """Which dataset, how it is split (train / held-out validation / test) and batched."""

    dataset: str = option(
        "fashion-mnist", f"a registered dataset: {', '.join(DATASETS)} (imagefolder: "
        "ROOT/train/<class>/*, ROOT/val/<class>/*; idx: a folder of MNIST-layout IDX files of "
        "any size, channels and classes; spikebridge.data.register_dataset adds more)",
    )  # fmt: skip
    data_dir: str | None = option(
        None, "folder of the dataset files (Fashion-MNIST default: the Debian package folder; "
        "cifar10/100, imagefolder, idx: required)",
    )  # fmt: skip
    subset: int | None = option(None, "train on this many images (class-balanced); none = all")
    val_size: int | float = option(
        0.1, "validation split held out of the training file: a fraction or a count"
    )
    batch_size: int = option(
        32,
        "training batch size (32: twice the steps of 64 per epoch, which a short spiking "
        "run needs to leave chance level; the IDSNN recipe: 64)",
    )
    eval_batch_size: int | None = option(None, "evaluation batch size; none = 4 x batch size")
    augment: str | bool = option(
        "none",
        "training augmentation, a comma-separated list: crop (zero padding of 1/8 of the image "
        "side, 4 px at 28-32 px, and a random shift back; imagefolder: random-resized crop), "
        "flip (horizontal mirror), or none, e.g. --augment crop,flip. A flip is never implied "
        "(digits and text are not mirror images); --augment alone (deprecated) = crop,flip "
        "(idx: crop). Off by default: in runs of a few epochs networks under-fit and crop + "
        "flip only slows them down (docs/notes/results-history.md); --preset idsnn-paper: "
        "crop,flip",
        optional_value=True,
    )
    mean: tuple[float, ...] | None = option(
        None,
        "per-channel mean of the [0, 1] pixels used to normalize, e.g. 0.5 or 0.49,0.48,0.45; "
        "none = the dataset's established constants (fashion-mnist, cifar10, cifar100, "
        "synthetic; imagefolder: ImageNet's), for idx computed from the training split. A "
        "trained run records the values it used here",
    )
    std: tuple[float, ...] | None = option(
        None, "per-channel standard deviation for the normalization; none: as --mean"
    )
    image_size: int = option(224, "imagefolder: training crop / evaluation crop size")
    workers: int | None = option(
        None, "imagefolder: decoding worker processes; none = min(8, cpus)"
    )

    def __post_init__(self) -> None:
        for key in ("batch_size", "eval_batch_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key} is {value}; expected an integer >= 1.")
        entry = dataset_entry(self.dataset)  # ConfigError naming the registered datasets
        self.augment = normalize_augment(self.augment, entry.flip_safe, warn_with=warn_deprecated)


def stored_data_section(values: Mapping[str, Any], data_dir: str | None = None) -> DataConfig:
    """The data section of a stored run config; ``data_dir`` replaces the stored folder (the
    data moved). Runs stored before ``augment`` took a list hold a boolean: read silently."""
    values = dict(values)
    if isinstance(values.get("augment"), bool):
        values["augment"] = normalize_augment(values["augment"], warn=False)
    if data_dir:
        values["data_dir"] = data_dir
    return build_section("data", values)


@register_section("optim")
@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule.

    The default, ``cosine`` with a linear warm-up over the first ``warmup`` fraction of the
    steps, works at any epoch count. The IDSNN paper's recipe (METHODS 1.4: SGD, x0.1 at
    60/120/160 of 200 epochs) is the preset ``idsnn-paper`` (``--preset idsnn-paper``).
    ``milestones`` are FRACTIONS of the run's epochs (each in (0, 1), increasing): the
    learning rate is multiplied by ``gamma`` after epoch ``max(1, round(f * epochs))``.
    Schedules are stepped per iteration; ``multistep`` changes only at epoch boundaries,
    ``cosine`` decays to 0, ``onecycle`` warms up for 30 % of the steps.
    """

    optimizer: str = option("sgd", "sgd (momentum) or adamw (decoupled weight decay)", OPTIMIZERS)
    lr: float | None = option(
        None, f"peak learning rate; none = {DEFAULT_LR['sgd']} for sgd, {DEFAULT_LR['adamw']} "
        "for adamw"
    )  # fmt: skip
    momentum: float = option(0.9, "SGD momentum (adamw: beta1)")
    nesterov: bool = option(False, "Nesterov momentum (sgd)")
    weight_decay: float | None = option(
        None, f"weight decay on all parameters; none = {DEFAULT_WEIGHT_DECAY['sgd']} for sgd "
        f"(L2), {DEFAULT_WEIGHT_DECAY['adamw']} for adamw (decoupled)"
    )  # fmt: skip
    schedule: str = option("cosine", "learning-rate schedule", SCHEDULES)
    warmup: float = option(
        0.05, "cosine/multistep: linear warm-up from 0 over this fraction of the steps"
    )
    milestones: tuple[float, ...] = option(
        (0.3, 0.6, 0.8), "multistep: fractions of the epochs where lr is multiplied by gamma"
    )
    gamma: float = option(0.1, "multistep: lr factor at each milestone")
    grad_clip: float | None = option(
        2.0,
        "clip the global gradient norm to this value before each step (deep clip/qcfs "
        "ANNs explode without it); none = off",
    )

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"unknown optimizer {self.optimizer!r}; expected one of {OPTIMIZERS}."
            )
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer]
        if self.weight_decay is None:
            self.weight_decay = DEFAULT_WEIGHT_DECAY[self.optimizer]
        if not self.lr > 0 or not self.gamma > 0 or not self.momentum >= 0:
            raise ConfigError("lr and gamma must be > 0 and momentum >= 0.")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}.")
        if not 0 <= self.warmup < 1:
            raise ConfigError(
                f"warmup is {self.warmup}; expected a fraction of the steps in [0, 1)."
            )
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"grad_clip must be > 0 (or none), got {self.grad_clip}.")
        ms = tuple(self.milestones)
        if any(not 0 < m < 1 for m in ms) or list(ms) != sorted(ms):
            raise ConfigError(
                f"milestones are {ms}; expected increasing fractions of the epochs in (0, 1)."
            )


@register_section("train")
@dataclass
class TrainConfig:
    """How long, where and on what to train; where the run folder goes."""

    epochs: int = option(
        3,
        "training epochs; 3 epochs of the whole Fashion-MNIST take about 7 min for a "
        "ResNet-32 x0.5 ANN and 20 min for a Spiking ResNet-20 x0.5 at T = 4 on one CPU thread "
        "(docs/RESULTS.md); the IDSNN recipe (--preset idsnn-paper): 200",
    )
    seed: int = option(0, "seed of the splits, the initial weights, data order and augmentation")
    device: str = option("auto", DEVICES_HELP)
    threads: int | None = option(
        None,
        "CPU threads of torch; none = torch's default (on a shared, busy CPU, 1 is "
        "often much faster)",
    )
    amp: bool = option(True, "mixed precision (torch.autocast + GradScaler); CUDA only")
    compile: bool = option(False, "torch.compile the model for training")
    sync_bn: bool = option(
        False, "torchrun on GPUs: SyncBatchNorm, BN statistics over the global batch"
    )
    out: str | None = option(
        None, f"run folder; none = {DEFAULT_RUNS_DIR}/<dataset>-<model>-<ann|neuron-tT>-<time>"
    )
    resume: bool = option(False, "continue the interrupted run in --out")
    progress: bool = option(True, "progress bars (shown only on a terminal)")
    tensorboard: bool = option(
        False, "log per-epoch metrics to RUN/tensorboard (pip install 'spikebridge[tensorboard]')"
    )
    eval_timesteps: int | None = option(
        None, "spiking: final test also reports every t up to this T; none = the model's T"
    )

    def __post_init__(self) -> None:
        for key in ("epochs", "eval_timesteps", "threads"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key} is {value}; expected an integer >= 1.")


MODEL_HELP = {
    "name": "architecture (resnet18/34/50/101/152, resnet20/32/44/56/110/164/1202)",
    "num_classes": "set from the dataset",
    "in_channels": "set from the dataset",
    "width": "channel multiplier on every stage",
    "neuron": "spiking neuron: lif (IDSNN, METHODS 1.1) or if (conversion); none = ANN",
    "activation": "ANN activation (METHODS 2.2)",
    "timesteps": "T, the time-steps a spiking model runs at (in training and its tests)",
    "block": "residual structure; pre-add is our restructured block (METHODS 2.5)",
    "threshold": "firing threshold θ of the spiking neuron (a clip/qcfs ANN's clipping level "
    "is --initial-lambda); none = the neuron's default",
    "decay": "LIF: fraction of the membrane potential kept from one step to the next, "
    "h_t = decay · v_(t-1) + x_t (1 = no leak; METHODS 1.1)",
    "surrogate": "surrogate gradient of the spike function",
    "surrogate_alpha": "surrogate width/sharpness; none = the surrogate's default",
    "phi": "IF initial potential as a fraction of the threshold (METHODS 2.1)",
    "qcfs_levels": "quantization levels L of the qcfs activation (4 in every run of "
    "docs/RESULTS.md)",
    "stem_padding": "stem conv padding; 3 reproduces the IDSNN authors' quirk",
    "neuron_backend": "fused (one kernel) or loop (per-step reference)",
    "zero_init_residual": "start the last BN of every residual branch at gamma = 0, so a new "
    "network is its identity path (Goyal et al. 2017); needed to train 100+ layer "
    "clip/qcfs ANNs, whose straight-through gradients explode otherwise",
    "conv_init": "conv weight init: default (PyTorch's, as the IDSNN authors; trains from the "
    "first steps) or kaiming (fan-out normal; runs recorded before 2026-12-06 used it)",
}
register_section(
    "model",
    ModelConfig,
    help=MODEL_HELP,
    choices={
        "neuron": (None, *NEURONS),
        "activation": ACTIVATIONS,
        "block": STRUCTURES,
        "surrogate": SURROGATES,
        "neuron_backend": BACKENDS,
        "conv_init": CONV_INITS,
    },  # fmt: skip
    flat_names={"name": "model"},
    cli_hidden=("num_classes", "in_channels"),
    shown=DEFAULT_SHOWN,
)

TRAIN_SECTIONS = ("data", "model", "optim", "train")


def load_config(
    sections: Iterable[str] = TRAIN_SECTIONS,
    *,
    base: Mapping[str, Any] | None = None,
    yaml_path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    preset: str | None = None,
) -> Config:
    """Resolve a config from defaults < ``base`` < ``preset`` < YAML file < ``overrides``.

    Keys anywhere may be nested (``{"optim": {"lr": 0.1}}``), dotted (``"optim.lr"``) or
    flat (``"lr"``, ``"batch-size"``); ``model`` with a string value is ``model.name``.
    Example: ``load_config(overrides={"dataset": "synthetic", "width": 0.25})``; any
    registered sections, e.g. ``load_config(("eval",), overrides={"timesteps": 4})``.
    """
    return resolve_config(
        sections, base=base, yaml_path=yaml_path, overrides=overrides, preset=preset
    )


@register_finisher
def _conversion_aware_defaults(config: Config, given: Mapping[str, Mapping[str, Any]]) -> Config:
    """A clip/qcfs ANN takes :data:`ANN_DEFAULTS` for each model key no source set (so the
    stored config.json holds the value); every other model keeps the field defaults."""
    if "model" not in config.sections or config.model.neuron is not None:
        return config
    extra = ANN_DEFAULTS.get(config.model.activation, {})
    extra = {key: value for key, value in extra.items() if key not in given.get("model", {})}
    return config.replace("model", **extra) if extra else config

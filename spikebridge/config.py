"""Typed dataclass configs: YAML in, command-line overrides, unknown keys refused.

A configuration is made of *sections*, one dataclass each (``data``, ``model``, ``optim``,
``train``; later ``distill``, ``convert``, ...). Adding a section is one registration::

    @register_section("distill")
    @dataclass
    class DistillConfig:
        kd_weight: float = option(0.3, "weight w of the KD term (METHODS 1.3)")

Every field gets a *flat name* (its field name, unique across all sections), which is its
YAML key and its command-line option: ``kd_weight`` <-> ``--kd-weight`` <-> ``distill.kd_weight``.
Help text comes from the field's metadata (``option(...)``) or from the ``help`` dict given
at registration (used for :class:`~spikebridge.models.ModelConfig`, defined elsewhere).

Sources, later wins: a base dict (e.g. a run's stored ``config.json``), a YAML file (nested
by section *or* flat keys), explicit overrides (command line or Python dict). Any unknown key
is a :class:`ConfigError` naming the nearest valid key.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import inspect
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from spikebridge.data import DATASETS
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
        "augment": True,
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
DEFAULT_SHOWN = {
    "zero_init_residual": "on for clip/qcfs ANNs, else off",
    "threshold": "lif 0.5, if 1.0, clip 8.0, qcfs 2.0",
}
DEVICES_HELP = "auto (cuda if available, else cpu), cpu, cuda, cuda:N"


def option(default: Any, help: str, choices: Iterable[Any] | None = None) -> Any:
    """A dataclass field with its help text (and allowed values) in the metadata."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Section:
    """A registered config section: its dataclass plus CLI/YAML naming and help."""

    name: str
    cls: type
    help: Mapping[str, str]
    choices: Mapping[str, tuple[Any, ...]]
    flat_names: Mapping[str, str]  # field name -> flat name (default: the field name)
    cli_hidden: frozenset[str]  # fields not offered as options (e.g. set from the dataset)

    def fields(self) -> list[dataclasses.Field[Any]]:
        return list(fields(self.cls))

    def field_names(self) -> list[str]:
        return [f.name for f in fields(self.cls)]

    def flat(self, name: str) -> str:
        return self.flat_names.get(name, name)

    def help_of(self, f: dataclasses.Field[Any]) -> str:
        """Help text: field metadata, else the registration's dict, else the source comment."""
        return (
            f.metadata.get("help") or self.help.get(f.name) or _comments(self.cls).get(f.name, "")
        )

    def choices_of(self, f: dataclasses.Field[Any]) -> tuple[Any, ...] | None:
        return f.metadata.get("choices") or self.choices.get(f.name)


@functools.cache
def _comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` from ``name: type = default  # comment`` lines of a class's source."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    pattern = re.compile(r"^\s+(\w+):[^#\n]*#\s*(.+)$", re.MULTILINE)
    return {name: text.strip() for name, text in pattern.findall(source)}


SECTIONS: dict[str, Section] = {}
_FLAT: dict[str, tuple[str, str]] = {}  # flat name -> (section, field)
_STANDALONE: dict[str, dict[str, tuple[str, str]]] = {}  # the same, per standalone section


def register_section(
    name: str,
    cls: type | None = None,
    *,
    help: Mapping[str, str] | None = None,
    choices: Mapping[str, Iterable[Any]] | None = None,
    flat_names: Mapping[str, str] | None = None,
    cli_hidden: Iterable[str] = (),
    standalone: bool = False,
) -> Any:
    """Register dataclass ``cls`` as config section ``name`` (usable as a class decorator).

    Flat names must be unique across sections: a clash is refused at import time. A
    ``standalone`` section (a command's only section, e.g. ``convert``) keeps its flat names
    to itself, so its ``--timesteps`` or ``--out`` may mean what they mean for that command;
    it cannot be combined with a section that uses the same names.
    """

    def register(cls: type) -> type:
        section = Section(
            name, cls, dict(help or {}), {k: tuple(v) for k, v in (choices or {}).items()},
            dict(flat_names or {}), frozenset(cli_hidden),
        )  # fmt: skip
        taken = {section.flat(n): (name, n) for n in section.field_names()}
        shared = set() if standalone else set(taken)  # a standalone section's names are its own
        clash = sorted((shared | {name}) & (set(_FLAT) | set(SECTIONS)))
        if clash:
            raise ConfigError(f"config section {name!r} reuses the name {clash[0]!r}.")
        SECTIONS[name] = section
        (_STANDALONE.setdefault(name, {}) if standalone else _FLAT).update(taken)
        return cls

    return register(cls) if cls is not None else register


@register_section("data")
@dataclass
class DataConfig:
    """Which dataset, how it is split (train / held-out validation / test) and batched."""

    dataset: str = option(
        "fashion-mnist", "dataset (imagefolder: ROOT/train/<class>/*, ROOT/val/<class>/*)",
        (*DATASETS, "imagefolder"),
    )  # fmt: skip
    data_dir: str | None = option(
        None, "folder of the dataset files (Fashion-MNIST default: the Debian package folder)"
    )
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
    augment: bool = option(
        False,
        "random crop (pad 4) and horizontal flip of training images; off by default: in "
        "runs of a few epochs networks under-fit and crop + flip only slows them down "
        "(docs/notes/results-history.md); --preset idsnn-paper turns it on",
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
    "timesteps": "T, simulation time-steps of a spiking model",
    "block": "residual structure; pre-add is our restructured block (METHODS 2.5)",
    "threshold": "neuron threshold or initial lambda of clip/qcfs; none = the default of each",
    "decay": "LIF membrane leak per step (METHODS 1.1)",
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
)

TRAIN_SECTIONS = ("data", "model", "optim", "train")


class Config:
    """A resolved configuration: one dataclass instance per section, read as attributes.

    ``config.model`` is a :class:`ModelConfig`, ``config.optim`` an :class:`OptimConfig`, ...
    """

    def __init__(self, **sections: Any) -> None:
        self.__dict__["_sections"] = dict(sections)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_sections"][name]
        except KeyError:
            raise AttributeError(f"config has no section {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Config is read-only; use Config.replace(section, **changes)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Config({self.to_dict()!r})"

    @property
    def sections(self) -> tuple[str, ...]:
        return tuple(self._sections)

    def replace(self, section: str, **changes: Any) -> Config:
        """A copy with some fields of one section changed (validated like any input)."""
        values = {**dataclasses.asdict(self._sections[section]), **changes}
        return Config(**{**self._sections, section: build_section(section, values)})

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict (JSON/YAML-ready: tuples become lists)."""
        return {name: _plain(dataclasses.asdict(obj)) for name, obj in self._sections.items()}


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


# ----------------------------------------------------------------------------- values


def _describe(hint: Any) -> str:
    words = {bool: "true/false", int: "an integer", float: "a finite number", str: "a string"}
    words[type(None)] = "none"
    return " or ".join(words.get(a, "comma-separated numbers") for a in _union_args(hint))


def _union_args(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _convert(value: Any, kind: Any) -> Any:
    """Convert ``value`` to ``kind`` (bool, int, float, str, tuple[float, ...]) or raise."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
        return words[str(value).lower()]
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        if kind is int and isinstance(value, float):
            raise ValueError
        number = kind(value)
        if not math.isfinite(number):  # nan / inf: never a meaningful setting
            raise ValueError
        return number
    if kind is str:
        if not isinstance(value, str):
            raise ValueError
        return value
    if typing.get_origin(kind) is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError
        item = (typing.get_args(kind) or (float,))[0]  # tuple[int, ...]: integers
        return tuple(_convert(v, item) for v in items if not (isinstance(v, str) and not v))
    raise ValueError


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Return ``value`` as type ``hint`` (a field annotation); ConfigError naming ``key``."""
    args = _union_args(hint)
    is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
    if is_none and type(None) in args:
        return None
    kinds = [a for a in args if a is not type(None)]
    if not isinstance(value, str):  # keep a native value of an allowed type as it is
        kinds = sorted(kinds, key=lambda k: k is not type(value))
    for kind in kinds:
        try:
            return _convert(value, kind)
        except (ValueError, KeyError, TypeError):
            continue
    raise ConfigError(f"config key {key!r} is {value!r}; expected {_describe(hint)}.")


def build_section(name: str, values: Mapping[str, Any]) -> Any:
    """Instantiate section ``name`` from raw values (strings or native), validated."""
    section = SECTIONS[name]
    hints = typing.get_type_hints(section.cls)
    kwargs = {}
    for f in section.fields():
        if f.name not in values:
            continue
        key = section.flat(f.name)
        value = coerce(values[f.name], hints[f.name], key)
        allowed = section.choices_of(f)
        if allowed is not None and value not in allowed:
            shown = ", ".join("none" if a is None else str(a) for a in allowed)
            raise ConfigError(f"config key {key!r} is {value!r}; expected one of {shown}.")
        kwargs[f.name] = value
    return section.cls(**kwargs)


def check_count(option: str, value: int | None, low: int = 1) -> None:
    """ConfigError unless ``value`` (a count given as ``option``, e.g. ``--batch-size``) is
    None (the default) or an integer >= ``low``: 0 or -1 never silently means "all" or
    "the default"."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
        raise ConfigError(
            f"{option} is {value!r}; expected an integer >= {low} (leave it out for the default)."
        )


# ----------------------------------------------------------------------------- keys


def _unknown(key: str, candidates: Iterable[str], sections: Iterable[str]) -> ConfigError:
    """The error for an unknown key: names the nearest valid key (difflib)."""
    owner = _FLAT.get(key.replace("-", "_"))
    if owner is not None and owner[0] not in sections:
        return ConfigError(
            f"config key {key!r} belongs to the {owner[0]!r} section, which this command does "
            f"not use (sections: {', '.join(sections)})."
        )
    near = difflib.get_close_matches(key.replace("-", "_"), list(candidates), n=1, cutoff=0.0)
    hint = f"; did you mean {near[0]!r}?" if near else "."
    return ConfigError(f"unknown config key {key!r}{hint}")


def _resolve(key: str, value: Any, sections: tuple[str, ...]) -> list[tuple[str, str, Any]]:
    """Map one raw key (section, ``section.field``, flat, dashes or underscores) to fields."""
    k = key.replace("-", "_")
    if k in sections and isinstance(value, Mapping):
        return [_resolve_field(k, sub, v) for sub, v in value.items()]
    if "." in k and k.split(".", 1)[0] in sections:
        return [_resolve_field(*k.split(".", 1), value)]
    flat = _flat_names(sections)
    if k in flat:
        return [(*flat[k], value)]
    valid = list(flat) + list(sections)
    raise _unknown(key, valid, sections)


def shared_sections() -> tuple[str, ...]:
    """Every registered section but the standalone ones: the sections a train-like config
    (an experiment's ``train:`` block) may draw its keys from."""
    return tuple(name for name in SECTIONS if name not in _STANDALONE)


def _flat_names(sections: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """``{flat name: (section, field)}`` of ``sections`` (standalone ones included)."""
    names = {flat: owner for flat, owner in _FLAT.items() if owner[0] in sections}
    for section in sections:
        own = _STANDALONE.get(section, {})
        if clash := sorted(set(own) & set(names)):
            raise ConfigError(f"config section {section!r} cannot be used with another section "
                              f"that also has {clash[0]!r}.")  # fmt: skip
        names |= own
    return names


def _resolve_field(section: str, key: str, value: Any) -> tuple[str, str, Any]:
    name = str(key).replace("-", "_")
    names = SECTIONS[section].field_names()
    if name not in names:
        raise _unknown(f"{section}.{key}", [f"{section}.{n}" for n in names], [section])
    return section, name, value


def read_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """Read a YAML file (a mapping; ``what`` names it in errors, e.g. ``experiment file``);
    ConfigError (one line, with the position of a syntax error) when it is missing,
    unreadable or malformed."""
    name = f"{what} {str(path)!r}"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {name} ({exc.strerror}).") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{name} is not UTF-8 text; expected a YAML text file.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name} is not valid YAML ({_yaml_problem(exc)}).") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{name} must hold a mapping of keys to values.")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """``line L, column C: <problem>`` of a YAML error, on one line."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())


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
    Example: ``load_config(overrides={"dataset": "synthetic", "width": 0.25})``.
    """
    sections = tuple(sections)
    values: dict[str, dict[str, Any]] = {s: {} for s in sections}
    sources = [base, preset_values(preset, sections), read_yaml(yaml_path) if yaml_path else None]
    for source in [*sources, overrides]:
        for key, value in (source or {}).items():
            for section, name, v in _resolve(str(key), value, sections):
                values[section][name] = v
    config = Config(**{s: build_section(s, values[s]) for s in sections})
    return _conversion_aware_defaults(config, given=set(values.get("model", {})))


def _conversion_aware_defaults(config: Config, given: set[str]) -> Config:
    """A clip/qcfs ANN takes :data:`ANN_DEFAULTS` for each model key no source set (so the
    stored config.json holds the value); every other model keeps the field defaults."""
    if "model" not in config.sections or config.model.neuron is not None:
        return config
    extra = ANN_DEFAULTS.get(config.model.activation, {})
    extra = {key: value for key, value in extra.items() if key not in given}
    return config.replace("model", **extra) if extra else config


def preset_values(name: str | None, sections: Iterable[str]) -> dict[str, Any]:
    """The flat keys of preset ``name`` that belong to ``sections`` (none: ``{}``)."""
    if name is None:
        return {}
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}.")
    owned = set(_flat_names(tuple(sections)))
    return {k: v for k, v in PRESETS[name].items() if k in owned}


# ----------------------------------------------------------------------------- argparse


def _default_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def add_config_arguments(
    parser: argparse.ArgumentParser, sections: Iterable[str], presets: bool = True
) -> None:
    """Add ``--config FILE.yaml``, ``--preset`` (when ``presets``; a command no preset is
    for leaves it out) and one option per field of each section (with help).

    Options default to "not given" (``argparse.SUPPRESS``) so that only explicit ones
    override the YAML file; the field default is shown in the help text instead.
    """
    parser.add_argument(
        "--config", metavar="FILE.yaml", help="YAML config (nested by section or flat keys); "
        "options given on the command line override it",
    )  # fmt: skip
    if presets:
        parser.add_argument(
            "--preset", choices=tuple(PRESETS), help="named recipe applied under --config and "
            "the options (idsnn-paper: the IDSNN authors' SGD, 200 epochs, x0.1 at 60/120/160)",
        )  # fmt: skip
    for name in sections:
        section = SECTIONS[name]
        group = parser.add_argument_group(f"{name} options")
        for f in section.fields():
            if f.name not in section.cli_hidden:
                _add_field_option(group, section, f)


def _add_field_option(group: Any, section: Section, f: dataclasses.Field[Any]) -> None:
    flat = section.flat(f.name)
    shown = f.metadata.get("shown") or DEFAULT_SHOWN.get(f.name, _default_text(f.default))
    text = f"{section.help_of(f)} (default: {shown})".replace("%", "%%")
    kwargs: dict[str, Any] = dict(dest=f"{section.name}.{f.name}", default=argparse.SUPPRESS)
    choices = section.choices_of(f)
    if typing.get_type_hints(section.cls)[f.name] is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif choices is not None:
        kwargs["metavar"] = "{" + ",".join(_default_text(c) for c in choices) + "}"
    else:
        kwargs["metavar"] = flat.upper()
    group.add_argument("--" + flat.replace("_", "-"), help=text, **kwargs)


def given_options(args: argparse.Namespace, sections: Iterable[str]) -> dict[str, Any]:
    """The config options given explicitly on the command line, as ``{"section.field": value}``."""
    sections = tuple(sections)
    return {k: v for k, v in vars(args).items() if k.split(".", 1)[0] in sections and "." in k}


def config_from_args(
    args: argparse.Namespace, sections: Iterable[str], base: Mapping[str, Any] | None = None
) -> Config:
    """Resolve the config of a parsed command line: ``base`` < ``--config`` < options."""
    sections = tuple(sections)
    return load_config(
        sections, base=base, yaml_path=args.config, overrides=given_options(args, sections),
        preset=getattr(args, "preset", None),
    )  # fmt: skip

"""Experiments as files: a YAML names a *kind* (``idsnn``, ``conversion``), shared settings,
profiles (``cpu`` for 2 cores, ``full`` for a GPU) and arms; ``run_experiment`` runs them and
writes ``results.md`` + plots into one folder.

A kind is a function ``runner(spec, out_dir, log) -> dict`` registered with
:func:`register_experiment`; ``spec`` is the YAML with the chosen profile merged over its
top-level settings (the ``profiles`` key removed, ``profile`` set to the chosen name).
"""

from __future__ import annotations

import copy
import difflib
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from spikebridge.config import load_config, read_yaml, shared_sections
from spikebridge.engine.rundir import prepare_output_folder
from spikebridge.errors import ConfigError

Runner = Callable[[dict[str, Any], Path, Callable[[str], None]], dict[str, Any]]


@dataclass(frozen=True)
class Kind:
    """A registered experiment kind: its runner, the top-level keys its files may set (``--set``
    is checked against them), the keys whose values are config keys (checked against the
    config), and the names it writes into ``--out`` (what marks the folder as its own)."""

    runner: Runner
    keys: tuple[str, ...]
    config_keys: tuple[str, ...]
    outputs: tuple[str, ...]


EXPERIMENT_KINDS: dict[str, Kind] = {}
COMMON_KEYS = ("kind", "name", "description", "profiles", "profile")  # every kind's file
_KIND_MODULES = {
    "idsnn": "spikebridge.experiments.idsnn",
    "conversion": "spikebridge.experiments.conversion",
}


def register_experiment(
    kind: str, keys: Iterable[str], config_keys: Iterable[str], outputs: Iterable[str]
) -> Callable[[Runner], Runner]:
    """Register ``runner`` as experiment kind ``kind`` (see :class:`Kind`)."""

    def decorator(fn: Runner) -> Runner:
        all_keys = (*COMMON_KEYS, *keys)
        EXPERIMENT_KINDS[kind] = Kind(fn, all_keys, tuple(config_keys), tuple(outputs))
        return fn

    return decorator


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``override`` wins (lists are replaced, not merged)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["train.epochs=2", "models=[resnet20]"]`` -> a nested dict (values read as YAML)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set needs KEY=VALUE (e.g. train.epochs=2), got {item!r}.")
        *parents, leaf = key.strip().split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return out


def load_experiment(
    path: str | Path, profile: str, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Read an experiment file and merge the chosen profile, then ``overrides``, over it;
    ConfigError (one sentence) for a missing, unreadable or malformed file, an unknown kind
    or an override naming no setting of its kind (with the nearest valid key)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file {path} does not exist; expected a YAML file.")
    spec = read_yaml(path, "experiment file")
    if "kind" not in spec:
        raise ConfigError(f"experiment file {path} has no 'kind:' (expected idsnn or conversion).")
    kind = experiment_kind(spec["kind"])
    profiles = spec.pop("profiles", {}) or {}
    if not isinstance(profiles, dict) or profile not in profiles:
        shown = ", ".join(profiles) if isinstance(profiles, dict) else "none"
        raise ConfigError(f"{path} has no profile {profile!r}; it has: {shown}.")
    if not isinstance(profiles[profile] or {}, dict):
        raise ConfigError(f"{path}: profile {profile!r} must be a mapping of settings.")
    check_overrides(overrides or {}, kind)
    spec = merge(merge(spec, profiles[profile] or {}), overrides or {})
    spec["profile"] = profile
    return spec


def experiment_kind(name: Any) -> Kind:
    """The registered kind ``name`` (its module imported on first use); ConfigError if unknown."""
    if name in _KIND_MODULES and name not in EXPERIMENT_KINDS:
        importlib.import_module(_KIND_MODULES[name])
    if name not in EXPERIMENT_KINDS:
        raise ConfigError(
            f"unknown experiment kind {name!r}; expected one of {', '.join(_KIND_MODULES)}."
        )
    return EXPERIMENT_KINDS[name]


def check_overrides(overrides: dict[str, Any], kind: Kind) -> None:
    """ConfigError naming the nearest valid key when a ``--set`` key is no setting of
    ``kind`` (``model=`` for ``models=``, ``bogus.key=``): a typo never runs the defaults."""
    for key, value in overrides.items():
        if key not in kind.keys:
            raise ConfigError(f"--set {key}: {_nearest(key, kind.keys)}")
        if key in kind.config_keys and isinstance(value, dict):
            try:
                load_config(shared_sections(), overrides=value)  # unknown or invalid keys refused
            except ConfigError as exc:
                raise ConfigError(f"--set {key}.*: {str(exc)}") from None


def _nearest(key: str, valid: Iterable[str]) -> str:
    near = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.0)
    hint = f"did you mean {near[0]!r}? " if near else ""
    return f"the experiment has no setting {key!r}; {hint}valid: {', '.join(sorted(valid))}."


def run_experiment(
    path: str | Path,
    profile: str,
    out_dir: str | Path,
    log: Callable[[str], None] = print,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run every arm of an experiment file; returns the runner's results dict. ``out_dir``
    must be new, empty or this kind's earlier output folder (ConfigError otherwise)."""
    spec = load_experiment(path, profile, overrides)
    kind = experiment_kind(spec["kind"])
    out = prepare_output_folder(out_dir, kind.outputs)
    return kind.runner(spec, out, log)

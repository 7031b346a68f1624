"""Experiments as files: a YAML names a *kind* (``idsnn``, ``conversion``), shared settings,
profiles (``cpu`` for 2 cores, ``full`` for a GPU) and arms; ``run_experiment`` runs them and
writes ``results.md`` + plots into one folder.

A kind is a function ``runner(spec, out_dir, log) -> dict`` registered with
:func:`register_experiment`; ``spec`` is the YAML with the chosen profile merged over its
top-level settings (the ``profiles`` key removed, ``profile`` set to the chosen name).
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from spikebridge.errors import ConfigError

Runner = Callable[[dict[str, Any], Path, Callable[[str], None]], dict[str, Any]]
EXPERIMENT_KINDS: dict[str, Runner] = {}
_KIND_MODULES = {
    "idsnn": "spikebridge.experiments.idsnn",
    "conversion": "spikebridge.experiments.conversion",
}


def register_experiment(kind: str) -> Callable[[Runner], Runner]:
    def decorator(fn: Runner) -> Runner:
        EXPERIMENT_KINDS[kind] = fn
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
    """Read an experiment file and merge the chosen profile, then ``overrides``, over it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file {path} does not exist; expected a YAML file.")
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ConfigError(f"experiment file {path} has no 'kind:' (expected idsnn or conversion).")
    profiles = spec.pop("profiles", {}) or {}
    if profile not in profiles:
        raise ConfigError(f"{path} has no profile {profile!r}; it has: {', '.join(profiles)}.")
    spec = merge(merge(spec, profiles[profile]), overrides or {})
    spec["profile"] = profile
    return spec


def run_experiment(
    path: str | Path,
    profile: str,
    out_dir: str | Path,
    log: Callable[[str], None] = print,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run every arm of an experiment file; returns the runner's results dict."""
    spec = load_experiment(path, profile, overrides)
    kind = spec["kind"]
    if kind in _KIND_MODULES and kind not in EXPERIMENT_KINDS:
        importlib.import_module(_KIND_MODULES[kind])
    if kind not in EXPERIMENT_KINDS:
        raise ConfigError(
            f"unknown experiment kind {kind!r}; expected one of {', '.join(_KIND_MODULES)}."
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return EXPERIMENT_KINDS[kind](spec, out, log)

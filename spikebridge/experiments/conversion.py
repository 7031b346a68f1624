"""Experiment kind ``conversion``: accuracy vs T across depths, block structures and methods.

For every model (depth) x block structure x ANN activation that the methods need (``relu``
for maxnorm / robust / ttrbr, ``qcfs`` for qcfs / ttrbr), one ANN is trained (reused when
its folder already has ``summary.json``), then converted with every applicable method and
simulated ONCE at the largest T (accuracy at every t <= T from that pass). ``ttrbr`` and the
``pre-add`` block are **our design** on the TTRBR abstract (METHODS 2.4-2.5).

Spec keys (YAML top level, profiles merged over it)::

    kind: conversion
    dataset: fashion-mnist
    models: [resnet20, resnet110]
    blocks: [post-add, pre-add]
    methods: [maxnorm, robust, qcfs, ttrbr]
    report_at: [1, 2, 4, 8, 16, 32] # the t's of the table (one simulation at the largest)
    tune_at: [4, 8]                 # a tuning method's T: one value = one conversion (null:
                                    # the smallest t >= 4); a list = one conversion per value
    skip: {resnet110-post-add-qcfs: "why"}  # arms not run; the table says why
    collect_only: false             # true: train / convert nothing, tabulate what the folder
                                    # holds (slices run in parallel, then one table)
    train: {epochs: 3, width: 0.5, subset: 6000, ...}   # train_run options of every ANN
    activations: {relu: {}, qcfs: {qcfs_levels: 8, threshold: 2.0}}  # the ANNs to train per
                                    # (model, block), with their options
    device: auto

Every other top-level key is a key of the ``convert`` config section
(:mod:`~spikebridge.runs.conversion_config`): ``calibration_size``, ``selection_size``,
``test_images``, ``data_dir`` and the methods' options (``percentile``, ``channelwise``,
``tune_epochs``, ``tune_lr``, ...; each applies to the methods that have it, with their
defaults where it is left out). An unknown key is refused with the nearest valid one. The
old names ``timesteps`` (the list, now ``report_at``) and ``tune_timesteps`` (now
``tune_at``) still work with a notice; ``tune_phi`` was removed (docs/CHANGELOG.md).

``ttrbr`` tunes at the T it is deployed at (METHODS 2.4). With a list ``tune_timesteps: [4,
8]`` it is converted once per listed T (folders ``...-ttrbr-t<T>``): cell ``t`` of its row
comes from the conversion tuned at the smallest listed T ``>= t`` (t = 1..4 from the one
tuned at 4, 5..8 from 8), and the one tuned at the largest listed T also gives every cell
above it. Each is simulated only as far as it serves. Every other method's row is one
conversion, one pass.

Writes ``anns/<model>-<block>-<act>/``, ``conversions/<...>-<method>/`` (converted run
folders, also reused when finished), ``results.md``, ``results.json`` and ``accuracy_vs_t.png``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spikebridge.conversion import METHODS, get_method
from spikebridge.conversion.registry import nearest
from spikebridge.engine import checkpoint as ckpt
from spikebridge.errors import ConfigError, SpikebridgeError
from spikebridge.experiments import experiment_kind, register_experiment
from spikebridge.runs.conversion import convert_run
from spikebridge.runs.conversion_config import (
    DEFAULT_REPORT_AT,
    METHOD_OPTIONS,
    RUN_OPTIONS,
    convert_config,
    method_options,
)
from spikebridge.runs.train import train_run

# The run keys an experiment sets per conversion itself (the rest of the convert section's
# keys are top-level spec keys). Which ANN activations a method is applied to is its
# ``ann_activations`` (on a qcfs ANN, statistics are capped at λ, so maxnorm / robust would
# give θ = λ: the qcfs row).
PER_CONVERSION = ("ann_run", "method", "report_at", "timesteps", "tune_at", "out", "device")
CONVERT_KEYS = tuple(k for k in (*RUN_OPTIONS, *METHOD_OPTIONS) if k not in PER_CONVERSION)
RENAMED = {"timesteps": "report_at", "tune_timesteps": "tune_at"}
STRUCTURES = ("post-add", "pre-add")
PLOT_FILE = "accuracy_vs_t.png"


def _renamed(spec: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """The spec with the old key names moved to the new ones (a notice each); ConfigError
    for ``tune_phi`` (removed) and for a key the kind does not have (nearest valid one)."""
    if "tune_phi" in spec:
        raise ConfigError(
            "the experiment sets 'tune_phi', which was removed: tuning φ measured to do nothing "
            "(-0.09 points, p = 0.77; docs/CHANGELOG.md); delete the key."
        )
    check_keys(spec)
    spec = dict(spec)
    for old, new in RENAMED.items():
        if old in spec:
            log(f"warning: the experiment key {old!r} is deprecated; use {new!r}")
            spec.setdefault(new, spec.pop(old))
    return spec


def check_keys(spec: dict[str, Any]) -> None:
    """ConfigError naming the nearest valid key for a spec key no conversion experiment has."""
    kind = experiment_kind("conversion")
    for key in spec:
        if key not in kind.keys:
            raise ConfigError(f"the conversion experiment has no key {key!r}" + nearest(
                key, [k for k in kind.keys if k not in ("tune_phi", *RENAMED)]))  # fmt: skip


def _check_spec(spec: dict[str, Any]) -> tuple[list[str], list[str], list[str], list[int]]:
    models = list(spec.get("models") or [])
    blocks = list(spec.get("blocks") or STRUCTURES)
    methods = list(spec.get("methods") or METHODS)
    timesteps = sorted({int(t) for t in spec.get("report_at") or DEFAULT_REPORT_AT})
    if not models:
        raise ConfigError("the conversion experiment has no 'models:'; expected e.g. [resnet20].")
    bad = [b for b in blocks if b not in STRUCTURES]
    if bad:
        raise ConfigError(f"unknown block {bad[0]!r}; expected one of {STRUCTURES}.")
    for method in methods:
        get_method(method)  # ConfigError naming the nearest registered method
    _run_config(spec, "", methods[0], [1], None)  # every option checked before any training
    return models, blocks, methods, timesteps


def _ann(
    spec: dict[str, Any], out_dir: Path, arm: tuple[str, str, str], log: Callable[[str], None]
) -> Path:
    """Train (or reuse) the ANN of one (model, block, activation) arm; return its folder."""
    model, block, act = arm
    run_dir = out_dir / "anns" / f"{model}-{block}-{act}"
    if (run_dir / ckpt.SUMMARY_FILE).is_file():
        log(f"reusing ANN {run_dir}")
        return run_dir
    if spec.get("collect_only"):
        raise NotRunError(f"ANN {run_dir.name} was not trained")
    overrides = {
        "dataset": spec.get("dataset", "fashion-mnist"), "model": model, "block": block,
        "activation": act, "progress": False, "device": spec.get("device", "auto"),
        **(spec.get("train") or {}), **((spec.get("activations") or {}).get(act) or {}),
        "out": str(run_dir), "resume": (run_dir / ckpt.CONFIG_FILE).is_file(),
    }  # fmt: skip
    if spec.get("data_dir"):
        overrides["data_dir"] = spec["data_dir"]
    log(f"training ANN {run_dir.name}")
    train_run(overrides, log=log)
    return run_dir


def _convert(
    spec: dict[str, Any], out_dir: Path, ann_dir: Path, method: str, log: Callable[[str], None]
) -> dict[str, Any]:
    """Convert (or reuse) one ANN with one method; returns the (combined) summary."""
    timesteps = spec["report_at"]
    tune = spec.get("tune_at")
    if not get_method(method).tunes or not isinstance(tune, list) or not tune:
        if isinstance(tune, list):  # a tuning list means nothing to the other methods
            spec = {**spec, "tune_at": None}
        name = f"{ann_dir.name}-{method}"
        return _convert_once(spec, out_dir / "conversions" / name, ann_dir, method, log)
    tune_ts = sorted({int(t) for t in tune})
    parts = {}
    for i, t in enumerate(tune_ts):  # the last one also runs to max(timesteps)
        run_dir = out_dir / "conversions" / f"{ann_dir.name}-ttrbr-t{t}"
        upto = max(timesteps) if t == tune_ts[-1] else t
        low = tune_ts[i - 1] if i else 0
        wanted = [u for u in timesteps if low < u <= upto] or [t]
        try:
            parts[t] = _convert_once({**spec, "tune_at": t}, run_dir, ann_dir, method,
                                     log, timesteps=sorted({*wanted, t}))  # fmt: skip
        except NotRunError:
            continue
    if not parts:
        raise NotRunError(f"no ttrbr conversion of {ann_dir.name} in the folder")
    return combine_per_timestep(parts)


def combine_per_timestep(parts: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One summary from conversions tuned at several T: cell ``t`` comes from the conversion
    tuned at the smallest tuning T ``>= t`` (the largest one for ``t`` above them all)."""
    tune_ts = sorted(parts)
    top = parts[tune_ts[-1]]
    by_t = {}
    for key in sorted(top["accuracy_by_timestep"], key=int):
        source = next((u for u in tune_ts if u >= int(key)), tune_ts[-1])
        by_t[key] = parts[source]["accuracy_by_timestep"][key]
    return {**top, "accuracy_by_timestep": by_t, "tune_timesteps": tune_ts,
            "run_dir": [parts[t]["run_dir"] for t in tune_ts],
            "convert_time_s": sum(p.get("convert_time_s") or 0.0 for p in parts.values())}  # fmt: skip


def _convert_once(
    spec: dict[str, Any],
    run_dir: Path,
    ann_dir: Path,
    method: str,
    log: Callable[[str], None],
    timesteps: list[int] | None = None,
) -> dict[str, Any]:
    """One conversion into ``run_dir`` (reused when finished)."""
    if (run_dir / ckpt.SUMMARY_FILE).is_file():
        return ckpt.read_json(run_dir / ckpt.SUMMARY_FILE)
    if spec.get("collect_only"):
        raise NotRunError(f"{run_dir.name} was not run")
    if (run_dir / ckpt.CONFIG_FILE).is_file():  # an interrupted conversion: start it again
        (run_dir / ckpt.CONFIG_FILE).unlink()
    log(f"converting {ann_dir.name} with {method} into {run_dir.name}")
    report_at = timesteps or spec["report_at"]
    return convert_run(_run_config(spec, str(ann_dir), method, report_at, run_dir), log=log)


def _run_config(
    spec: dict[str, Any], ann_run: str, method: str, report_at: list[int], out: Path | None
) -> Any:
    """The typed ``convert`` config of one conversion: the spec's convert keys (a method
    option only for the methods that have it), this conversion's run, method, t's and folder."""
    tune_at = spec.get("tune_at")
    values = {k: spec[k] for k in CONVERT_KEYS if k in spec} | {
        "ann_run": ann_run, "method": method, "report_at": list(report_at),
        "tune_at": None if isinstance(tune_at, list) else tune_at,
        "out": None if out is None else str(out), "device": spec.get("device", "auto"),
    }  # fmt: skip
    config = convert_config(values)  # every key and value checked
    dropped = set(METHOD_OPTIONS) - set(method_options(config, strict=False))
    return dataclasses.replace(config, **dict.fromkeys(dropped))


class NotRunError(SpikebridgeError):
    """A finished ANN or conversion is missing and ``collect_only`` forbids making it."""


def _row(arm: tuple[str, str, str], summary: dict[str, Any], timesteps: list[int]) -> dict:
    by_t = summary["accuracy_by_timestep"]
    return {
        "model": arm[0], "block": arm[1], "activation": arm[2], "method": summary["method"],
        "ann_accuracy": summary["ann_accuracy"],
        "accuracy": {str(t): by_t.get(str(t)) for t in timesteps},  # None: not simulated
        "accuracy_by_timestep": by_t, "run_dir": summary["run_dir"],
        "tune_timesteps": summary.get("tune_timesteps"),
        "convert_time_s": summary.get("convert_time_s"),
    }  # fmt: skip


def _safe_row(
    spec: dict[str, Any], out_dir: Path, ann_dir: Path, what: tuple, log: Callable[[str], None]
) -> dict:
    """One conversion's row; a refused conversion (e.g. a diverged ANN) becomes an error row."""
    arm, method = what
    try:
        return _row(arm, _convert(spec, out_dir, ann_dir, method, log), spec["report_at"])
    except NotRunError as exc:
        ann = ckpt.read_json(ann_dir / ckpt.SUMMARY_FILE).get("test_accuracy")
        return _error_row(arm, method, ann, f"not run: {exc}")
    except SpikebridgeError as exc:
        log(f"conversion {ann_dir.name} {method} failed: {exc}")
        ann = ckpt.read_json(ann_dir / ckpt.SUMMARY_FILE).get("test_accuracy")
        return _error_row(arm, method, ann, f"failed: {exc}")


def _error_row(arm: tuple[str, str, str], method: str, ann: float | None, error: str) -> dict:
    return {"model": arm[0], "block": arm[1], "activation": arm[2], "method": method,
            "ann_accuracy": ann, "accuracy": None, "accuracy_by_timestep": None,
            "error": error}  # fmt: skip


def _activations(spec: dict[str, Any]) -> list[str]:
    """The ANN activations to train; an entry set to null (``--set activations.relu=null``)
    is skipped."""
    acts = spec.get("activations") or {"relu": {}, "qcfs": {}}
    return [a for a, opts in acts.items() if opts is not None]


SPEC_KEYS = (
    "dataset", "models", "blocks", "methods", "report_at", "tune_at", "skip", "collect_only",
    "train", "activations", "device", *CONVERT_KEYS, *RENAMED, "tune_phi",
)  # fmt: skip
OUTPUTS = ("anns", "conversions", "results.md", "results.json", PLOT_FILE)


@register_experiment("conversion", SPEC_KEYS, config_keys=("train",), outputs=OUTPUTS)
def run_conversion(spec: dict[str, Any], out_dir: Path, log: Callable[[str], None]) -> dict:
    """Run the depth x structure x method sweep (see the module docstring)."""
    spec = _renamed(spec, log)
    models, blocks, methods, timesteps = _check_spec(spec)
    spec = {**spec, "report_at": timesteps}
    start, rows = time.perf_counter(), []
    for model in models:
        for block in blocks:
            for act in _activations(spec):
                wanted = [m for m in methods if act in get_method(m).ann_activations]
                if not wanted:
                    continue
                arm = (model, block, act)
                reason = (spec.get("skip") or {}).get(f"{model}-{block}-{act}")
                if reason:
                    rows += [_error_row(arm, m, None, f"not run: {reason}") for m in wanted]
                    continue
                try:
                    ann_dir = _ann(spec, out_dir, arm, log)
                except NotRunError as exc:
                    rows += [_error_row(arm, m, None, f"not run: {exc}") for m in wanted]
                    continue
                rows += [_safe_row(spec, out_dir, ann_dir, (arm, m), log) for m in wanted]
    results = {"rows": rows, "timesteps": timesteps, "profile": spec.get("profile"),
               "wall_time_s": time.perf_counter() - start, "spec": spec}  # fmt: skip
    ckpt.write_json(out_dir / "results.json", json.loads(json.dumps(results, default=str)))
    ckpt.write_text(out_dir / "results.md", results_markdown(rows, timesteps, spec))
    plot_accuracy(rows, out_dir / PLOT_FILE)
    log(results_markdown(rows, timesteps, spec))
    return results


def results_markdown(rows: list[dict], timesteps: list[int], spec: dict[str, Any]) -> str:
    """One table line per (model, structure, ANN activation, method): accuracy (%) at each T."""
    head = ["depth", "structure", "ANN act", "ANN acc", "method"] + [f"T={t}" for t in timesteps]
    lines = [
        f"# Conversion: accuracy vs T ({spec.get('dataset', 'fashion-mnist')}, profile "
        f"{spec.get('profile')})",
        "",
        "ttrbr (threshold tuning) and the pre-add block are our design on the TTRBR abstract.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        ann = "n/a" if r["ann_accuracy"] is None else f"{100 * r['ann_accuracy']:.2f}"
        method = r["method"]
        if isinstance(r.get("tune_timesteps"), list):
            method += f" (tuned at T = {', '.join(map(str, r['tune_timesteps']))})"
        cells = [r["model"], r["block"], r["activation"], ann, method]
        if r["accuracy"] is None:
            cells += [r["error"]] + [""] * (len(timesteps) - 1)
        else:
            cells += [_percent(r["accuracy"][str(t)]) for t in timesteps]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def plot_accuracy(rows: list[dict], path: Path) -> Path:
    """One panel per depth: accuracy vs t (log2 axis), a line per method/activation/structure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig = Figure(figsize=(5.0 * len(models) + 2.5, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    colors = {}
    for ax, model in zip(axes, models, strict=True):
        for r in (r for r in rows if r["model"] == model and r["accuracy"] is not None):
            key = f"{r['method']} ({r['activation']} ANN)"
            color = colors.setdefault(key, f"C{len(colors)}")
            ts = sorted(int(t) for t in r["accuracy_by_timestep"])
            acc = [100 * r["accuracy_by_timestep"][str(t)] for t in ts]
            style = "-" if r["block"] == "pre-add" else "--"
            ax.plot(ts, acc, style, color=color, label=f"{key}, {r['block']}")
        ax.set_xscale("log", base=2)
        ax.set_title(model)
        ax.set_xlabel("time-steps t (log2)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    labels: dict[str, Any] = {}
    for ax in axes:  # one legend for all panels: a method may be missing from some
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            labels.setdefault(label, handle)
    fig.legend(list(labels.values()), list(labels), fontsize=7, loc="outside right center")
    fig.savefig(path, dpi=120)
    return path

"""Experiment kind ``idsnn``: one teacher, several student arms, one results table (METHODS 1.5).

YAML layout (after the profile is merged; keys are flat config keys, e.g. ``width``)::

    kind: idsnn
    settings: {dataset: fashion-mnist, subset: 2000, seed: 0, threads: 1, ...}  # every run
    teacher: {model: resnet20, width: 0.5, epochs: 5}   # the teacher ANN (train sections)
    teacher_run: null       # or a finished run folder to reuse instead of training one
    student: {model: resnet20, width: 0.25, neuron: lif, timesteps: 4, epochs: 6}
    distill: {kd_temperature: 4.0}                    # shared by every arm
    baseline: baseline      # the arm whose final test accuracy the others must reach
    arms:                   # each: a name, overrides (init, kd_weight, init_shortcuts,
      - {name: baseline, init: none, kd_weight: 0}   # epochs, milestones, ...), and an
      - {name: init+kd, init: first, kd_weight: 0.3, reference: baseline}  # optional reference

The teacher is trained once in ``<out>/teacher`` (reused when it has ``summary.json``); each
arm runs in ``<out>/arms/<name>`` (reused when finished), all with the same seed. Outputs:
``results.md`` (table), ``results.json`` and ``test_accuracy.png`` (test accuracy per epoch).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from spikebridge.analysis.ablation import epochs_to_reach
from spikebridge.config import TRAIN_SECTIONS, Config, load_config
from spikebridge.engine import checkpoint as ckpt
from spikebridge.errors import ConfigError
from spikebridge.experiments import merge, register_experiment
from spikebridge.runs.idsnn import DISTILL_SECTIONS, STUDENT_DEFAULTS, distill_run
from spikebridge.runs.train import train_run

ARM_META = ("name", "reference")  # arm keys that are not config keys
PLOT_FILE = "test_accuracy.png"
Log = Callable[[str], None]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name)


def check_spec(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The arms (each with a unique ``name``); ConfigError for a malformed experiment."""
    arms = spec.get("arms")
    if not isinstance(arms, list) or not arms or not all(isinstance(a, dict) for a in arms):
        raise ConfigError("an idsnn experiment needs 'arms:', a list of mappings of overrides.")
    names = [str(a.get("name", "")) for a in arms]
    if "" in names or len(set(names)) != len(names):
        raise ConfigError(f"every arm needs a unique 'name:'; got {names}.")
    baseline = spec.get("baseline", names[0])
    if baseline not in names:
        raise ConfigError(f"baseline arm {baseline!r} is not one of the arms {names}.")
    return arms


def run_teacher(spec: Mapping[str, Any], out: Path, log: Log) -> tuple[str, dict[str, Any]]:
    """The teacher run folder and its summary: given, finished in ``out``, or trained now."""
    if spec.get("teacher_run"):
        path = Path(spec["teacher_run"])
        return str(path), ckpt.read_json(path / ckpt.SUMMARY_FILE)
    if (out / ckpt.SUMMARY_FILE).is_file():
        log(f"reusing the finished teacher {out}")
        return str(out), ckpt.read_json(out / ckpt.SUMMARY_FILE)
    values = merge(dict(spec.get("settings") or {}), dict(spec.get("teacher") or {}))
    values.update(out=str(out), resume=(out / ckpt.CONFIG_FILE).is_file())
    log(f"== teacher -> {out}")
    return str(out), train_run(load_config(TRAIN_SECTIONS, overrides=values), log)


def arm_config(
    spec: Mapping[str, Any], arm: Mapping[str, Any], teacher: str | None, out: Path
) -> Config:
    """The config of one arm: settings, student, distill, then the arm's overrides."""
    layers = [spec.get("settings"), spec.get("student"), spec.get("distill")]
    values: dict[str, Any] = {}
    for layer in layers:
        values = merge(values, dict(layer or {}))
    values = merge(values, {k: v for k, v in arm.items() if k not in ARM_META})
    values.update(teacher=teacher, arm=str(arm["name"]), out=str(out))
    values["resume"] = (out / ckpt.CONFIG_FILE).is_file()
    return load_config(DISTILL_SECTIONS, base=STUDENT_DEFAULTS, overrides=values)


def run_arm(
    spec: Mapping[str, Any], arm: Mapping[str, Any], teacher: str | None, out: Path, log: Log
) -> dict[str, Any]:
    """Train one arm (reused when finished); its summary and per-epoch metrics."""
    log(f"== arm {arm['name']} -> {out}")
    start = time.perf_counter()
    config = arm_config(spec, arm, teacher, out)
    summary = distill_run(config, log)
    history = ckpt.read_jsonl(out / ckpt.METRICS_FILE)
    return {"name": str(arm["name"]), "reference": arm.get("reference"),
            "overrides": {k: v for k, v in arm.items() if k not in ARM_META},
            "summary": summary, "wall_s": time.perf_counter() - start,
            "milestones": list(config.optim.milestones), "schedule": config.optim.schedule,
            "test_by_epoch": [r["test_accuracy"] for r in history]}  # fmt: skip


def add_convergence(arms: list[dict[str, Any]], baseline: str) -> float | None:
    """Per arm: epochs to reach the baseline's final test accuracy, speed-up vs the
    baseline's own epochs to reach it, and final-accuracy change vs its ``reference`` arm."""
    by_name = {a["name"]: a for a in arms}
    target = by_name[baseline]["summary"]["final_test_accuracy"]
    base_epochs = epochs_to_reach(by_name[baseline]["test_by_epoch"], target)
    for arm in arms:
        arm["epochs_to_baseline"] = reach = epochs_to_reach(arm["test_by_epoch"], target)
        arm["speedup"] = base_epochs / reach if reach and base_epochs else None
        ref = by_name.get(arm.get("reference") or "")
        final = arm["summary"]["final_test_accuracy"]
        ref_final = ref["summary"]["final_test_accuracy"] if ref else None
        arm["final_minus_reference"] = (
            final - ref_final if final is not None and ref_final is not None else None
        )
    return target


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _by_t(summary: Mapping[str, Any]) -> str:
    by_t = summary.get("accuracy_by_timestep") or {}
    return " / ".join(f"{t}: {_pct(a)}" for t, a in by_t.items()) or "n/a"


def _shortcuts(summary: Mapping[str, Any]) -> str:
    if summary["init"] == "none":
        return "-"
    return "copied" if summary["init_shortcuts"] else "random"


def _schedule(arm: Mapping[str, Any]) -> str:
    """``multistep`` as its lr x0.1 fractions (``x0.1 at 0.3,0.6,0.8``), else the name; the
    milestones mean nothing to a cosine run (results written before 2026-12-06 were all
    multistep and hold no schedule name)."""
    schedule = arm.get("schedule", "multistep")
    if schedule != "multistep":
        return str(schedule)
    return "x0.1 at " + ",".join(f"{m:g}" for m in arm.get("milestones", []))


def table_rows(arms: list[dict[str, Any]]) -> list[str]:
    """The results table in markdown (accuracies in %)."""
    head = ("| arm | init | shortcuts | KD weight | epochs | lr schedule "
            "| test acc (val-selected) "
            "| final test | best test over epochs (paper comparison) | test acc at t = 1..T "
            "| epochs to reach baseline final | speed-up vs baseline | final - reference |")  # fmt: skip
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for a in arms:
        s, ref = a["summary"], a.get("reference")
        delta = a["final_minus_reference"]
        delta_text = f"{100 * delta:+.2f} (vs {ref})" if delta is not None else "-"
        speed = f"{a['speedup']:.2f}x" if a["speedup"] else "-"
        rows.append(
            f"| {a['name']} | {s['init']} | {_shortcuts(s)} "
            f"| {s['kd_weight']} | {s['epochs']} | {_schedule(a)} | {_pct(s['test_accuracy'])} "
            f"| {_pct(s['final_test_accuracy'])} | {_pct(s['best_test_accuracy'])} | {_by_t(s)} "
            f"| {a['epochs_to_baseline'] or 'never'} | {speed} | {delta_text} |"
        )
    return rows


def write_markdown(path: Path, spec: Mapping[str, Any], results: Mapping[str, Any]) -> None:
    """``results.md``: what was run, the teacher, the table and the notes on each column."""
    t = results["teacher"]
    lines = [
        f"# IDSNN experiment: {spec.get('name', path.parent.name)} (profile {spec['profile']})",
        "", str(spec.get("description", "")).strip(), "",
        f"Teacher: {t.get('model')} ANN, test accuracy {_pct(t.get('test_accuracy'))} % "
        f"(run {results['teacher_run']}).",
        f"Baseline arm: {results['baseline']}, final test accuracy "
        f"{_pct(results['baseline_final'])} % (the target of 'epochs to reach').",
        f"Wall time: {results['wall_s']:.0f} s.", "",
        *table_rows(results["arms"]), "",
        "Accuracies in %. 'test acc (val-selected)': the epoch chosen on the validation split, "
        "tested once (headline). 'best test over epochs': the figure papers report, for "
        "comparison with papers only. 'speed-up': the baseline's epochs to reach its own final "
        "accuracy divided by the arm's. 'final - reference': final test accuracy minus that of "
        f"the reference arm. Plot: {PLOT_FILE}.",
    ]  # fmt: skip
    ckpt.write_text(path, "\n".join(lines) + "\n")


def plot_curves(path: Path, arms: list[dict[str, Any]], title: str) -> None:
    """Test accuracy per epoch, one line per arm (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm in arms:
        curve = [100 * a if a is not None else float("nan") for a in arm["test_by_epoch"]]
        ax.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=arm["name"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


SPEC_KEYS = ("settings", "teacher", "teacher_run", "student", "distill", "baseline", "arms")
CONFIG_KEYS = ("settings", "teacher", "student", "distill")
OUTPUTS = ("teacher", "arms", "results.md", "results.json", PLOT_FILE)


@register_experiment("idsnn", SPEC_KEYS, config_keys=CONFIG_KEYS, outputs=OUTPUTS)
def run_idsnn_experiment(spec: dict[str, Any], out_dir: Path, log: Log) -> dict[str, Any]:
    """Teacher once, then every arm; writes results.md, results.json and the plot."""
    arms_spec = check_spec(spec)
    baseline = str(spec.get("baseline", arms_spec[0]["name"]))
    start = time.perf_counter()
    teacher_run, teacher = run_teacher(spec, out_dir / "teacher", log)
    arms = [
        run_arm(spec, arm, teacher_run, out_dir / "arms" / _slug(str(arm["name"])), log)
        for arm in arms_spec
    ]
    target = add_convergence(arms, baseline)
    results = {
        "teacher_run": teacher_run, "teacher": teacher, "baseline": baseline,
        "baseline_final": target, "arms": arms, "wall_s": time.perf_counter() - start,
        "spec": spec, "results_md": str(out_dir / "results.md"),
        "plot": str(out_dir / PLOT_FILE),
    }  # fmt: skip
    write_markdown(out_dir / "results.md", spec, results)
    ckpt.write_json(out_dir / "results.json", results)
    plot_curves(out_dir / PLOT_FILE, arms, f"{spec.get('name', 'idsnn')} ({spec['profile']})")
    log("\n".join(table_rows(arms)))
    return results

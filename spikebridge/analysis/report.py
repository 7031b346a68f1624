"""A run folder's report: ``report.md`` plus PNG figures, from the files the run left behind.

``write_report(run_dir)`` reads what is there and draws what it can (METHODS 3):

- ``curves.png``: loss, train/val/test accuracy and learning rate per epoch
  (``metrics.jsonl``);
- ``accuracy_by_timestep.png``: test accuracy after t steps, one line per result file that
  has ``accuracy_by_timestep`` (``summary.json``, ``eval.json``, conversion summaries, ...);
- ``firing_rates.png``: spikes per neuron per step of every spiking site, at the T named in
  its title;
- ``operations.png``: ANN MACs vs SNN synaptic operations per image, and the energy
  estimate (E_MAC = 4.6 pJ, E_AC = 0.9 pJ, 45 nm, Horowitz 2014), both sides labelled with
  their T and accuracy; ``report.md`` adds the figures at every t (each over the first t
  steps);
- ``errors.png``: the conversion error decomposition, when the folder has ``errors.csv``.

Accuracy axes span 0-100 % with a chance line and the run's reference (the ANN before
conversion, a distilled run's teacher); no ANN/SNN energy ratio is quoted for a model near
chance (rules: :mod:`spikebridge.analysis.figures`).

The folder must be finished (``summary.json``, written last, and a readable ``config.json``
when it has one: :func:`spikebridge.engine.rundir.validate_run_dir`), so a report never
describes a run that is half-written, still running or was killed. A section whose data are
absent is kept in ``report.md`` with one line saying what is missing, so a reader knows it
was not forgotten. Figures are drawn on matplotlib's Agg canvas directly (no global backend
change, no display needed).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from spikebridge.analysis.figures import (
    CHANCE_MARGIN,
    EnergySides,
    References,
    plot_curves,
    plot_firing_rates,
    plot_operations,
    plot_timesteps,
    ratio_withheld,
)
from spikebridge.analysis.ops import measurement_at
from spikebridge.engine.rundir import validate_run_dir
from spikebridge.errors import DataError

__all__ = [
    "plot_curves", "plot_firing_rates", "plot_operations", "plot_timesteps", "write_report",
]  # fmt: skip

REPORT_FILE = "report.md"
METRICS_FILE = "metrics.jsonl"
ERRORS_CSV = "errors.csv"
# Files searched (in this order) for the measurement numbers of firing rates and operations.
MEASUREMENT_SOURCES = ("summary.json", "eval.json")


@dataclass
class RunFiles:
    """What a run folder holds: its JSON results (file stem -> dict) and epoch records."""

    path: Path
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # file name -> why it was left out

    def first_with(self, key: str) -> tuple[str, dict[str, Any]] | None:
        """``(file stem, result)`` of the first result holding ``key`` (summary, eval, rest)."""
        order = [Path(n).stem for n in MEASUREMENT_SOURCES]
        stems = order + sorted(s for s in self.results if s not in order)
        for stem in stems:
            if self.results.get(stem, {}).get(key) is not None:
                return stem, self.results[stem]
        return None


def read_run_files(run_dir: str | Path) -> RunFiles:
    """Read every top-level ``*.json`` (dict) and ``metrics.jsonl`` of ``run_dir``.

    A ``*.json`` file that cannot be read (not UTF-8, truncated, not JSON) is left out and
    named in ``skipped`` with the reason, which the report prints: its other files still make
    a valid report, and the reader learns which numbers are missing and why. A damaged
    ``metrics.jsonl`` is a DataError (the training curves would be wrong, not just missing).
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise DataError(f"run folder {str(path)!r} does not exist.")
    run = RunFiles(path)
    for file in sorted(path.glob("*.json")):
        try:
            data = json.loads(file.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            run.skipped[file.name] = _unreadable(exc)
            continue
        if isinstance(data, dict):
            run.results[file.stem] = data
    metrics = path / METRICS_FILE
    if metrics.is_file():
        try:
            text = metrics.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{str(metrics)!r} is not UTF-8 text; the file is damaged.") from None
        lines = enumerate(text.splitlines(), start=1)
        run.metrics = [_json_line(metrics, n, line) for n, line in lines if line.strip()]
    return run


def _unreadable(exc: Exception) -> str:
    """Why a JSON file was left out, in a few words."""
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON, line {exc.lineno} column {exc.colno}: {exc.msg}; truncated?"
    return f"unreadable: {getattr(exc, 'strerror', None) or exc}"


def _json_line(path: Path, number: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{str(path)!r} is not valid JSON lines (line {number}: {exc.msg}); the file is "
            "damaged."
        ) from None


def timestep_curves(run: RunFiles) -> dict[str, dict[int, float]]:
    """Label -> {t: accuracy} for every result (or one level of nested results) with
    ``accuracy_by_timestep``; labels name the file (and split or nested key)."""
    curves: dict[str, dict[int, float]] = {}
    for stem, result in run.results.items():
        candidates = {stem: result}
        candidates.update({f"{stem}: {k}": v for k, v in result.items() if isinstance(v, dict)})
        for label, data in candidates.items():
            by_t = data.get("accuracy_by_timestep")
            if isinstance(by_t, dict) and by_t:
                split = data.get("split")
                name = f"{label}.json" if label == stem else label.replace(":", ".json:", 1)
                name = f"{name} ({split} split)" if isinstance(split, str) else name
                curves[name] = {int(t): float(a) for t, a in by_t.items()}
    return curves


def read_error_table(csv_path: Path, timesteps: int) -> Any:
    """Rebuild an :class:`~spikebridge.conversion.decomposition.ErrorTable` from its CSV."""
    from spikebridge.conversion.decomposition import ErrorTable, LayerErrors

    types = {f.name: (str if f.name == "site" else float) for f in fields(LayerErrors)}
    with csv_path.open(newline="") as fh:
        rows = [LayerErrors(**{k: types[k](v) for k, v in r.items()}) for r in csv.DictReader(fh)]
    return ErrorTable(rows, timesteps)


# ----------------------------------------------------------------------------- sections


def _number(value: Any, scale: float = 1.0, unit: str = "", digits: int = 4) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{value * scale:.{digits}g}{unit}"


def run_references(run: RunFiles) -> References:
    """Chance level (the model's classes, else the dataset's) and the reference network of
    a run: the ANN a converted run came from, or a distilled run's teacher."""
    from spikebridge.data.spec import DATASET_INFO

    config = run.results.get("config", {})
    classes = config.get("model", {}).get("num_classes")
    if not isinstance(classes, int) or classes < 2:
        info = DATASET_INFO.get(config.get("data", {}).get("dataset"))
        classes = info.num_classes if info is not None else None
    summary = run.results.get("summary", {})
    reference = None
    if isinstance(summary.get("ann_accuracy"), (int, float)):
        reference = ("ANN before conversion", float(summary["ann_accuracy"]))
    elif isinstance(summary.get("teacher_accuracy"), (int, float)):
        reference = ("teacher ANN", float(summary["teacher_accuracy"]))
    return References(classes, reference)


def _section_overview(run: RunFiles) -> list[str]:
    config = run.results.get("config", {})
    model, data = config.get("model", {}), config.get("data", {})
    lines = ["## Overview", "", "| item | value |", "|---|---|"]
    kind = (
        f"{model.get('neuron')} SNN, T = {model.get('timesteps')}" if model.get("neuron") else "ANN"
    )
    lines += [
        f"| model | {model.get('name', 'n/a')} (width {model.get('width', 'n/a')}) |",
        f"| kind | {kind} |",
        f"| dataset | {data.get('dataset', 'n/a')} |",
    ]
    summary, refs = run.results.get("summary", {}), run_references(run)
    if refs.chance is not None:
        lines.append(f"| chance level (1/{refs.num_classes}) | {_number(refs.chance, 100, ' %')} |")
    for key, label in (
        ("test_accuracy", "test accuracy (selected on validation)"),
        ("val_accuracy", "validation accuracy"),
        ("best_test_accuracy", "best test over epochs (paper comparison)"),
        ("ann_accuracy", "ANN accuracy before conversion"),
        ("teacher_accuracy", "teacher ANN test accuracy"),
    ):
        if key in summary:
            lines.append(f"| {label} | {_number(summary[key], 100, ' %')} |")
    if isinstance(summary.get("measured_timesteps"), int) and summary.get("sops_per_image"):
        lines.append(f"| T of the headline firing / SOP / energy figures | "
                     f"{summary['measured_timesteps']} (every t: tables below) |")  # fmt: skip
    if "eval" in run.results:
        ev = run.results["eval"]
        lines.append(
            f"| eval.json accuracy ({ev.get('split')} split, t = "
            f"{max(ev.get('timesteps') or [0])}) | {_number(ev.get('accuracy'), 100, ' %')} |"
        )
    return [*lines, ""]


def _section_curves(run: RunFiles) -> list[str]:
    lines = ["## Training curves", ""]
    if not run.metrics:
        return [*lines, f"No `{METRICS_FILE}` in this folder: no training curves.", ""]
    plot_curves(run.metrics, run.path / "curves.png", run_references(run))
    last = run.metrics[-1]
    return [
        *lines,
        "![training curves](curves.png)",
        "",
        f"{len(run.metrics)} epoch(s); last epoch: train loss {_number(last.get('train_loss'))}, "
        f"train accuracy {_number(last.get('train_accuracy'), 100, ' %')}.",
        "",
    ]


def _section_timesteps(run: RunFiles) -> list[str]:
    lines = ["## Accuracy vs time-step", ""]
    curves = timestep_curves(run)
    if not curves:
        return [
            *lines,
            "No result file has `accuracy_by_timestep` (ANN run, or not evaluated).",
            "",
        ]
    plot_timesteps(curves, run.path / "accuracy_by_timestep.png", run_references(run))
    lines += ["![accuracy by time-step](accuracy_by_timestep.png)", ""]
    for label, by_t in curves.items():
        cells = "  ".join(f"t={t}: {_number(by_t[t], 100, ' %')}" for t in sorted(by_t))
        lines.append(f"- {label}: {cells}")
    return [*lines, ""]


def _measured_t(run: RunFiles, m: dict[str, Any]) -> int | None:
    """The T of a measurement's top-level figures (old folders: the run's T)."""
    for value in (m.get("measured_timesteps"), run.results.get("summary", {}).get("timesteps"),
                  run.results.get("config", {}).get("model", {}).get("timesteps")):  # fmt: skip
        if isinstance(value, int):
            return value
    return None


def accuracy_at(run: RunFiles, m: dict[str, Any], t: int | None) -> float | None:
    """Accuracy after ``t`` steps: from the measurement's own file, else the run's summary."""
    for source in (m, run.results.get("summary", {})):
        value = (source.get("accuracy_by_timestep") or {}).get(str(t))
        if isinstance(value, (int, float)):
            return float(value)
    return None


def _section_firing(run: RunFiles) -> list[str]:
    lines = ["## Firing rate per layer", ""]
    found = run.first_with("firing_rate_by_layer")
    if found is None:
        return [*lines, "No firing rates recorded (ANN run, or a run made before measurement).", ""]
    stem, m = found
    t, images = _measured_t(run, m), m.get("measured_images")
    plot_firing_rates(m["firing_rate_by_layer"], run.path / "firing_rates.png",
                      m.get("firing_rate"), t, images)  # fmt: skip
    return [
        *lines,
        "![firing rates](firing_rates.png)",
        "",
        f"From `{stem}.json`, at T = {t if t is not None else 'n/a'} ({images or 'n/a'} images): "
        f"overall {_number(m.get('firing_rate'))} spikes per neuron per step; silent neurons "
        f"(no spike in those steps): {_number(m.get('silent_fraction'), 100, ' %')}.",
        "",
    ]


def energy_sides(run: RunFiles, m: dict[str, Any]) -> EnergySides:
    """Both sides of the run's energy comparison: the SNN at its measured T with its
    accuracy there; the ANN trained (a converted run's source) or a MAC count only."""
    t = _measured_t(run, m) or 0
    ann = run.results.get("summary", {}).get("ann_accuracy")
    ann = float(ann) if isinstance(ann, (int, float)) else None
    return EnergySides(t, accuracy_at(run, m, t), ann, ann is not None)


def _comparison_line(sides: EnergySides, m: dict[str, Any], refs: References) -> str:
    """One sentence: both sides with T and accuracy, then the ratio or why it is withheld."""
    snn, ann = m.get("energy_estimate_uj"), m.get("ann_energy_estimate_uj")
    ann_side = (f"the trained ANN (T = 1, accuracy {_number(sides.ann_accuracy, 100, ' %')})"
                if sides.ann_trained else "an ANN of the same architecture (a MAC count, not "
                "a trained network, so it has no accuracy)")  # fmt: skip
    line = (f"SNN at T = {sides.timesteps} (accuracy {_number(sides.snn_accuracy, 100, ' %')}): "
            f"{_number(snn, 1, ' µJ')} per image, against {_number(ann, 1, ' µJ')} for "
            f"{ann_side}.")  # fmt: skip
    withheld = ratio_withheld(sides.snn_accuracy, refs, sides.ann_accuracy)
    if withheld is not None:
        return f"{line} **No energy ratio is given**: {withheld}."
    return f"{line} ANN / SNN energy: {_number(ann / snn if snn else None, 1, 'x', 3)}."


def _per_t_table(run: RunFiles, stem: str, m: dict[str, Any], refs: References) -> list[str]:
    """Accuracy, firing rate, SOPs and energy at every t of a measurement (each over the
    first t steps), the ratio only where :func:`ratio_withheld` allows it."""
    by_t = m.get("sops_by_timestep") or {}
    if not by_t:
        return [f"`{stem}.json` has figures at T = {_measured_t(run, m)} only (made before "
                "per-t measurement).", ""]  # fmt: skip
    ann_acc = run.results.get("summary", {}).get("ann_accuracy")
    lines = [f"Per time-step, from `{stem}.json` (every figure over the first t steps, "
             f"{m.get('measured_images', 'n/a')} images):", "",
             "| t | accuracy | firing rate | SOPs / image | SNN energy (µJ) | ANN / SNN energy |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for t in sorted(by_t, key=int):
        at, acc = measurement_at(m, int(t)) or {}, accuracy_at(run, m, int(t))
        snn = at.get("energy_estimate_uj")
        withheld = ratio_withheld(acc, refs, ann_acc)
        ratio = "withheld" if withheld or not snn else f"{m['ann_energy_estimate_uj'] / snn:.3g}x"
        lines.append(f"| {t} | {_number(acc, 100, ' %')} | {_number(at.get('firing_rate'))} | "
                     f"{_number(at.get('sops_per_image'), 1e-6, ' M')} | {_number(snn)} | "
                     f"{ratio} |")  # fmt: skip
    ann_side = "the trained ANN" if ann_acc is not None else "a MAC count of the same architecture"
    return [*lines, "", f"ANN / SNN energy: against {ann_side}; withheld where the SNN is below "
            f"chance + {100 * CHANCE_MARGIN:.0f} points or below half the trained ANN's accuracy "
            "(such a network is cheap because it barely fires).", ""]  # fmt: skip


def _section_operations(run: RunFiles) -> list[str]:
    lines = ["## Operations and energy estimate", ""]
    found = run.first_with("macs_per_image")
    if found is None:
        return [*lines, "No operation counts recorded (a run made before measurement).", ""]
    stem, m = found
    lines += [
        f"From `{stem}.json`. {m.get('energy_note', '')}",
        "",
        "| quantity (per image) | value |",
        "|---|---|",
        f"| ANN MACs | {_number(m['macs_per_image'], 1e-6, ' M')} |",
        f"| ANN energy estimate | {_number(m.get('ann_energy_estimate_uj'), 1, ' µJ')} |",
    ]
    if m.get("sops_per_image") is None:
        return [*lines, "", "ANN run: no synaptic operations, so no SOPs-vs-MACs figure.", ""]
    refs, sides = run_references(run), energy_sides(run, m)
    plot_operations(m, run.path / "operations.png", sides, refs)
    t = sides.timesteps
    lines += [
        f"| SNN SOPs (accumulates), T = {t} | {_number(m['sops_per_image'], 1e-6, ' M')} |",
        f"| SNN first-layer MACs (analog input), T = {t} | "
        f"{_number(m.get('first_layer_macs_per_image'), 1e-6, ' M')} |",
        f"| SNN energy estimate, T = {t} | {_number(m.get('energy_estimate_uj'), 1, ' µJ')} |",
    ]
    lines += ["", _comparison_line(sides, m, refs), "", "![operations](operations.png)", ""]
    for source in MEASUREMENT_SOURCES:
        other = run.results.get(Path(source).stem, {})
        if other.get("sops_per_image") is not None:
            lines += _per_t_table(run, Path(source).stem, other, refs)
    return lines


def _error_timesteps(run: RunFiles) -> int:
    """T of the error analysis: ``errors.md``'s title (``spikebridge analyze``), else the
    run's T (summary, then config); 0 when unknown."""
    md = run.path / "errors.md"
    found = re.search(r"T = (\d+)", md.read_text()) if md.is_file() else None
    if found:
        return int(found.group(1))
    for value in (run.results.get("summary", {}).get("timesteps"),
                  run.results.get("config", {}).get("model", {}).get("timesteps")):  # fmt: skip
        if isinstance(value, int):
            return value
    return 0


def _section_errors(run: RunFiles) -> list[str]:
    lines = ["## Conversion error decomposition", ""]
    csv_path = run.path / ERRORS_CSV
    if not csv_path.is_file():
        return [*lines, f"No `{ERRORS_CSV}` in this folder (not a conversion analysis).", ""]
    from spikebridge.analysis.conversion_errors import plot_errors

    table = read_error_table(csv_path, _error_timesteps(run))
    plot_errors(table, run.path / "errors.png")
    return [*lines, "![conversion errors](errors.png)", "", table.to_markdown(), ""]


SECTIONS: tuple[Callable[[RunFiles], list[str]], ...] = (
    _section_overview,
    _section_curves,
    _section_timesteps,
    _section_firing,
    _section_operations,
    _section_errors,
)


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.md`` and its PNG figures (see the module docstring).

    Returns the path of ``report.md``. RunError (one sentence) when the folder is missing,
    unfinished (no ``summary.json``) or damaged.
    """
    validate_run_dir(run_dir, kind="results")
    run = read_run_files(run_dir)
    lines = [f"# Run report: {run.path.name}", ""]
    for name, why in run.skipped.items():
        lines += [f"> Left out of this report: `{name}` ({why}).", ""]
    for section in SECTIONS:
        lines += section(run)
    path = run.path / REPORT_FILE
    path.write_text("\n".join(lines))
    return path


# ----------------------------------------------------------------------------- console


def format_measurement(m: dict[str, Any]) -> str:
    """Compact lines of the :func:`~spikebridge.runs.measure.measure_run` numbers, the SNN's
    named with the T they belong to (``measured_timesteps``)."""
    if "macs_per_image" not in m:
        return ""
    lines = [
        f"ANN MACs/image {_number(m['macs_per_image'], 1e-6, ' M')}   "
        f"ANN energy {_number(m.get('ann_energy_estimate_uj'), 1, ' µJ')} (estimate)"
    ]
    if m.get("sops_per_image") is not None:
        lines[0] = "ANN equivalent (MAC count of the same architecture): " + lines[0]
        at = f"SNN at T = {m.get('measured_timesteps', 'n/a')}"
        lines.insert(
            0,
            f"{at}: firing rate {_number(m.get('firing_rate'))} spikes/neuron/step   "
            f"silent fraction {_number(m.get('silent_fraction'))} (no spike in those steps)   "
            f"(measured on {m.get('measured_images')} images)",
        )
        lines.append(
            f"{at}: SOPs/image {_number(m['sops_per_image'], 1e-6, ' M')}   "
            f"energy {_number(m.get('energy_estimate_uj'), 1, ' µJ')} (estimate; "
            "E_MAC 4.6 pJ, E_AC 0.9 pJ, 45 nm, Horowitz 2014)"
        )
    return "\n".join(lines)


# label, key, scale, ANN column key (None: no ANN figure)
MEASURE_ROWS = (
    ("rate", "firing_rate", 1.0, None),
    ("ops M", "sops_per_image", 1e-6, "macs_per_image"),
    ("µJ", "energy_estimate_uj", 1.0, "ann_energy_estimate_uj"),
)


def measurement_rows(summary: dict[str, Any], shown: list[str]) -> list[str]:
    """Rows under a conversion's accuracy table (``method  ANN  T=...``): firing rate, ops
    (the ANN's MACs, the SNN's SOPs) and energy per image at each shown t, each over the
    first t steps; none when the summary has no figures at those t."""
    at = {t: measurement_at(summary, int(t)) or {} for t in shown}
    if not any(at.values()):
        return []
    rows = []
    for label, key, scale, ann_key in MEASURE_ROWS:
        ann = summary.get(ann_key) if ann_key else None
        cells = [_cell(at[t].get(key), scale) for t in shown]
        rows.append(f"{label:<8} {_cell(ann, scale):>7} " + " ".join(f"{c:>7}" for c in cells))
    note = (f"(per image over the first t steps of {summary.get('measured_images')} test images: "
            "rate = spikes/neuron/step; ops = MACs (ANN) or SOPs (SNN), millions; µJ = energy "
            "estimate)")  # fmt: skip
    return [*rows, note]


def _cell(value: float | None, scale: float) -> str:
    return "-" if value is None else f"{value * scale:.3g}"

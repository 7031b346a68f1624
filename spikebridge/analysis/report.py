"""A run folder's report: ``report.md`` plus PNG figures, from the files the run left behind.

``write_report(run_dir)`` reads what is there and draws what it can (METHODS 3):

- ``curves.png``: loss, train/val/test accuracy and learning rate per epoch
  (``metrics.jsonl``);
- ``accuracy_by_timestep.png``: test accuracy after t steps, one line per result file that
  has ``accuracy_by_timestep`` (``summary.json``, ``eval.json``, conversion summaries, ...);
- ``firing_rates.png``: spikes per neuron per step of every spiking site;
- ``operations.png``: ANN MACs vs SNN synaptic operations per image, and the energy
  estimate (E_MAC = 4.6 pJ, E_AC = 0.9 pJ, 45 nm, Horowitz 2014);
- ``errors.png``: the conversion error decomposition, when the folder has ``errors.csv``.

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

from spikebridge.errors import DataError

REPORT_FILE = "report.md"
METRICS_FILE = "metrics.jsonl"
ERRORS_CSV = "errors.csv"
# Files searched (in this order) for the measurement numbers of firing rates and operations.
MEASUREMENT_SOURCES = ("summary.json", "eval.json")
DPI = 120


@dataclass
class RunFiles:
    """What a run folder holds: its JSON results (file stem -> dict) and epoch records."""

    path: Path
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def first_with(self, key: str) -> tuple[str, dict[str, Any]] | None:
        """``(file stem, result)`` of the first result holding ``key`` (summary, eval, rest)."""
        order = [Path(n).stem for n in MEASUREMENT_SOURCES]
        stems = order + sorted(s for s in self.results if s not in order)
        for stem in stems:
            if self.results.get(stem, {}).get(key) is not None:
                return stem, self.results[stem]
        return None


def read_run_files(run_dir: str | Path) -> RunFiles:
    """Read every top-level ``*.json`` (dict) and ``metrics.jsonl`` of ``run_dir``."""
    path = Path(run_dir)
    if not path.is_dir():
        raise DataError(f"run folder {str(path)!r} does not exist.")
    run = RunFiles(path)
    for file in sorted(path.glob("*.json")):
        try:
            data = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a foreign or half-written file is not a result: leave it out
        if isinstance(data, dict):
            run.results[file.stem] = data
    metrics = path / METRICS_FILE
    if metrics.is_file():
        lines = enumerate(metrics.read_text().splitlines(), start=1)
        run.metrics = [_json_line(metrics, n, line) for n, line in lines if line.strip()]
    return run


def _json_line(path: Path, number: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{str(path)!r} is not valid JSON lines (line {number}: {exc.msg}); the file is "
            "damaged."
        ) from None


# ----------------------------------------------------------------------------- figures


def _figure(n_axes: int, width: float, height: float) -> tuple[Any, list[Any]]:
    """A matplotlib Figure on an Agg canvas with ``n_axes`` side-by-side axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_axes)
    return fig, list(axes) if n_axes > 1 else [axes]


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Epochs and values of ``key`` where it is a number."""
    pairs = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_curves(records: list[dict[str, Any]], path: Path) -> Path:
    """Loss, accuracy (%) and learning rate per epoch from ``metrics.jsonl`` records."""
    fig, (loss_ax, acc_ax, lr_ax) = _figure(3, 14, 4)
    loss_keys = [k for k in records[0] if k.endswith("loss")]
    for key in loss_keys:
        epochs, values = _series(records, key)
        if epochs:
            loss_ax.plot(epochs, values, marker="o", ms=3, label=key.replace("_", " "))
    loss_ax.set(xlabel="epoch", ylabel="loss (cross-entropy, nats)", title="Loss per epoch")
    for split in ("train", "val", "test"):
        epochs, values = _series(records, f"{split}_accuracy")
        if epochs:
            acc_ax.plot(epochs, [100 * v for v in values], marker="o", ms=3, label=split)
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy per epoch")
    epochs, values = _series(records, "lr")
    lr_ax.plot(epochs, values, marker="o", ms=3, color="tab:green", label="lr at epoch start")
    lr_ax.set(xlabel="epoch", ylabel="learning rate", title="Learning rate")
    from matplotlib.ticker import MaxNLocator

    for ax in (loss_ax, acc_ax, lr_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


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


def plot_timesteps(
    curves: dict[str, dict[int, float]], path: Path, ann_accuracy: float | None = None
) -> Path:
    """Accuracy (%) against the number of simulated time-steps t, one line per source
    (distinct line styles, so identical curves stay visible); the ANN as a dashed level."""
    from matplotlib.ticker import MaxNLocator

    fig, (ax,) = _figure(1, 7, 4.5)
    styles = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D")]
    for i, (label, by_t) in enumerate(curves.items()):
        ts, (ls, marker) = sorted(by_t), styles[i % len(styles)]
        ax.plot(ts, [100 * by_t[t] for t in ts], ls=ls, marker=marker, ms=5, label=label)
    if ann_accuracy is not None:
        ax.axhline(100 * ann_accuracy, color="gray", ls="--", label="ANN (before conversion)")
    ax.set(
        xlabel="time-steps t (simulation steps)",
        ylabel="accuracy (%)",
        title="Accuracy after t time-steps (running mean of outputs)",
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_firing_rates(rates: dict[str, float], path: Path, overall: float | None) -> Path:
    """Horizontal bars: spikes per neuron per step of each site, input to output."""
    names = list(rates)
    fig, (ax,) = _figure(1, 8, max(3.0, 0.28 * len(names) + 1.5))
    ax.barh(range(len(names)), [rates[n] for n in names], color="tab:blue", label="site")
    if overall is not None and math.isfinite(overall):
        ax.axvline(overall, color="tab:red", ls="--", label=f"all sites: {overall:.3f}")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()  # the first site (stem) on top
    ax.set(
        xlabel="firing rate (spikes per neuron per time-step)",
        ylabel="spiking site",
        title="Firing rate per layer",
    )
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_operations(m: dict[str, Any], path: Path) -> Path:
    """Bars: MACs (ANN) vs SOPs + analog first-layer MACs (SNN) per image; energy in µJ."""
    fig, (ops_ax, energy_ax) = _figure(2, 11, 4.5)
    sops, first = m["sops_per_image"] / 1e6, (m.get("first_layer_macs_per_image") or 0) / 1e6
    ops_ax.bar(["ANN"], [m["macs_per_image"] / 1e6], color="tab:orange", label="MACs (ANN)")
    ops_ax.bar(["SNN"], [first], color="tab:red", label="first-layer MACs (SNN, analog)")
    ops_ax.bar(["SNN"], [sops], bottom=[first], color="tab:blue", label="SOPs (SNN, ACs)")
    ops_ax.set(ylabel="operations per image (millions)", title="Operations per image")
    energy = [m["ann_energy_estimate_uj"], m["energy_estimate_uj"]]
    energy_ax.bar(["ANN", "SNN"], energy, color=["tab:orange", "tab:blue"])
    energy_ax.set(
        ylabel="energy per image (µJ, estimate)",
        title="Energy estimate: E_MAC 4.6 pJ, E_AC 0.9 pJ (45 nm)",
    )
    for ax in (ops_ax, energy_ax):
        ax.grid(axis="y", alpha=0.3)
    ops_ax.legend(fontsize=8)
    return _save(fig, path)


def read_error_table(csv_path: Path, timesteps: int) -> Any:
    """Rebuild an :class:`~spikebridge.methods.error_analysis.ErrorTable` from its CSV."""
    from spikebridge.methods.error_analysis import ErrorTable, LayerErrors

    types = {f.name: (str if f.name == "site" else float) for f in fields(LayerErrors)}
    with csv_path.open(newline="") as fh:
        rows = [LayerErrors(**{k: types[k](v) for k, v in r.items()}) for r in csv.DictReader(fh)]
    return ErrorTable(rows, timesteps)


# ----------------------------------------------------------------------------- sections


def _number(value: Any, scale: float = 1.0, unit: str = "", digits: int = 4) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{value * scale:.{digits}g}{unit}"


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
    summary = run.results.get("summary", {})
    for key, label in (
        ("test_accuracy", "test accuracy (selected on validation)"),
        ("val_accuracy", "validation accuracy"),
        ("best_test_accuracy", "best test over epochs (paper comparison)"),
        ("ann_accuracy", "ANN accuracy before conversion"),
    ):
        if key in summary:
            lines.append(f"| {label} | {_number(summary[key], 100, ' %')} |")
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
    plot_curves(run.metrics, run.path / "curves.png")
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
    ann = run.first_with("ann_accuracy")
    plot_timesteps(
        curves, run.path / "accuracy_by_timestep.png", ann[1]["ann_accuracy"] if ann else None
    )
    lines += ["![accuracy by time-step](accuracy_by_timestep.png)", ""]
    for label, by_t in curves.items():
        cells = "  ".join(f"t={t}: {_number(by_t[t], 100, ' %')}" for t in sorted(by_t))
        lines.append(f"- {label}: {cells}")
    return [*lines, ""]


def _section_firing(run: RunFiles) -> list[str]:
    lines = ["## Firing rate per layer", ""]
    found = run.first_with("firing_rate_by_layer")
    if found is None:
        return [*lines, "No firing rates recorded (ANN run, or a run made before measurement).", ""]
    stem, m = found
    plot_firing_rates(
        m["firing_rate_by_layer"], run.path / "firing_rates.png", m.get("firing_rate")
    )
    return [
        *lines,
        "![firing rates](firing_rates.png)",
        "",
        f"From `{stem}.json` ({m.get('measured_images', 'n/a')} images): overall "
        f"{_number(m.get('firing_rate'))} spikes per neuron per step; silent neurons "
        f"(never fired): {_number(m.get('silent_fraction'), 100, ' %')}.",
        "",
    ]


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
    plot_operations(m, run.path / "operations.png")
    lines += [
        f"| SNN SOPs (accumulates) | {_number(m['sops_per_image'], 1e-6, ' M')} |",
        f"| SNN first-layer MACs (analog input) | "
        f"{_number(m.get('first_layer_macs_per_image'), 1e-6, ' M')} |",
        f"| SNN energy estimate | {_number(m.get('energy_estimate_uj'), 1, ' µJ')} |",
    ]
    return [*lines, "", "![operations](operations.png)", ""]


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
    from spikebridge.methods.error_analysis import plot_errors

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
    from spikebridge.engine.rundir import validate_run_dir  # the engine imports analysis

    validate_run_dir(run_dir, kind="results")
    run = read_run_files(run_dir)
    lines = [f"# Run report: {run.path.name}", ""]
    for section in SECTIONS:
        lines += section(run)
    path = run.path / REPORT_FILE
    path.write_text("\n".join(lines))
    return path


# ----------------------------------------------------------------------------- console


def format_measurement(m: dict[str, Any]) -> str:
    """Compact lines of the :func:`~spikebridge.engine.runs.measure_run` numbers."""
    if "macs_per_image" not in m:
        return ""
    lines = [
        f"ANN MACs/image {_number(m['macs_per_image'], 1e-6, ' M')}   "
        f"ANN energy {_number(m.get('ann_energy_estimate_uj'), 1, ' µJ')} (estimate)"
    ]
    if m.get("sops_per_image") is not None:
        lines.insert(
            0,
            f"firing rate {_number(m.get('firing_rate'))} spikes/neuron/step   "
            f"silent fraction {_number(m.get('silent_fraction'))} (neurons that never fired)   "
            f"(measured on {m.get('measured_images')} images, T = "
            f"{m.get('measured_timesteps')})",
        )
        lines.append(
            f"SNN SOPs/image {_number(m['sops_per_image'], 1e-6, ' M')}   "
            f"SNN energy {_number(m.get('energy_estimate_uj'), 1, ' µJ')} (estimate; "
            "E_MAC 4.6 pJ, E_AC 0.9 pJ, 45 nm, Horowitz 2014)"
        )
    return "\n".join(lines)

"""``spikebridge eval RUN``: accuracy (and firing, SOPs, energy) of a run at every t <= T."""

from __future__ import annotations

import argparse
from typing import Any

from spikebridge.analysis import measurement_at
from spikebridge.analysis.report import format_measurement
from spikebridge.config_cli import add_config_arguments, config_from_args, warn_deprecated
from spikebridge.runs.evaluate import eval_run
from spikebridge.runs.train import format_percent

HELP = "evaluate a run folder's model at every t <= T (or at the t's of --report-at)"
SECTIONS = ("eval",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="run folder (train, distill, convert)")
    add_config_arguments(parser, SECTIONS, presets=False)


def _old_timestep_list(args: argparse.Namespace) -> None:
    """``--timesteps 1,2,4`` (the old list form) works as ``--report-at 1,2,4``, noticed."""
    given = vars(args)
    value = str(given.get("eval.timesteps", ""))
    if "," in value:
        warn_deprecated("--timesteps with a list", f"use --report-at {value}")
        given["eval.report_at"] = given.pop("eval.timesteps")


def format_eval(report: dict[str, Any]) -> str:
    """A compact table: one row per time-step t, every figure over the first t steps only
    (firing rate, SOPs and energy measured on ``measured_images`` images, METHODS 3)."""
    head = f"{report['run_dir']}: {report['split']} split, {report['samples']} images"
    spiking = any(measurement_at(report, int(t)) for t in report["accuracy_by_timestep"])
    rows = ["     t   accuracy      loss" + ("   firing rate   SOPs/image   energy (µJ)"
                                              if spiking else "")]  # fmt: skip
    for t, acc in report["accuracy_by_timestep"].items():
        row = f"{t:>6} {format_percent(acc):>10} {report['loss_by_timestep'][t]:>9.4f}"
        m = measurement_at(report, int(t)) if spiking else None
        if m is not None:
            row += (f" {_figure(m['firing_rate'], '.4f'):>13} "
                    f"{_figure(m['sops_per_image'], '.4g', 1e-6, ' M'):>12} "
                    f"{_figure(m['energy_estimate_uj'], '.4g'):>13}")  # fmt: skip
        rows.append(row)
    if spiking:
        rows.append(f"(firing rate, SOPs and energy at t: over the first t steps of "
                    f"{report.get('measured_images')} images; energy is an estimate)")  # fmt: skip
    return "\n".join([head, *rows])


def _figure(value: Any, spec: str, scale: float = 1.0, unit: str = "") -> str:
    return "n/a" if value is None else f"{value * scale:{spec}}{unit}"


def run(args: argparse.Namespace) -> int:
    """``spikebridge eval RUN``: accuracy at the requested time-steps; writes eval.json."""
    _old_timestep_list(args)
    cfg = config_from_args(args, SECTIONS).eval
    report = eval_run(
        args.run_dir, cfg.requested(), cfg.split, cfg.data_dir, cfg.device, cfg.batch_size
    )
    print(format_eval(report))
    print(format_measurement(report))
    return 0

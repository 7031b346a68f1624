"""``--method auto``: every conversion method tried on held-out images, the best kept per T
(issue 22, item 2; docs/METHODS.md 2.8).

Users rarely know which conversion method suits their ANN at their T. ``auto`` converts the
ANN with every registered method (:data:`spikebridge.conversion.METHODS`, in registry order)
that accepts it, each with its defaults and the run's options it has, scores each on labelled
held-out images that neither the calibration nor the test score uses (the ANN run's
validation split, :func:`~spikebridge.runs.conversion.selection_images`), and keeps, per
reported T, the most accurate; ties go to the earlier method of the registry order.

T is the total latency: a method whose neurons run dry steps before their output window
(COS, METHODS 2.7) is read at ``t = T − dry steps`` and is not a candidate where that is
below 1, so every method is compared at the same number of time-steps. The table of every
method at every T is part of the run (:class:`AutoReport`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

import spikebridge.conversion as conversion
from spikebridge.conversion.selection import Labelled, correct_by_timestep
from spikebridge.engine import rundir
from spikebridge.engine.evaluate import evaluate
from spikebridge.errors import ConfigError, ModelError
from spikebridge.nn.neurons import dry_steps
from spikebridge.runs import conversion as rc  # the convert run's helpers
from spikebridge.runs.conversion_config import (
    AUTO,
    build_method_config,
    convert_config,
    default_tune_at,
    report_steps,
)
from spikebridge.runs.setup import resolve_device


@dataclass
class AutoReport:
    """Held-out accuracy (fraction) of every method at every total T, and the kept ones.

    ``accuracy``: ``{method: {"T": fraction or None}}`` (None: not a candidate at that T);
    ``readout``: ``{method: {"T": t}}``, the window read for that total; ``chosen``:
    ``{"T": method}``; ``refused``: ``{method: reason}`` for methods that could not convert
    this ANN.
    """

    images: int
    accuracy: dict[str, dict[str, float | None]]
    readout: dict[str, dict[str, int]]
    chosen: dict[str, str]
    refused: dict[str, str] = field(default_factory=dict)
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        """The table of every method at every T (held-out accuracy, %), kept ones in bold."""
        totals = list(self.chosen) or next(iter(self.accuracy.values()), {}).keys()
        lines = [f"Held-out images: {self.images}" + (f" ({self.source})" if self.source else ""),
                 "", "| method | " + " | ".join(f"T={t}" for t in totals) + " |",
                 "|---|" + "---:|" * len(list(totals))]  # fmt: skip
        for method, by_t in self.accuracy.items():
            cells = []
            for t in totals:
                value, read = by_t.get(t), self.readout[method].get(t)
                text = "-" if value is None else f"{100 * value:.2f}"
                if value is not None and read != int(t):
                    text += f" (t={read})"
                cells.append(f"**{text}**" if self.chosen.get(t) == method else text)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += [f"| {m} | refused: {why} |" for m, why in self.refused.items()]
        return "\n".join(lines)


def readouts(snn: nn.Module, totals: Sequence[int]) -> dict[int, int]:
    """``{T: t}``: the window of ``snn`` read for each total T (``t = T − dry steps``, where
    the dry steps are those of a simulation at ``max(totals)``); totals it cannot reach are
    left out."""
    dry = dry_steps(snn, max(totals))
    return {total: total - dry for total in totals if total - dry >= 1}


def score_methods(
    candidates: dict[str, nn.Module], held_out: Labelled, totals: Sequence[int],
    refused: dict[str, str] | None = None, source: str | None = None,
) -> AutoReport:  # fmt: skip
    """Score every candidate SNN at every total T on ``held_out`` and keep the best per T
    (module docstring); ``candidates`` in tie-break order."""
    totals = sorted(set(totals))
    accuracy: dict[str, dict[str, float | None]] = {}
    reads: dict[str, dict[str, int]] = {}
    images = sum(int(y.shape[0]) for _, y in held_out)
    for name, snn in candidates.items():
        read = readouts(snn, totals)
        # simulated at the largest total, so the dry steps are those readouts() counted
        right = correct_by_timestep(snn, held_out, sorted({*read.values(), totals[-1]}))
        accuracy[name] = {str(T): (float(right[t].float().mean()) if T in read else None)
                          for T, t in ((T, read.get(T)) for T in totals)}  # fmt: skip
        reads[name] = {str(T): t for T, t in read.items()}
    chosen = {}
    for total in map(str, totals):
        scored = [(acc[total], -i, name) for i, (name, acc) in enumerate(accuracy.items())
                  if acc[total] is not None]  # fmt: skip
        if scored:
            chosen[total] = max(scored)[2]
    return AutoReport(images, accuracy, reads, chosen, dict(refused or {}), source)


# ----------------------------------------------------------------------------- the run


def convert_candidates(
    ann: nn.Module, config: Any, calib: Any, held_out: Labelled, tune_t: int,
    wanted: list[int], log: Callable[[str], None] = print,
) -> tuple[dict[str, nn.Module], dict[str, str]]:  # fmt: skip
    """Every registered method's conversion of ``ann`` (its defaults, and the options of the
    run ``config`` that it has), in registry order; for those that refuse it, the reason."""
    candidates, refused = {}, {}
    for name in conversion.METHODS:
        try:
            method_cfg = build_method_config(
                dataclasses.replace(config, method=name), tune_t, wanted, strict=False
            )
            candidates[name], _ = conversion.convert(ann, method_cfg, calib, held_out=held_out)
        except (ConfigError, ModelError) as exc:
            refused[name] = str(exc).rstrip(".")
            log(f"auto: {name} refused this ANN: {refused[name]}")
    return candidates, refused


def auto_run(config: Any, log: Callable[[str], None] = print) -> dict[str, Any]:
    """``convert --method auto``: convert with every registered method, keep the best per
    reported T on the held-out split, score the kept ones on the test images (module
    docstring). The run folder stores the model kept at the largest reported T;
    ``summary.json`` holds every method's held-out table (``auto_selection``) and the kept
    method per T (``chosen_by_timestep``)."""
    config = convert_config(config)
    if config.ann_run is None:
        raise ConfigError("convert needs the trained ANN run folder (RUN); none was given.")
    wanted, T = report_steps(config)
    rc._check_counts(config)
    tune_t = int(config.tune_at or default_tune_at(wanted))
    ann_path, dev = Path(config.ann_run), resolve_device(config.device)
    ann, ann_config = rundir.load_run(ann_path, dev, kind="ann")
    out_dir = rc._out_dir(config.out, ann_path, AUTO)
    splits, data, seed = rc.run_data(ann_config, config.data_dir)
    calib = rc.calibration_images(splits, config.calibration_size, seed, dev)
    held_out, source = rc.selection_images(
        splits, config.selection_size, seed, dev, config.calibration_size
    )
    claim = rundir.claim_run_dir(out_dir, resume=False, resumable=False,
                                 leftovers=(rc.REPORT_FILE,))  # fmt: skip
    with claim:
        start = time.perf_counter()
        candidates, refused = convert_candidates(ann, config, calib, held_out, tune_t, wanted, log)
        report = score_methods(candidates, held_out, wanted, refused, source)
        convert_s = time.perf_counter() - start
        loader = rc.eval_loader(splits, data, seed, dev, config.batch_size, config.test_images)
        summary = _auto_summary(ann, candidates, report, loader, wanted, ann_path, out_dir)
        summary["convert_time_s"] = convert_s
        kept = report.chosen[str(max(wanted))]
        options = {"ann_run": str(ann_path), "method": AUTO, "timesteps": T,
                   "report_at": wanted, "tune_timesteps": tune_t,
                   "calibration_size": config.calibration_size, "kept": kept}  # fmt: skip
        rc.write_converted(
            out_dir, ann_config, candidates[kept], options, summary, T,
            _auto_markdown(options["ann_run"], report),
        )  # fmt: skip
    log(report.to_markdown())
    return summary


def _auto_summary(
    ann: nn.Module, candidates: dict[str, nn.Module], report: AutoReport, loader: Any,
    wanted: list[int], ann_path: Path, out_dir: Path,
) -> dict[str, Any]:  # fmt: skip
    """Test accuracy at every reported T of the method kept there (read at its window)."""
    accuracy, horizon = {}, max(wanted)
    for name in dict.fromkeys(report.chosen.values()):
        by_t = evaluate(candidates[name], loader, timesteps=horizon)["accuracy_by_timestep"]
        for total, kept in report.chosen.items():
            if kept == name:
                accuracy[total] = by_t[str(report.readout[name][total])]
    return {
        "ann_run": str(ann_path), "method": AUTO, "timesteps": wanted,
        "ann_accuracy": evaluate(ann, loader)["accuracy"],
        "accuracy_by_timestep": {t: accuracy[t] for t in sorted(accuracy, key=int)},
        "chosen_by_timestep": report.chosen, "auto_selection": report.to_dict(),
        "test_samples": len(loader.dataset) if hasattr(loader, "dataset") else None,
        "run_dir": str(out_dir),
    }  # fmt: skip


def _auto_markdown(ann_run: str, report: AutoReport) -> str:
    """conversion.md of an auto run: the table of every method at every total T."""
    text = [f"# Conversion of {ann_run}: method auto", "",
            "Every method scored on held-out images at every total T (time-steps including "
            "any dry steps); the kept one in bold; test accuracy of the kept ones in "
            "summary.json.", "", report.to_markdown()]  # fmt: skip
    return "\n".join(text) + "\n"

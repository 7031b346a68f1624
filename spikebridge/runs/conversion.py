"""Conversion recipe: ``convert_run`` (ANN run folder -> converted SNN run folder), behind
``spikebridge convert`` (METHODS 2); ``analyze_run`` (the per-layer error report) lives in
:mod:`spikebridge.runs.analyze`.

``maxnorm`` (Diehl et al. 2015), ``robust`` (Rueckauer et al. 2017) and ``qcfs`` (Bu et al.
2022) are published baselines. ``ttrbr`` -- threshold tuning (METHODS 2.4), the error
decomposition (2.3) and the pre-add block (2.5) -- is **our design** built on the abstract
of the TTRBR paper (no code or full text was available).

The run's options are one typed config (:mod:`~spikebridge.runs.conversion_config`:
which T's, how many images, the method's options). Choices where the spec is silent:

- calibration images are ``N`` (default 1024) images of the ANN run's TRAINING split, drawn
  with a seeded permutation, normalized, never augmented;
- a tuning method (ttrbr) tunes at ONE T, ``tune_at``; the same converted model is then
  simulated once at T and its accuracy is reported at every t <= T (one causal pass,
  METHODS 3);
- a method that chooses on held-out images (ttrbr's ``select``, our design: one copy tuned
  towards the ANN, one towards its clip twin, and the untuned ``qcfs`` / ``robust``
  thresholds scored at every reported t) gets up to ``selection_size`` labelled images --
  the ANN run's validation split when it has one (images its training never saw), else
  training images outside any calibration draw; never test images; a reported t where the
  kept thresholds still trail another candidate is said in one line (METHODS 2.4);
- the ANN's accuracy is re-measured on the same test images (not read from its summary).

A converted run folder holds ``config.json`` (the ANN run's data/train sections, the
converted ``model`` section with ``neuron="if"`` and a ``conversion`` section),
``model.safetensors`` (folded weights + thresholds), ``conversion.md`` and, written last,
``summary.json``; :func:`spikebridge.engine.load_run` reloads it. The ANN run (RUN) must be
a finished ANN run folder; ``--out`` is locked while the conversion runs, and a conversion
that failed or was killed before ``summary.json`` is started again by the same command
(:mod:`spikebridge.engine.rundir`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikebridge.analysis.report import measurement_rows
from spikebridge.config import DEFAULT_RUNS_DIR, check_count, stored_data_section
from spikebridge.conversion import convert, method_of
from spikebridge.conversion.selection import selection_markdown, trails_note
from spikebridge.engine import checkpoint as ckpt
from spikebridge.engine import rundir
from spikebridge.engine.evaluate import evaluate
from spikebridge.engine.memory import check_simulation_fits
from spikebridge.errors import ConfigError
from spikebridge.runs.conversion_config import (
    build_method_config,
    convert_config,
    default_tune_at,
    report_steps,
)
from spikebridge.runs.measure import measure_run
from spikebridge.runs.setup import eval_batch, load_run_splits, resolve_device

REPORT_FILE = "conversion.md"
CALIBRATION_STREAM = 7919  # offsets the run seed so calibration draws differ from splits
OURS_NOTE = "ttrbr (threshold tuning + pre-add blocks) is our design on the TTRBR abstract"


# ----------------------------------------------------------------------------- data


def run_data(  # type: ignore[no-untyped-def]
    config: dict[str, Any], data_dir: str | None = None, whole_test_set: bool = False
):
    """The splits, data section and seed of an ANN run (re-made from its config).

    ``whole_test_set``: the test split is every image of the dataset's test file, also for a
    run trained with ``subset`` (which otherwise keeps a seeded sample of it).
    """
    data = stored_data_section(config.get("data", {}), data_dir=data_dir)
    seed = int(config.get("train", {}).get("seed", 0))
    return load_run_splits(data, seed, whole_test_set), data, seed


def calibration_images(
    splits: Any, n: int, seed: int, device: torch.device, batch_size: int = 256
) -> list[torch.Tensor]:
    """``n`` normalized training images as batches ``[b, C, H, W]`` (seeded draw, no augment)."""
    if n < 1:
        raise ConfigError(f"calibration size is {n}; expected an integer >= 1.")
    gen = torch.Generator().manual_seed(seed + CALIBRATION_STREAM)
    idx = torch.randperm(splits.count("train"), generator=gen)[:n].sort().values
    loader = splits.loader("train", batch_size, device, seed=seed, indices=idx)
    return [x for x, _ in loader]


def selection_images(
    splits: Any, n: int, seed: int, device: torch.device, calibration_size: int,
    batch_size: int = 500,
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], str]:  # fmt: skip
    """Up to ``n`` labelled held-out images for ``tune_reference="select"`` and where they
    come from: the run's validation split (held out of the ANN's training) when it has one,
    else the last ``n`` training images of the calibration permutation (disjoint from the
    ``calibration_size`` images drawn first). ConfigError when neither is possible."""
    if n < 1:
        raise ConfigError(f"selection size is {n}; expected an integer >= 1.")
    if splits.count("val") > 0:
        part, source = "val", "validation split"
        idx = torch.arange(min(n, splits.count("val")))
    else:
        total = splits.count("train")
        if calibration_size + n > total:
            raise ConfigError(
                f"{calibration_size} calibration + {n} selection images exceed the {total} "
                "training images; lower --selection-size or --calibration-size"
            )
        gen = torch.Generator().manual_seed(seed + CALIBRATION_STREAM)
        idx = torch.randperm(total, generator=gen)[total - n :].sort().values
        part, source = "train", "training images outside the calibration draw"
    return list(splits.loader(part, batch_size, device, seed=seed, indices=idx)), source


def eval_loader(  # type: ignore[no-untyped-def]
    splits: Any, data: Any, seed: int, device: torch.device, batch_size: int | None,
    max_images: int | None = None,
):  # fmt: skip
    """A plain loader over the run's test split (its first ``max_images`` images, if given)."""
    size = eval_batch(data, batch_size)
    total = splits.count("test")
    idx = torch.arange(total if max_images is None else min(max_images, total))
    return splits.loader("test", size, device, seed=seed, indices=idx, workers=data.workers)


# ----------------------------------------------------------------------------- convert


def _out_dir(out: str | Path | None, ann_run: Path, method: str) -> Path:
    """``out`` or ``runs/<ann>-<method>-<time>``; refused early when it is a file or holds
    a run (an unfinished conversion is started again: rundir.claim_run_dir)."""
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path(DEFAULT_RUNS_DIR) / f"{ann_run.name}-{method}-{stamp}"
    out = rundir.check_out_path(out)
    rundir.check_claimable(out, rundir.run_status(out), resume=False, resumable=False)
    return out


def _report_markdown(summary: dict[str, Any], snn: nn.Module) -> str:
    rep = snn.conversion_report  # type: ignore[attr-defined]
    lines = [f"# Conversion of {summary['ann_run']}", "", OURS_NOTE + ".", ""]
    lines += [format_accuracy_table(summary), "", "## Thresholds", "", rep.to_markdown()]
    if rep.tuning is not None:
        lines += ["", f"## Threshold tuning at T = {rep.tuning.timesteps}", ""]
        lines += [rep.tuning.to_markdown()]
    if rep.calibration is not None:
        lines += ["", f"## Output calibration at T = {rep.calibration.timesteps}", ""]
        lines += [rep.calibration.to_markdown()]
    if "reference_selection" in summary:
        lines += ["", *selection_markdown(summary["reference_selection"])]
    return "\n".join(lines) + "\n"


def _check_counts(config: Any) -> None:
    for option, value in (("--test-images", config.test_images),
                          ("--batch-size", config.batch_size),
                          ("--calibration-size", config.calibration_size),
                          ("--selection-size", config.selection_size)):  # fmt: skip
        check_count(option, value)


def convert_run(config: Mapping[str, Any] | Any, log: Callable[[str], None] = print) -> dict:
    """Convert an ANN run folder's model; write the converted run folder, return its summary.

    ``config``: a :data:`~spikebridge.runs.conversion_config.ConvertConfig` or a mapping
    of its keys, e.g. ``{"ann_run": "runs/ann", "method": "ttrbr", "report_at": [1, 2, 4]}``.
    Simulates once at T (``timesteps``); ``summary["accuracy_by_timestep"]`` holds every
    t <= T (fractions). A tuning method tunes at ``tune_at`` (see
    :mod:`~spikebridge.runs.conversion_config`). Bad options -> ConfigError; an ``ann_run``
    that is not a finished ANN run folder -> RunError.
    """
    config = convert_config(config)
    if config.ann_run is None:
        raise ConfigError("convert needs the trained ANN run folder (RUN); none was given.")
    wanted, T = report_steps(config)
    _check_counts(config)
    tune_t = int(config.tune_at or default_tune_at(wanted))
    method_cfg = build_method_config(config, tune_t, wanted)
    method = method_of(method_cfg)
    ann_run, dev = Path(config.ann_run), resolve_device(config.device)
    ann, ann_config = rundir.load_run(ann_run, dev, kind="ann")  # a finished ANN run, or RunError
    out_dir = _out_dir(config.out, ann_run, method.name)
    splits, data, seed = run_data(ann_config, config.data_dir)
    snn_cfg = dataclasses.replace(ann.config, neuron="if")  # the network simulated below
    check_simulation_fits(snn_cfg, splits.info.image_size, eval_batch(data, config.batch_size),
                          T, dev.type)  # fmt: skip
    calib = None
    if method.needs_calibration:
        calib = calibration_images(splits, config.calibration_size, seed, dev)
    held_out, source = None, None
    if method.needs_held_out(method_cfg):
        held_out, source = selection_images(
            splits, config.selection_size, seed, dev, config.calibration_size
        )
    claim = rundir.claim_run_dir(out_dir, resume=False, resumable=False, leftovers=(REPORT_FILE,))
    with claim:  # --out locked until summary.json, written last, makes the folder finished
        start = time.perf_counter()
        snn, report = convert(ann, method_cfg, calib, held_out=held_out)
        convert_s = time.perf_counter() - start
        loader = eval_loader(splits, data, seed, dev, config.batch_size, config.test_images)
        ann_acc = evaluate(ann, loader)["accuracy"]
        result = evaluate(snn, loader, timesteps=T)
        options = _options(config, method_cfg, report, wanted, T, calib is not None)
        summary = _conversion_summary(options, ann_acc, result, convert_s, ann_config, out_dir)
        _add_report_parts(summary, snn, source)
        summary["dataset_info"] = splits.info.to_dict()
        # firing, SOPs and energy at every t from one pass at the largest T; the top-level
        # figures at the deployment T (measured_timesteps) (METHODS 3)
        summary.update(measure_run(snn, loader, timesteps=max(T, tune_t), headline_t=tune_t))
        write_converted(out_dir, ann_config, snn, options, summary, T)
    log(format_accuracy_table(summary))
    if trails := selection_warning(summary):
        log(trails)
    return summary


def _options(
    config: Any, method_cfg: Any, report: Any, wanted: list[int], T: int, calibrated: bool
) -> dict[str, Any]:
    """What the run did, as recorded in config.json and summary.json: the run's choices and
    every option of the method's config (its defaults written out)."""
    method = method_of(method_cfg)
    options = {
        "ann_run": str(config.ann_run), "method": method.name, "timesteps": T,
        "report_at": wanted, "tune_timesteps": method_cfg.timesteps if method.tunes else None,
        "calibration_size": config.calibration_size if calibrated else 0,
        "phi": method_cfg.phi, **method_cfg.options(),
    }  # fmt: skip
    options.pop("select_at", None)  # = report_at
    if "tune_reference" in options:  # what a selecting method kept
        options["tune_reference"] = report.reference
    if report.calibration is None and "tune_epochs" in options:  # no output calibration ran
        options |= {"tune_epochs": 0, "tune_lr": None}
    return options


def _conversion_summary(
    options: dict, ann_acc: float, result: dict, convert_s: float, config: dict, out_dir: Path
) -> dict[str, Any]:
    """The ``summary.json`` record of a conversion (before the measurements)."""
    model = config.get("model", {})
    return {
        **options, "ann_accuracy": ann_acc, "accuracy_by_timestep": result["accuracy_by_timestep"],
        "loss_by_timestep": result["loss_by_timestep"], "test_samples": result["samples"],
        "convert_time_s": convert_s, "model": model.get("name"), "block": model.get("block"),
        "activation": model.get("activation"), "run_dir": str(out_dir), "note": OURS_NOTE,
    }  # fmt: skip


def _add_report_parts(summary: dict[str, Any], snn: nn.Module, source: str | None) -> None:
    """The output calibration and the tuning reference selection, when they ran."""
    report = snn.conversion_report  # type: ignore[attr-defined]
    if report.calibration is not None:
        summary["output_calibration"] = report.calibration.to_dict()
    if report.selection is not None:
        summary["reference_selection"] = {**report.selection.to_dict(), "source": source}


def write_converted(
    out_dir: Path, config: dict, snn: nn.Module, options: dict, summary: dict, max_t: int,
    report: str | None = None,
) -> None:  # fmt: skip
    """config.json (ANN data/train + converted model + conversion options), weights, the
    report (``report``, or the one-method report of ``summary``), summary.json last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model_cfg = dataclasses.replace(snn.config, timesteps=max_t)  # type: ignore[arg-type]
    stored = {k: v for k, v in config.items() if k in ("data", "train")}
    stored |= {"model": model_cfg.to_dict(), "conversion": options}
    ckpt.write_json(out_dir / ckpt.CONFIG_FILE, stored)
    ckpt.save_weights(snn, out_dir / ckpt.BEST_WEIGHTS, {"converted": "1"})
    text = report if report is not None else _report_markdown(summary, snn)
    ckpt.write_text(out_dir / REPORT_FILE, text)
    ckpt.write_json(out_dir / ckpt.SUMMARY_FILE, summary)  # last: the folder is finished


def selection_warning(summary: dict[str, Any]) -> str | None:
    """The one-line note of :func:`trails_note` for a conversion summary, or None."""
    return trails_note(summary.get("reference_selection", {}).get("trails", {}))


def format_accuracy_table(summary: dict[str, Any]) -> str:
    """``method  ANN  T=1 ... T=T`` as a compact fixed-width table: accuracy (percent) and,
    when measured, the firing rate, SOPs and energy estimate per image at each t (over the
    first t steps; the ANN column: its MACs and energy). The t's: ``report_at`` (folders made
    before it was recorded: the ``timesteps`` list) and the last one."""
    by_t = summary["accuracy_by_timestep"]
    reported = summary.get("report_at", summary.get("timesteps"))
    reported = reported if isinstance(reported, list) else []
    shown = [t for t in by_t if int(t) in reported or int(t) == len(by_t)]
    head = f"{'method':<8} {'ANN':>7} " + " ".join(f"{'T=' + t:>7}" for t in shown)
    row = f"{summary['method']:<8} {100 * summary['ann_accuracy']:>6.2f}% " + " ".join(
        f"{100 * by_t[t]:>6.2f}%" for t in shown
    )
    return "\n".join([head, row, *measurement_rows(summary, shown)])


def parse_timestep_list(text: str) -> list[int]:
    """``"1,2,4,8"`` -> [1, 2, 4, 8] (compare's --timesteps list)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--timesteps is {text!r}; expected a list like 1,2,4,8.") from None
    if not values:
        raise ConfigError("--timesteps is empty; expected a list like 1,2,4,8.")
    return values

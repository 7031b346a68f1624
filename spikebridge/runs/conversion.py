"""Conversion recipe: ``convert_run`` (ANN run folder -> converted SNN run folder), behind
``spikebridge convert`` (METHODS 2); ``analyze_run`` (the per-layer error report) lives in
:mod:`spikebridge.runs.analyze`.

``maxnorm`` (Diehl et al. 2015), ``robust`` (Rueckauer et al. 2017) and ``qcfs`` (Bu et al.
2022) are published baselines. ``ttrbr`` -- threshold tuning (METHODS 2.4), the error
decomposition (2.3) and the pre-add block (2.5) -- is **our design** built on the abstract
of the TTRBR paper (no code or full text was available).

Choices where the spec is silent:

- calibration images are ``N`` (default 1024) images of the ANN run's TRAINING split, drawn
  with a seeded permutation, normalized, never augmented;
- ``ttrbr`` tunes thresholds at ONE ``tune_timesteps`` (default: the smallest requested
  T >= 4, else the largest requested T) -- tuning at every T would multiply the cost;
  the same converted model is then simulated once at the largest T and its accuracy is
  reported at every t <= T (one causal pass, METHODS 3);
- ``ttrbr``'s thresholds are chosen per ANN (``select``, our design): one copy tuned
  towards the ANN, one towards its clip twin, and the untuned ``qcfs`` / ``robust``
  thresholds are scored at every requested T on up to 2000 held-out labelled images -- the
  ANN run's validation split when it has one (images its training never saw), else training
  images outside any calibration draw; never test images -- and the most accurate at the
  tuning T of the sets not significantly below the best untuned one at any requested T is
  kept (METHODS 2.4); a requested T where it still trails another candidate there is said
  in one line;
- the ANN's accuracy is re-measured on the same test images (not read from its summary).

A converted run folder holds ``config.json`` (the ANN run's data/train sections, the
converted ``model`` section with ``neuron="if"`` and a ``conversion`` section),
``model.safetensors`` (folded weights + thresholds), ``conversion.md`` and, written last,
``summary.json``; :func:`spikebridge.engine.load_run` reloads it. The ``--ann`` input must be
a finished ANN run folder; ``--out`` is locked while the conversion runs, and a conversion
that failed or was killed before ``summary.json`` is started again by the same command
(:mod:`spikebridge.engine.rundir`).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikebridge.analysis.report import measurement_rows
from spikebridge.config import DEFAULT_RUNS_DIR, build_section, check_count
from spikebridge.data import DeviceLoader, load_splits
from spikebridge.engine import checkpoint as ckpt
from spikebridge.engine import rundir
from spikebridge.engine.evaluate import evaluate
from spikebridge.engine.memory import check_simulation_fits
from spikebridge.errors import ConfigError
from spikebridge.methods.convert import (
    METHODS,
    TUNE_REFERENCES,
    convert,
    resolve_channelwise,
    selects_reference,
)
from spikebridge.methods.output_calibration import (
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DEFAULT_SCHEDULE,
    SCHEDULES,
)
from spikebridge.methods.reference_selection import selection_markdown, trails_note
from spikebridge.runs.measure import measure_run
from spikebridge.runs.setup import eval_batch, resolve_device

DEFAULT_CALIBRATION = 1024
DEFAULT_SELECTION = 2000  # held-out labelled images for tune_reference "select"
DEFAULT_TIMESTEPS = (1, 2, 4, 8, 16, 32)
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
    data = build_section("data", config.get("data", {}))
    seed = int(config.get("train", {}).get("seed", 0))
    subset = None if whole_test_set else data.subset
    splits = load_splits(data.dataset, data_dir or data.data_dir, subset, data.val_size, seed)
    return splits, data, seed


def calibration_images(
    splits: Any, n: int, seed: int, device: torch.device, batch_size: int = 256
) -> list[torch.Tensor]:
    """``n`` normalized training images as batches ``[b, C, H, W]`` (seeded draw, no augment)."""
    if n < 1:
        raise ConfigError(f"calibration size is {n}; expected an integer >= 1.")
    gen = torch.Generator().manual_seed(seed + CALIBRATION_STREAM)
    idx = torch.randperm(len(splits.train_y), generator=gen)[:n].sort().values
    loader = DeviceLoader(
        splits.train_x[idx], splits.train_y[idx], batch_size, splits.info, device,
        shuffle=False, augment=False, seed=seed,
    )  # fmt: skip
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
    if len(splits.val_y) > 0:
        x, y, source = splits.val_x[:n], splits.val_y[:n], "validation split"
    else:
        total = len(splits.train_y)
        if calibration_size + n > total:
            raise ConfigError(
                f"{calibration_size} calibration + {n} selection images exceed the {total} "
                "training images; lower --selection-size or --calibration-size"
            )
        gen = torch.Generator().manual_seed(seed + CALIBRATION_STREAM)
        idx = torch.randperm(total, generator=gen)[total - n :].sort().values
        x, y = splits.train_x[idx], splits.train_y[idx]
        source = "training images outside the calibration draw"
    loader = DeviceLoader(
        x, y, batch_size, splits.info, device, shuffle=False, augment=False, seed=seed
    )  # fmt: skip
    return list(loader), source


def eval_loader(  # type: ignore[no-untyped-def]
    splits: Any, data: Any, seed: int, device: torch.device, batch_size: int | None,
    max_images: int | None = None,
):  # fmt: skip
    """A plain loader over the run's test split (its first ``max_images`` images, if given)."""
    size = eval_batch(data, batch_size)
    n = len(splits.test_y) if max_images is None else max_images
    return DeviceLoader(
        splits.test_x[:n], splits.test_y[:n], size, splits.info, device,
        shuffle=False, augment=False, seed=seed,
    )  # fmt: skip


# ----------------------------------------------------------------------------- convert


def default_tune_timesteps(timesteps: Sequence[int]) -> int:
    """The smallest requested T >= 4, else the largest requested T."""
    at_least_4 = [t for t in timesteps if t >= 4]
    return min(at_least_4) if at_least_4 else max(timesteps)


def check_request(method: str, timesteps: Sequence[int]) -> list[int]:
    """The sorted distinct T asked for; ConfigError for an unknown method or a T < 1."""
    if method not in METHODS:
        raise ConfigError(f"unknown conversion method {method!r}; expected one of {METHODS}.")
    wanted = sorted({int(t) for t in timesteps})
    if not wanted or wanted[0] < 1:
        raise ConfigError(f"timesteps are {list(timesteps)}; expected integers >= 1.")
    return wanted


def _out_dir(out: str | Path | None, ann_run: Path, method: str) -> Path:
    """``--out`` or ``runs/<ann>-<method>-<time>``; refused early when it is a file or holds
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


def _calibration_epochs(snn: nn.Module) -> int:
    calibration = snn.conversion_report.calibration  # type: ignore[attr-defined]
    return 0 if calibration is None else calibration.epochs


def convert_run(
    ann_run: str | Path,
    method: str,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    calibration_size: int = DEFAULT_CALIBRATION,
    percentile: float = 99.99,
    channelwise: bool | None = None,
    tune_phi: bool = False,
    tune_timesteps: int | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    data_dir: str | None = None,
    max_test_images: int | None = None,
    tune_guard: bool = True,
    log: Callable[[str], None] = print,
    tune_bias: bool = True,
    compensate_stream: bool = False,
    tune_reference: str = "select",
    tune_epochs: int | None = None,
    tune_lr: float = DEFAULT_LR,
    tune_schedule: str = DEFAULT_SCHEDULE,
    selection_size: int = DEFAULT_SELECTION,
) -> dict[str, Any]:
    """Convert an ANN run folder's model with ``method``; write and return the summary.

    Simulates once at ``max(timesteps)``; ``summary["accuracy_by_timestep"]`` holds every
    ``t <= max(timesteps)`` (fractions). ``ttrbr`` tunes at ``tune_timesteps`` (see the
    module docstring). ``max_test_images``: evaluate on the first N test images only
    (for CPU budgets; the ANN is evaluated on the same images). Bad method / timesteps ->
    ConfigError; an ``ann_run`` that is not a finished ANN run folder -> RunError.
    """
    wanted = check_request(method, timesteps)
    for option, value in (("--test-images", max_test_images), ("--batch-size", batch_size),
                          ("--calibration-size", calibration_size),
                          ("--selection-size", selection_size)):  # fmt: skip
        check_count(option, value)
    channelwise = resolve_channelwise(method, channelwise)
    tune_t = int(tune_timesteps or default_tune_timesteps(wanted))
    ann_run = Path(ann_run)
    dev = resolve_device(device)
    ann, config = rundir.load_run(ann_run, dev, kind="ann")  # a finished ANN run, or RunError
    out_dir = _out_dir(out, ann_run, method)
    splits, data, seed = run_data(config, data_dir)
    snn_cfg = dataclasses.replace(ann.config, neuron="if")  # the network simulated below
    size, t_max = eval_batch(data, batch_size), max(wanted)
    check_simulation_fits(snn_cfg, splits.info.image_size, size, t_max, dev.type)
    calib = calibration_images(splits, calibration_size, seed, dev) if method != "qcfs" else None
    held_out, source = None, None
    if method == "ttrbr" and selects_reference(tune_reference):
        held_out, source = selection_images(splits, selection_size, seed, dev, calibration_size)
    claim = rundir.claim_run_dir(out_dir, resume=False, resumable=False, leftovers=(REPORT_FILE,))
    with claim:  # --out locked until summary.json, written last, makes the folder finished
        start = time.perf_counter()
        snn = convert(
            ann, method, calib, tune_t, percentile, 0.5, channelwise, tune_phi,
            tune_guard=tune_guard, tune_bias=tune_bias and method == "ttrbr",
            compensate_stream=compensate_stream and method == "ttrbr",
            tune_reference=tune_reference, tune_epochs=tune_epochs if method == "ttrbr" else 0,
            tune_lr=tune_lr, tune_schedule=tune_schedule, selection_data=held_out,
            selection_timesteps=wanted,
        )  # fmt: skip
        convert_s = time.perf_counter() - start
        loader = eval_loader(splits, data, seed, dev, batch_size, max_test_images)
        ann_acc = evaluate(ann, loader)["accuracy"]
        result = evaluate(snn, loader, timesteps=max(wanted))
        epochs = _calibration_epochs(snn)
        options = {
            "ann_run": str(ann_run), "method": method, "timesteps": wanted,
            "tune_timesteps": tune_t if method == "ttrbr" else None,
            "calibration_size": calibration_size if calib is not None else 0,
            "percentile": percentile, "channelwise": channelwise, "tune_phi": tune_phi,
            "tune_guard": tune_guard if method == "ttrbr" else None,
            "tune_bias": tune_bias if method == "ttrbr" else None,
            "compensate_stream": compensate_stream if method == "ttrbr" else None,
            "tune_reference": snn.conversion_report.reference if method == "ttrbr" else None,
            "tune_epochs": epochs, "tune_lr": tune_lr if epochs else None,
            "tune_schedule": tune_schedule if epochs else None,
        }  # fmt: skip
        summary = _conversion_summary(options, ann_acc, result, convert_s, config, out_dir)
        _add_report_parts(summary, snn, source)
        # firing, SOPs and energy at every t from one pass at the largest T; the top-level
        # figures at the deployment T (measured_timesteps) (METHODS 3)
        sim_t = max(*wanted, tune_t)
        summary.update(measure_run(snn, loader, timesteps=sim_t, headline_t=tune_t))
        _write_converted(out_dir, config, snn, options, summary, max(wanted))
    log(format_accuracy_table(summary))
    if trails := selection_warning(summary):
        log(trails)
    return summary


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


def _write_converted(
    out_dir: Path, config: dict, snn: nn.Module, options: dict, summary: dict, max_t: int
) -> None:
    """config.json (ANN data/train + converted model + conversion options), weights, reports."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model_cfg = dataclasses.replace(snn.config, timesteps=max_t)  # type: ignore[arg-type]
    stored = {k: v for k, v in config.items() if k in ("data", "train")}
    stored |= {"model": model_cfg.to_dict(), "conversion": options}
    ckpt.write_json(out_dir / ckpt.CONFIG_FILE, stored)
    ckpt.save_weights(snn, out_dir / ckpt.BEST_WEIGHTS, {"converted": "1"})
    ckpt.write_text(out_dir / REPORT_FILE, _report_markdown(summary, snn))
    ckpt.write_json(out_dir / ckpt.SUMMARY_FILE, summary)  # last: the folder is finished


def selection_warning(summary: dict[str, Any]) -> str | None:
    """The one-line note of :func:`trails_note` for a conversion summary, or None."""
    return trails_note(summary.get("reference_selection", {}).get("trails", {}))


def format_accuracy_table(summary: dict[str, Any]) -> str:
    """``method  ANN  T=1 ... T=T`` as a compact fixed-width table: accuracy (percent) and,
    when measured, the firing rate, SOPs and energy estimate per image at each t (over the
    first t steps; the ANN column: its MACs and energy)."""
    by_t = summary["accuracy_by_timestep"]
    shown = [t for t in by_t if int(t) in summary.get("timesteps", []) or int(t) == len(by_t)]
    head = f"{'method':<8} {'ANN':>7} " + " ".join(f"{'T=' + t:>7}" for t in shown)
    row = f"{summary['method']:<8} {100 * summary['ann_accuracy']:>6.2f}% " + " ".join(
        f"{100 * by_t[t]:>6.2f}%" for t in shown
    )
    return "\n".join([head, row, *measurement_rows(summary, shown)])


# ----------------------------------------------------------------------------- CLI


def parse_timestep_list(text: str) -> list[int]:
    """``"1,2,4,8"`` -> [1, 2, 4, 8] (a --timesteps option of convert / compare)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--timesteps is {text!r}; expected a list like 1,2,4,8.") from None
    if not values:
        raise ConfigError("--timesteps is empty; expected a list like 1,2,4,8.")
    return values


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``spikebridge convert``."""
    parser.add_argument("--ann", required=True, metavar="RUN", help="trained ANN run folder")
    parser.add_argument("--method", required=True, help="maxnorm (Diehl 2015), robust "
                        "(Rueckauer 2017), qcfs (Bu 2022, needs a clip/qcfs ANN) or ttrbr "
                        "(OUR design on the TTRBR abstract: threshold + bias tuning, then output "
                        "calibration, METHODS 2.4)")  # fmt: skip
    parser.add_argument("--timesteps", default="1,2,4,8,16,32",
                        help="report these T (one simulation at the largest; every t <= max "
                        "is in summary.json) (default: 1,2,4,8,16,32)")  # fmt: skip
    parser.add_argument("--calibration-size", type=int, default=DEFAULT_CALIBRATION,
                        help="training images for statistics / tuning (default: 1024)")  # fmt: skip
    parser.add_argument("--percentile", type=float, default=99.99,
                        help="robust-norm percentile (robust; ReLU sites under ttrbr)")  # fmt: skip
    parser.add_argument("--channelwise", action=argparse.BooleanOptionalAction, default=None,
                        help="per-channel thresholds (default: on for ttrbr, off for maxnorm "
                        "and robust; qcfs has one λ per layer)")  # fmt: skip
    parser.add_argument("--tune-phi", action="store_true",
                        help="ttrbr (ours): also tune the initial potential φ")  # fmt: skip
    parser.add_argument("--tune-timesteps", type=int,
                        help="ttrbr (ours): T the thresholds are tuned at (default: the "
                        "smallest requested T >= 4, else the largest)")  # fmt: skip
    parser.add_argument("--no-tune-guard", dest="tune_guard", action="store_false",
                        help="ttrbr (ours): keep every tuned threshold even where a residual "
                        "block's output error grows (default: such a block is put back)")  # fmt: skip
    parser.add_argument("--tune-bias", action=argparse.BooleanOptionalAction, default=True,
                        help="ttrbr (ours): also try shifting each site's input current by the "
                        "mean ANN-SNN current gap per channel, folded into the conv bias "
                        "(default: on)")  # fmt: skip
    parser.add_argument("--compensate-stream", action=argparse.BooleanOptionalAction,
                        default=False,
                        help="ttrbr (ours), pre-add ResNets: each block's last site also "
                        "corrects the error the residual stream carries (default: off)")  # fmt: skip
    parser.add_argument("--tune-reference", choices=TUNE_REFERENCES, default="select",
                        help="ttrbr (ours): the network the sites aim at: the ANN as trained, "
                        "its clip twin (QCFS sites as clip(z, 0, λ), what IF rates approach as T "
                        "grows), auto (clip when T exceeds the QCFS levels) or select (tune "
                        "towards both, score them and the untuned qcfs / robust thresholds at "
                        "every --timesteps T on held-out labelled images: the ANN run's "
                        "validation split, else training images outside the calibration draw; "
                        "keep the most accurate at the tuning T of those not significantly "
                        "below the best untuned one at any T; twice the tuning time) "
                        "(default: select)")  # fmt: skip
    parser.add_argument("--selection-size", type=int, default=DEFAULT_SELECTION,
                        help="ttrbr with --tune-reference select: at most this many held-out "
                        f"images decide (default: {DEFAULT_SELECTION})")  # fmt: skip
    parser.add_argument("--tune-epochs", type=int, default=None,
                        help="ttrbr (ours): after the per-site search, fit every site's "
                        "per-channel threshold scale and input shift to the ANN's outputs by "
                        "surrogate gradients for this many epochs; 0 = off (default: "
                        f"{DEFAULT_EPOCHS})")  # fmt: skip
    parser.add_argument("--tune-lr", type=float, default=DEFAULT_LR,
                        help=f"ttrbr (ours): Adam learning rate of that fit (default: {DEFAULT_LR})")  # fmt: skip
    parser.add_argument("--tune-schedule", choices=SCHEDULES, default=DEFAULT_SCHEDULE,
                        help="ttrbr (ours): that fit's rate schedule, cosine decay to 0 or "
                        f"constant (default: {DEFAULT_SCHEDULE})")  # fmt: skip
    parser.add_argument("--out", help="converted run folder (default: runs/<ann>-<method>-<time>)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size")
    parser.add_argument("--test-images", type=int,
                        help="evaluate on the first N test images only (default: all)")  # fmt: skip


def run_convert(args: argparse.Namespace) -> int:
    """``spikebridge convert``: convert, evaluate at every t, write the run folder."""
    summary = convert_run(
        args.ann, args.method, parse_timestep_list(args.timesteps), args.calibration_size,
        args.percentile, args.channelwise, args.tune_phi, args.tune_timesteps, args.out,
        args.device, args.batch_size, max_test_images=args.test_images,
        tune_guard=args.tune_guard, tune_bias=args.tune_bias,
        compensate_stream=args.compensate_stream, tune_reference=args.tune_reference,
        tune_epochs=args.tune_epochs, tune_lr=args.tune_lr, tune_schedule=args.tune_schedule,
        selection_size=args.selection_size,
    )  # fmt: skip
    print(f"run folder: {summary['run_dir']}")
    return 0

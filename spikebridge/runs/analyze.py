"""``analyze_run``: the per-layer conversion error decomposition (METHODS 2.3, our design) of
a converted run, or of an ANN run converted in memory, behind ``spikebridge analyze``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spikebridge.analysis.conversion_errors import plot_errors
from spikebridge.config import check_count
from spikebridge.conversion import convert, decompose_errors, get_method, method_config
from spikebridge.engine import checkpoint as ckpt
from spikebridge.engine import rundir
from spikebridge.errors import ConfigError
from spikebridge.runs.conversion import OURS_NOTE, calibration_images, run_data
from spikebridge.runs.conversion_config import DEFAULT_CALIBRATION
from spikebridge.runs.setup import resolve_device

# What analyze writes into a folder of its own (report.md: what `spikebridge report` adds).
ANALYSIS_OUTPUTS = ("errors.md", "errors.csv", "errors.png", "summary.json", "report.md")


def analyze_run(
    run_dir: str | Path,
    timesteps: int | None = None,
    images: int = 256,
    method: str | None = None,
    calibration_size: int = DEFAULT_CALIBRATION,
    out: str | Path | None = None,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Per-layer error decomposition (METHODS 2.3, our design) -> errors.md/.csv/.png.

    ``run_dir`` is a finished converted run folder, or a finished ANN run folder with
    ``method`` (then it is converted in memory, at ``timesteps``); RunError otherwise. An
    output folder of its own (not a run's) also gets the result as ``summary.json``, written
    last, so ``spikebridge report`` reads it like any finished folder. ``images`` training
    images (seeded draw, not the calibration draw's order) are simulated for ``timesteps``
    steps (default: the tuning T of a ttrbr run, else 4).
    """
    check_count("--calibration-images", images)
    check_count("--calibration-size", calibration_size)
    check_count("--timesteps", timesteps)
    dev = resolve_device(device)
    model, config = rundir.load_run(run_dir, dev)
    conv = config.get("conversion")
    if conv is None and method is None:
        raise ConfigError(f"{run_dir} is an ANN run; pass --method to convert it for analysis.")
    ann_dir = Path(conv["ann_run"]) if conv else Path(run_dir)
    ann, ann_config = (rundir.load_run(ann_dir, dev)) if conv else (model, config)
    T = int(timesteps or (conv or {}).get("tune_timesteps") or 4)
    if conv is None:
        method_cfg = method_config(str(method), timesteps=T)  # ConfigError: unknown name or T
    out_dir = Path(out) if out else Path(run_dir)
    if conv is None and out is None:
        out_dir = Path(run_dir) / f"analysis-{method}-t{T}"
    if rundir.run_status(out_dir) == rundir.FINISHED:  # the converted run itself: ours
        rundir.check_out_path(out_dir)
    else:  # a folder of its own: new, empty or an earlier analysis, never a foreign one
        rundir.prepare_output_folder(out_dir, ANALYSIS_OUTPUTS)
    splits, _, seed = run_data(ann_config)
    if conv is None:
        calib = None
        if get_method(str(method)).needs_calibration:
            calib = calibration_images(splits, calibration_size, seed, dev)
        model, _ = convert(ann, method_cfg, calib)
    table = decompose_errors(ann, model, calibration_images(splits, images, seed + 1, dev), T)
    text = f"# Per-layer conversion error, T = {T}, {images} images\n\n{OURS_NOTE}.\n\n"
    ckpt.write_text(out_dir / "errors.md", text + table.to_markdown() + "\n")
    table.to_csv(out_dir / "errors.csv")
    plot_errors(table, out_dir / "errors.png")
    rows = [dataclasses.asdict(r) for r in table.rows]
    result = {"out_dir": str(out_dir), "run_dir": str(run_dir), "method": method,
              "timesteps": T, "images": images, "rows": rows}  # fmt: skip
    if not (out_dir / ckpt.SUMMARY_FILE).is_file():  # its own folder: finished, for `report`
        ckpt.write_json(out_dir / ckpt.SUMMARY_FILE, result)
    log(table.to_markdown())
    log(f"wrote {out_dir / 'errors.md'}, errors.csv, errors.png")
    return result

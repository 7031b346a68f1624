"""``spikebridge analyze RUN``: the per-layer conversion error decomposition (METHODS 2.3,
our design) of a converted run, or of an ANN run converted in memory (the work is
:func:`spikebridge.runs.analyze.analyze_run`)."""

from __future__ import annotations

import argparse

from spikebridge.config_cli import add_config_arguments, config_from_args, deprecated_alias
from spikebridge.runs.analyze import analyze_run

HELP = "per-layer conversion error decomposition of a converted run (METHODS 2.3, ours)"
SECTIONS = ("analyze",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="converted run folder, or an ANN run "
                        "with --method")  # fmt: skip
    add_config_arguments(parser, SECTIONS, presets=False)
    deprecated_alias(parser, "--images", "--calibration-images", metavar="N")


def run(args: argparse.Namespace) -> int:
    """Write errors.md / .csv / .png (and summary.json in a folder of its own)."""
    cfg = config_from_args(args, SECTIONS).analyze
    calibration = {} if cfg.calibration_size is None else {"calibration_size": cfg.calibration_size}
    analyze_run(
        args.run_dir, cfg.timesteps, cfg.calibration_images, cfg.method, out=cfg.out,
        device=cfg.device, **calibration,
    )  # fmt: skip
    return 0

"""``spikebridge experiment FILE``: every arm of an experiment file; results.md and plots in
``--out`` (the work is :func:`spikebridge.experiments.run_experiment`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from spikebridge.config import DEFAULT_RUNS_DIR
from spikebridge.config_cli import add_config_arguments, config_from_args
from spikebridge.engine.train import print_flush
from spikebridge.experiments import parse_overrides, run_experiment

HELP = "run an experiment file (arms, results.md, plots): FILE [--profile cpu|full]"
SECTIONS = ("experiment",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="experiment YAML (e.g. experiments/*.yaml)")
    add_config_arguments(parser, SECTIONS, presets=False)


def run(args: argparse.Namespace) -> int:
    """Run every arm; finished arms are reused when the command is run again."""
    cfg = config_from_args(args, SECTIONS).experiment
    out = (
        cfg.out or Path(DEFAULT_RUNS_DIR) / "experiments" / f"{Path(args.file).stem}-{cfg.profile}"
    )
    overrides = parse_overrides(list(cfg.overrides) or None)
    result = run_experiment(args.file, cfg.profile, out, log=print_flush, overrides=overrides)
    print(f"results: {result.get('results_md', out)}")
    return 0

"""``spikebridge demo``: teacher ANN, direct SNN, IDSNN student and conversion on
Fashion-MNIST, one table (the work is :func:`spikebridge.demo.run_demo`)."""

from __future__ import annotations

import argparse
import sys

from spikebridge.config_cli import add_config_arguments, config_from_args
from spikebridge.demo import run_demo

HELP = "teacher ANN, direct SNN, IDSNN student and conversion on Fashion-MNIST, one table"
SECTIONS = ("demo",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, SECTIONS, presets=False)


def run(args: argparse.Namespace) -> int:
    """Run (or reuse) every step; an interruption says how to continue."""
    config = config_from_args(args, SECTIONS).demo
    try:
        run_demo(config)
    except KeyboardInterrupt:
        print("interrupted; run the same demo command again: finished steps are reused and "
              "interrupted ones resume", file=sys.stderr)  # fmt: skip
        return 130
    return 0

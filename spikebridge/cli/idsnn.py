"""``spikebridge idsnn``: the IDSNN pipeline in one folder: train the ANN teacher, init the
student, distill (METHODS 1; the work is :func:`spikebridge.runs.idsnn.idsnn_run`)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from spikebridge.cli.train import add_training_arguments, check_threshold_names
from spikebridge.config_cli import config_from_args
from spikebridge.runs.idsnn import IDSNN_SECTIONS, STUDENT_DEFAULTS, idsnn_run
from spikebridge.runs.train import format_percent

HELP = "IDSNN pipeline: train the ANN teacher, init the student, distill (METHODS 1)"
SECTIONS = IDSNN_SECTIONS


def format_comparison(result: Mapping[str, Any]) -> str:
    """A short teacher vs student table of ``idsnn_run``'s result."""
    rows = [f"IDSNN pipeline in {result['out_dir']}", "| run | model | T | test (val-selected) "
            "| final test | best test over epochs (paper comparison) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for role in ("teacher", "student"):
        s = result[role]
        if s:
            rows.append(
                f"| {role} | {s.get('model')} | {s.get('timesteps')} | "
                f"{format_percent(s.get('test_accuracy'))} | {format_percent(s.get('final_test_accuracy'))} "
                f"| {format_percent(s.get('best_test_accuracy'))} |"
            )
    return "\n".join(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, SECTIONS)


def run(args: argparse.Namespace) -> int:
    """``spikebridge idsnn ...``: train the teacher, init and distill the student."""
    config = config_from_args(args, SECTIONS, base=STUDENT_DEFAULTS)
    check_threshold_names(args, config)
    print(format_comparison(idsnn_run(config)))
    return 0

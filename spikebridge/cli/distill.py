"""``spikebridge distill``: init a spiking student from a teacher run and train it with KD
(METHODS 1.2-1.4; the work is :func:`spikebridge.runs.idsnn.distill_run`)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from spikebridge.cli.train import add_training_arguments, training_config
from spikebridge.runs.idsnn import DISTILL_SECTIONS, STUDENT_DEFAULTS, distill_run
from spikebridge.runs.train import format_percent, format_summary

HELP = "IDSNN: init a spiking student from a teacher run and train it with KD (METHODS 1.2-1.4)"
SECTIONS = DISTILL_SECTIONS


def format_distill(summary: Mapping[str, Any]) -> str:
    """``train``'s headline lines, then the arm and the teacher's accuracy."""
    extra = (
        f"arm: {summary['arm']} (init {summary['init']}, KD weight {summary['kd_weight']}); "
        f"teacher test accuracy: {format_percent(summary.get('teacher_accuracy'))}"
    )
    return format_summary(dict(summary)) + "\n" + extra


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, SECTIONS)


def run(args: argparse.Namespace) -> int:
    """``spikebridge distill --teacher RUN ...``: a resumed run starts from its stored config."""
    config = training_config(args, SECTIONS, base=STUDENT_DEFAULTS)
    print(format_distill(distill_run(config)))
    return 0

"""``spikebridge report RUN``: RUN/report.md with its figures (thin CLI glue: parse, call,
print; the work is :func:`spikebridge.analysis.report.write_report`)."""

from __future__ import annotations

import argparse

from spikebridge.config_cli import add_config_arguments, config_from_args

HELP = "write RUN/report.md with figures (curves, accuracy vs t, firing, SOPs)"
SECTIONS = ("report",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="run folder (train, eval or convert)")
    add_config_arguments(parser, SECTIONS, presets=False)


def run(args: argparse.Namespace) -> int:
    """``spikebridge report RUN``: write RUN/report.md and its PNG figures."""
    from spikebridge.analysis.report import read_run_files, write_report  # matplotlib: lazy

    config_from_args(args, SECTIONS)  # no settings yet: a --config file's keys are refused
    path = write_report(args.run_dir)
    figures = sorted(p.name for p in path.parent.glob("*.png"))
    print(f"wrote {path} ({len(figures)} figure(s): {', '.join(figures) or 'none'})")
    for name, why in read_run_files(args.run_dir).skipped.items():  # as the report says
        print(f"note: {name} was left out of the report ({why}).")
    return 0

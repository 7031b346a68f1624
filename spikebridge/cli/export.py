"""``spikebridge export RUN``: a spiking run's model as a file (thin CLI glue: the work is
:func:`spikebridge.runs.export.export_run`; an ANN run is refused, exit 2)."""

from __future__ import annotations

import argparse

from spikebridge.config_cli import add_config_arguments, config_from_args

HELP = "export a spiking run's model (--format nir)"
SECTIONS = ("export",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="spiking run folder (LIF or converted IF)")
    add_config_arguments(parser, SECTIONS, presets=False)


def run(args: argparse.Namespace) -> int:
    """``spikebridge export RUN --format nir -o model.nir``."""
    from spikebridge.runs.export import export_run

    cfg = config_from_args(args, SECTIONS).export
    path = export_run(args.run_dir, cfg.format, cfg.output, target=cfg.nir_target)
    print(f"wrote {path}")
    return 0

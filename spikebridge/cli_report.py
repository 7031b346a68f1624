"""``spikebridge report`` and ``spikebridge export``: thin CLI glue (parse, call, print).

The work is done by :func:`spikebridge.analysis.report.write_report` and
:func:`spikebridge.runs.export.export_run`; bad input raises a SpikebridgeError, which
``spikebridge.cli.main`` turns into exit code 2.
"""

from __future__ import annotations

import argparse

from spikebridge.runs.export import EXPORT_FORMATS


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="run folder (train, eval or convert)")


def run_report(args: argparse.Namespace) -> int:
    """``spikebridge report RUN``: write RUN/report.md and its PNG figures."""
    from spikebridge.analysis.report import read_run_files, write_report  # matplotlib: lazy

    path = write_report(args.run_dir)
    figures = sorted(p.name for p in path.parent.glob("*.png"))
    print(f"wrote {path} ({len(figures)} figure(s): {', '.join(figures) or 'none'})")
    for name, why in read_run_files(args.run_dir).skipped.items():  # as the report says
        print(f"note: {name} was left out of the report ({why}).")
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="spiking run folder (LIF or converted IF)")
    parser.add_argument(
        "--format", default="nir", help=f"output format: {', '.join(EXPORT_FORMATS)} (default nir)"
    )
    parser.add_argument("-o", "--output", help="output file (default: RUN/model.<format>)")
    parser.add_argument(
        "--nir-target",
        choices=("portable", "compact"),
        default="portable",
        help="NIR graph form: portable (SpikingJelly 2.0 and snnTorch 1.0 import it as "
        "shipped; default) or compact (one node per neuron layer, extras in node metadata)",
    )


def run_export(args: argparse.Namespace) -> int:
    """``spikebridge export RUN --format nir -o model.nir``: ANN runs are refused (exit 2)."""
    from spikebridge.runs.export import export_run

    path = export_run(args.run_dir, args.format, args.output, target=args.nir_target)
    print(f"wrote {path}")
    return 0

"""``spikebridge compare A B [B ...]``: two or more runs on the same test images, paired
statistics (the work is :func:`spikebridge.runs.compare.compare_against`)."""

from __future__ import annotations

import argparse

from spikebridge.config_cli import add_config_arguments, config_from_args, deprecated_alias
from spikebridge.engine import checkpoint as ckpt
from spikebridge.engine import rundir
from spikebridge.runs.compare import compare_against

HELP = (
    "two runs on the same test images: accuracy difference per t with a 95-percent interval "
    "and an exact McNemar test"
)
SECTIONS = ("compare",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", metavar="A", help="run folder (train, convert, distill)")
    parser.add_argument("runs_b", metavar="B", nargs="+",
                        help="run folder(s) scored on the same test split, each against A "
                        "(A is simulated once)")  # fmt: skip
    add_config_arguments(parser, SECTIONS, presets=False)
    deprecated_alias(parser, "--timesteps", "--report-at", metavar="T,T,...")


def run(args: argparse.Namespace) -> int:
    """Print the paired tables (and write --json: one object for one B, a list of them for
    several)."""
    cfg = config_from_args(args, SECTIONS).compare
    if cfg.json:
        rundir.check_output_file(cfg.json, "--json", "compare.json")  # before the simulation
    results = compare_against(
        args.run_a, args.runs_b, cfg.report_at, cfg.test_images, cfg.device, cfg.batch_size,
        cfg.data_dir, cfg.whole_test_set,
    )  # fmt: skip
    print(f"{results[0]['test_images']} test images, paired (same images for A and B)")
    print("\n\n".join(r["text"] for r in results))
    if cfg.json:
        rows = [{k: v for k, v in r.items() if k != "text"} for r in results]
        ckpt.write_json(cfg.json, rows[0] if len(rows) == 1 else rows)
        print(f"wrote {cfg.json}")
    return 0

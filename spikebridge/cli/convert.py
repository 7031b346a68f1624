"""``spikebridge convert RUN --method M``: an ANN run converted to an IF spiking network,
accuracy at every t (the work is :func:`spikebridge.runs.conversion.convert_run`).

Every option is a field of the ``convert`` config section
(:mod:`~spikebridge.runs.conversion_config`), so ``--config FILE.yaml`` sets any of them
and the command line wins over the file. Old spellings keep working for now, each with a
one-line notice on stderr naming the new one: ``--ann RUN`` (pass RUN positionally),
``--timesteps 1,2,4`` as a list (``--report-at``), ``--tune-timesteps T`` (``--tune-at``),
``--tune-schedule cosine`` (the only schedule left). ``--tune-phi`` and a constant schedule
were removed (measured to do nothing, docs/CHANGELOG.md) and are refused in one sentence.
"""

from __future__ import annotations

import argparse
from typing import Any

from spikebridge.config_cli import add_config_arguments, config_from_args, warn_deprecated
from spikebridge.errors import ConfigError
from spikebridge.runs.conversion import convert_run
from spikebridge.runs.conversion_auto import auto_run
from spikebridge.runs.conversion_config import AUTO, SECTION

HELP = (
    "convert an ANN run to an IF spiking network (maxnorm, robust, qcfs, cos; ttrbr = our "
    "design on the TTRBR abstract; auto = the best of them per T) and report accuracy at every t"
)
SECTIONS = (SECTION,)

REMOVED_TUNE_PHI = (
    "--tune-phi was removed: tuning φ measured to do nothing (-0.09 points at T = 4, p = 0.77; "
    "docs/CHANGELOG.md); leave it out."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``spikebridge convert``: RUN, the ``convert`` section, the old spellings."""
    parser.add_argument("run", nargs="?", metavar="RUN", help="the trained ANN run folder")
    add_config_arguments(parser, SECTIONS, presets=False)
    old = parser.add_argument_group("deprecated spellings (each prints its replacement)")
    old.add_argument("--ann", metavar="RUN", help="= RUN, positionally")
    old.add_argument("--tune-timesteps", type=int, metavar="T", help="= --tune-at T")
    old.add_argument("--tune-schedule", metavar="cosine", help="removed: always cosine")
    old.add_argument("--tune-phi", action="store_true", help="removed (docs/CHANGELOG.md)")


def _given(args: argparse.Namespace, name: str) -> object:
    return getattr(args, f"{SECTION}.{name}", None)


def _set(args: argparse.Namespace, name: str, value: object) -> None:
    setattr(args, f"{SECTION}.{name}", value)


def _old_spellings(args: argparse.Namespace) -> None:
    """Map each old spelling onto the new option (with its notice); refuse removed ones."""
    if args.tune_phi:
        raise ConfigError(REMOVED_TUNE_PHI)
    if args.ann is not None:
        warn_deprecated("--ann", "pass the run positionally (spikebridge convert RUN --method M)")
        if args.run is not None and args.run != args.ann:
            raise ConfigError(f"RUN is given twice ({args.run!r} and --ann {args.ann!r}).")
        args.run = args.ann
    timesteps = _given(args, "timesteps")
    if isinstance(timesteps, str) and "," in timesteps:
        warn_deprecated(
            "--timesteps with a list", f"use --report-at {timesteps} (--timesteps is T)"
        )
        if _given(args, "report_at") is None:
            _set(args, "report_at", timesteps)
        delattr(args, f"{SECTION}.timesteps")
    if args.tune_timesteps is not None:
        warn_deprecated("--tune-timesteps", f"use --tune-at {args.tune_timesteps}")
        if _given(args, "tune_at") is None:
            _set(args, "tune_at", args.tune_timesteps)
    if args.tune_schedule is not None:
        if args.tune_schedule != "cosine":
            raise ConfigError(
                f"--tune-schedule {args.tune_schedule} was removed: a constant rate measured no "
                "better than the cosine decay (p >= 0.14, docs/CHANGELOG.md); leave it out."
            )
        warn_deprecated("--tune-schedule", "leave it out (the rate always decays by a cosine)")


def convert_args_config(args: argparse.Namespace) -> Any:
    """The ``convert`` section the parsed command line asks for: old spellings mapped (with
    their notices), RUN over ``--config``'s ``ann_run``, the file under the options."""
    _old_spellings(args)
    if args.run is not None:  # the command line wins over --config's ann_run
        _set(args, "ann_run", args.run)
    return getattr(config_from_args(args, SECTIONS), SECTION)


def run(args: argparse.Namespace) -> int:
    """``spikebridge convert``: convert, evaluate at every t, write the run folder."""
    config = convert_args_config(args)
    summary = (auto_run if config.method == AUTO else convert_run)(config)
    print(f"run folder: {summary['run_dir']}")
    return 0

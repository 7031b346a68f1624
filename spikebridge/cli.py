"""``spikebridge`` command line: thin subcommands (parse, build config, call a library function).

Adding a subcommand is one entry in :data:`SUBCOMMANDS`: a help line, a function that adds
its arguments to an ``argparse`` parser, and a function that runs it and returns an exit
code. Config-driven commands use :func:`spikebridge.config.add_config_arguments` with the
sections they need, so every field of those sections becomes an option automatically.

Exit codes: 0 ok; 2 bad input (:class:`SpikebridgeError`: ``error: <sentence>`` on stderr,
no traceback, nothing half-written); 130 interrupted by Ctrl-C, 143 by SIGTERM (what was not
committed is removed; the line says how to continue, when a run can be continued); 1, with
a traceback, is a bug.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from spikebridge import __version__
from spikebridge.analysis import measurement_at
from spikebridge.analysis.report import format_measurement
from spikebridge.cli_report import (
    add_export_arguments,
    add_report_arguments,
    run_export,
    run_report,
)
from spikebridge.config import (
    DEFAULT_RUNS_DIR,
    TRAIN_SECTIONS,
    add_config_arguments,
    config_from_args,
)
from spikebridge.demo import add_demo_arguments, run_demo_command
from spikebridge.engine.train import print_flush
from spikebridge.errors import ConfigError, SpikebridgeError, Terminated, resumable_run
from spikebridge.experiments import parse_overrides, run_experiment
from spikebridge.runs.analyze import add_analyze_arguments, run_analyze
from spikebridge.runs.compare import add_compare_arguments, run_compare
from spikebridge.runs.convert_cli import add_convert_arguments, run_convert
from spikebridge.runs.evaluate import eval_run
from spikebridge.runs.idsnn import (
    add_distill_arguments,
    add_idsnn_arguments,
    run_distill,
    run_idsnn,
)
from spikebridge.runs.setup import stored_config
from spikebridge.runs.train import format_percent, format_summary, train_run


class Subcommand(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# ----------------------------------------------------------------------------- train


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, TRAIN_SECTIONS)


def run_train(args: argparse.Namespace) -> int:
    """``spikebridge train``: resolve the config (a resumed run starts from its stored one)."""
    config = config_from_args(args, TRAIN_SECTIONS)
    if config.train.resume:
        config = config_from_args(args, TRAIN_SECTIONS, base=stored_config(config.train.out))
    summary = train_run(config)
    print(format_summary(summary))
    return 0


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="experiment YAML (e.g. experiments/*.yaml)")
    parser.add_argument("--profile", default="cpu",
                        help="profile of the file to run: cpu (2 cores) or full (GPU)")  # fmt: skip
    parser.add_argument("--out", help="output folder (default: runs/experiments/<file>-<profile>)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", dest="overrides",
                        help="override a setting of the file after the profile, value read as "
                        "YAML; dots reach nested keys (e.g. --set train.epochs=2 "
                        "--set models=[resnet20]); repeatable")  # fmt: skip


def run_experiment_command(args: argparse.Namespace) -> int:
    """``spikebridge experiment FILE``: run every arm; results.md + plots in ``--out``."""
    out = (
        args.out
        or Path(DEFAULT_RUNS_DIR) / "experiments" / f"{Path(args.file).stem}-{args.profile}"
    )
    overrides = parse_overrides(args.overrides)
    result = run_experiment(args.file, args.profile, out, log=print_flush, overrides=overrides)
    print(f"results: {result.get('results_md', out)}")
    return 0


# ----------------------------------------------------------------------------- eval


def parse_timesteps(text: str) -> int | list[int]:
    """``"4"`` -> 4 (every t <= 4); ``"1,2,4"`` -> [1, 2, 4]."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--timesteps is {text!r}; expected T or a list like 1,2,4.") from None
    if not values:
        raise ConfigError("--timesteps is empty; expected T or a list like 1,2,4.")
    return values[0] if "," not in text else values


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="run folder (written by spikebridge train)")
    parser.add_argument("--timesteps", help="SNN: a T (reports every t <= T) or a list 1,2,4 "
                        "(one pass at the largest); default: the model's T")  # fmt: skip
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="which split to evaluate (default: test)")  # fmt: skip
    parser.add_argument("--data-dir", help="dataset folder, if it moved (default: the run's)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size")


def format_eval(report: dict[str, Any]) -> str:
    """A compact table: one row per time-step t, every figure over the first t steps only
    (firing rate, SOPs and energy measured on ``measured_images`` images, METHODS 3)."""
    head = f"{report['run_dir']}: {report['split']} split, {report['samples']} images"
    spiking = any(measurement_at(report, int(t)) for t in report["accuracy_by_timestep"])
    rows = ["     t   accuracy      loss" + ("   firing rate   SOPs/image   energy (µJ)"
                                              if spiking else "")]  # fmt: skip
    for t, acc in report["accuracy_by_timestep"].items():
        row = f"{t:>6} {format_percent(acc):>10} {report['loss_by_timestep'][t]:>9.4f}"
        m = measurement_at(report, int(t)) if spiking else None
        if m is not None:
            row += (f" {_figure(m['firing_rate'], '.4f'):>13} "
                    f"{_figure(m['sops_per_image'], '.4g', 1e-6, ' M'):>12} "
                    f"{_figure(m['energy_estimate_uj'], '.4g'):>13}")  # fmt: skip
        rows.append(row)
    if spiking:
        rows.append(f"(firing rate, SOPs and energy at t: over the first t steps of "
                    f"{report.get('measured_images')} images; energy is an estimate)")  # fmt: skip
    return "\n".join([head, *rows])


def _figure(value: Any, spec: str, scale: float = 1.0, unit: str = "") -> str:
    return "n/a" if value is None else f"{value * scale:{spec}}{unit}"


def run_eval(args: argparse.Namespace) -> int:
    """``spikebridge eval RUN``: accuracy at the requested time-steps; writes eval.json."""
    timesteps = parse_timesteps(args.timesteps) if args.timesteps else None
    report = eval_run(
        args.run_dir, timesteps, args.split, args.data_dir, args.device, args.batch_size
    )
    print(format_eval(report))
    print(format_measurement(report))
    return 0


# ----------------------------------------------------------------------------- main

SUBCOMMANDS: dict[str, Subcommand] = {
    "train": Subcommand(
        "train an ANN, or an SNN with --neuron lif --timesteps T", add_train_arguments, run_train
    ),
    "eval": Subcommand(
        "evaluate a run folder's model at every t <= T", add_eval_arguments, run_eval
    ),
    "report": Subcommand(
        "write RUN/report.md with figures (curves, accuracy vs t, firing, SOPs)",
        add_report_arguments,
        run_report,
    ),
    "export": Subcommand(
        "export a spiking run's model (--format nir)", add_export_arguments, run_export
    ),
    "convert": Subcommand(
        "convert an ANN run to an IF spiking network (maxnorm, robust, qcfs; ttrbr = our "
        "design on the TTRBR abstract) and report accuracy at every t",
        add_convert_arguments,
        run_convert,
    ),
    "compare": Subcommand(
        "two runs on the same test images: accuracy difference per t with a 95-percent interval "
        "and an exact McNemar test",
        add_compare_arguments,
        run_compare,
    ),
    "analyze": Subcommand(
        "per-layer conversion error decomposition of a converted run (METHODS 2.3, ours)",
        add_analyze_arguments,
        run_analyze,
    ),
    "distill": Subcommand(
        "IDSNN: init a spiking student from a teacher run and train it with KD (METHODS 1.2-1.4)",
        add_distill_arguments,
        run_distill,
    ),
    "idsnn": Subcommand(
        "IDSNN pipeline: train the ANN teacher, init the student, distill (METHODS 1)",
        add_idsnn_arguments,
        run_idsnn,
    ),
    "experiment": Subcommand(
        "run an experiment file (arms, results.md, plots): FILE [--profile cpu|full]",
        add_experiment_arguments,
        run_experiment_command,
    ),
    "demo": Subcommand(
        "teacher ANN, direct SNN, IDSNN student and conversion on Fashion-MNIST, one table",
        add_demo_arguments,
        run_demo_command,
    ),
}


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (``error: ...``, exit 2) like every
    other bad input, instead of the usage block; ``--help`` still shows the usage."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see {self.prog} --help).", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per entry of :data:`SUBCOMMANDS`."""
    parser = OneLineParser(
        prog="spikebridge", description="Accurate low-latency spiking neural networks from ANNs."
    )
    parser.add_argument("--version", action="version", version=f"spikebridge {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(_run_command=command.run)
    return parser


# Commands whose interrupted run continues with --resume --out RUN, and commands that pick up
# where they stopped when started again (finished runs reused, the interrupted one resumed).
RESUME_COMMANDS = ("train", "distill")
RERUN_COMMANDS = ("idsnn", "experiment")


def interrupted_message(command: str, exc: KeyboardInterrupt) -> str:
    """The line printed after Ctrl-C or SIGTERM: how to continue, only when a run committed
    an epoch (the claim marked it) and the command can continue it."""
    what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
    run = resumable_run(exc)
    if run and command in RESUME_COMMANDS:
        return f"{what}; continue with: spikebridge {command} --resume --out {run}"
    if run and command in RERUN_COMMANDS:
        return f"{what}; run the same command again: finished runs are reused and {run} resumes"
    return f"{what}; nothing was left to resume."


@contextmanager
def sigterm_as_exception() -> Iterator[None]:
    """In the main thread, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt), so a run
    stops as after Ctrl-C and removes what it had not committed; forked children keep the
    default action."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def terminate(signum: int, _frame: Any) -> None:
        if os.getpid() != owner:  # a worker process forked from this one
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``spikebridge`` command line; returns the exit code: 0 ok, 2 bad input (one
    sentence on stderr), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM); a traceback
    (exit 1) is a bug."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, argparse usage errors
        return exc.code if isinstance(exc.code, int) else 2
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 prints results
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    try:
        with sigterm_as_exception():
            return args._run_command(args)
    except SpikebridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(interrupted_message(args.command, exc), file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130

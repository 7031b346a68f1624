"""``spikebridge`` command line: thin subcommands (parse, build config, call a library function).

Adding a subcommand is one module in this package with ``HELP`` (a help line),
``add_arguments(parser)`` and ``run(args) -> exit code``, listed in :data:`COMMAND_MODULES`.
Every command takes ``--config FILE.yaml``: its options come from typed config sections
(:func:`spikebridge.config_cli.add_config_arguments`), so the command line, a YAML file and
Python build the same objects, the command line winning over the file. Old spellings keep
working with a one-line notice (:func:`spikebridge.config_cli.deprecated_alias`).

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
from typing import Any, NamedTuple, NoReturn

from spikebridge import __version__
from spikebridge.cli import (
    analyze,
    compare,
    convert,
    demo,
    distill,
    eval,  # noqa: A004 - the module of `spikebridge eval`
    experiment,
    export,
    idsnn,
    report,
    train,
)
from spikebridge.errors import SpikebridgeError, Terminated, resumable_run


class Subcommand(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMAND_MODULES = (train, eval, report, export, convert, compare, analyze, distill, idsnn,
                   experiment, demo)  # fmt: skip
# name -> (help line, add_arguments(parser), run(args) -> exit code): one module each.
SUBCOMMANDS: dict[str, Subcommand] = {
    m.__name__.rsplit(".", 1)[1]: Subcommand(m.HELP, m.add_arguments, m.run)
    for m in COMMAND_MODULES
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

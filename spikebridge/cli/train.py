"""``spikebridge train``: an ANN, or an SNN with ``--neuron lif --timesteps T``.

Also what every training command (train, distill, idsnn) shares: the config options with
the model's two threshold names, and the config of a (resumed) run's command line.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from typing import Any

from spikebridge.config import TRAIN_SECTIONS, Config
from spikebridge.config_cli import add_config_arguments, config_from_args, warn_deprecated
from spikebridge.errors import ConfigError
from spikebridge.runs.setup import stored_config
from spikebridge.runs.train import format_summary, train_run

HELP = "train an ANN, or an SNN with --neuron lif --timesteps T"
SECTIONS = TRAIN_SECTIONS
LAMBDA_ACTIVATIONS = ("clip", "qcfs")  # ANN activations with a trainable clipping level λ
LAMBDA_FLAG = "_initial_lambda_given"


class _InitialLambda(argparse.Action):
    """``--initial-lambda``: the same model field as ``--threshold``, named for ANNs."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None):
        setattr(namespace, self.dest, values)
        setattr(namespace, LAMBDA_FLAG, True)


def add_training_arguments(parser: argparse.ArgumentParser, sections: Iterable[str]) -> None:
    """``--config``, ``--preset`` and one option per field of ``sections``; the model's
    ``threshold`` field has two names: ``--threshold`` (a spiking neuron's firing threshold)
    and ``--initial-lambda`` (the initial clipping level of a clip/qcfs ANN)."""
    add_config_arguments(parser, sections)
    model = next(g for g in parser._action_groups if g.title == "model options")
    model.add_argument(
        "--initial-lambda", dest="model.threshold", default=argparse.SUPPRESS, metavar="LAMBDA",
        action=_InitialLambda, help="clip/qcfs ANN: initial value of the trainable clipping "
        "level λ of every activation (METHODS 2.2); stored as the model's threshold "
        "(default: clip 8.0, qcfs 2.0)",
    )  # fmt: skip


def check_threshold_names(args: argparse.Namespace, config: Config) -> None:
    """``--threshold`` on a clip/qcfs ANN still sets λ, with a notice naming
    ``--initial-lambda``; ``--initial-lambda`` on any other model is refused."""
    if "model.threshold" not in vars(args):
        return
    ann_lambda = config.model.neuron is None and config.model.activation in LAMBDA_ACTIVATIONS
    if getattr(args, LAMBDA_FLAG, False) and not ann_lambda:
        raise ConfigError(
            "--initial-lambda sets the clipping level of a clip or qcfs ANN; this model has "
            "none (a spiking neuron's firing threshold is --threshold)."
        )
    if not getattr(args, LAMBDA_FLAG, False) and ann_lambda:
        warn_deprecated("--threshold for a clip/qcfs ANN", "use --initial-lambda")


def training_config(
    args: argparse.Namespace, sections: Iterable[str], base: Mapping[str, Any] | None = None
) -> Config:
    """The config of a training command's command line; a resumed run (``--resume``)
    starts from the run's stored config (``base`` when it has none)."""
    config = config_from_args(args, sections, base=base)
    if config.train.resume:
        stored = stored_config(config.train.out) or base
        config = config_from_args(args, sections, base=stored)
    check_threshold_names(args, config)
    return config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, SECTIONS)


def run(args: argparse.Namespace) -> int:
    """``spikebridge train``: resolve the config (a resumed run starts from its stored one)."""
    print(format_summary(train_run(training_config(args, SECTIONS))))
    return 0

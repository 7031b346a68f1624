"""Runs: library entry points that chain the engine's steps into one method's pipeline, each
writing a run folder (the layer between the engine and the CLI).

- :mod:`spikebridge.runs.train` — ``train_run`` (``spikebridge train``);
- :mod:`spikebridge.runs.evaluate` — ``eval_run``; :mod:`spikebridge.runs.export` —
  ``export_run``; :mod:`spikebridge.runs.measure` — ``measure_run`` (METHODS 3);
- :mod:`spikebridge.runs.setup` — the shared steps (device, data, model, run folder);
- :mod:`spikebridge.runs.idsnn` — ``distill_run`` (teacher -> init -> KD training of a
  student, METHODS 1.2-1.4) and ``idsnn_run`` (train the teacher too);
- :mod:`spikebridge.runs.conversion` — ``convert_run``; :mod:`spikebridge.runs.compare`,
  :mod:`spikebridge.runs.analyze` — comparing and analysing runs.

Importing this package registers the ``distill`` and ``idsnn`` config sections.
"""

from spikebridge.runs.evaluate import eval_run
from spikebridge.runs.export import export_run
from spikebridge.runs.idsnn import (
    DISTILL_SECTIONS,
    IDSNN_SECTIONS,
    DistillConfig,
    IdsnnConfig,
    arm_name,
    distill_run,
    idsnn_run,
)
from spikebridge.runs.measure import measure_run
from spikebridge.runs.setup import resolve_device, setup_data, setup_model
from spikebridge.runs.train import train_run

__all__ = [
    "DISTILL_SECTIONS", "IDSNN_SECTIONS", "DistillConfig", "IdsnnConfig", "arm_name",
    "distill_run", "eval_run", "export_run", "idsnn_run", "measure_run", "resolve_device",
    "setup_data", "setup_model", "train_run",
]  # fmt: skip

"""Runs: library entry points that chain the engine's steps into one method's pipeline.

- :mod:`spikebridge.runs.idsnn` — ``distill_run`` (teacher -> init -> KD training of a
  student, METHODS 1.2-1.4) and ``idsnn_run`` (train the teacher too).

Importing a runs module registers its config sections (``distill``, ``idsnn``).
"""

from spikebridge.runs.idsnn import (
    DISTILL_SECTIONS,
    IDSNN_SECTIONS,
    DistillConfig,
    IdsnnConfig,
    arm_name,
    distill_run,
    idsnn_run,
)

__all__ = [
    "DISTILL_SECTIONS", "IDSNN_SECTIONS", "DistillConfig", "IdsnnConfig", "arm_name",
    "distill_run", "idsnn_run",
]  # fmt: skip

"""Recipes: library entry points that chain the engine's steps into one method's pipeline.

- :mod:`spikebridge.recipes.idsnn` — ``distill_run`` (teacher -> init -> KD training of a
  student, METHODS 1.2-1.4) and ``idsnn_run`` (train the teacher too).

Importing a recipe module registers its config sections (``distill``, ``idsnn``).
"""

from spikebridge.recipes.idsnn import (
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

"""IDSNN (METHODS 1) as functions over models: :func:`init_from_teacher`, :func:`kd_loss`,
:class:`DistillationTask`. Conversion (METHODS 2) is :mod:`spikebridge.conversion`.
"""

from spikebridge.methods.distill import (
    DEFAULT_KD_WEIGHT,
    DEFAULT_TEMPERATURE,
    KD_FORMS,
    KD_ONLY_WEIGHT,
    DistillationTask,
    kd_loss,
)
from spikebridge.methods.init_from_teacher import (
    BLOCK_RULES,
    InitReport,
    InitRow,
    init_from_teacher,
    loop_interpolate,
    map_blocks,
)

__all__ = [
    "BLOCK_RULES", "DEFAULT_KD_WEIGHT", "DEFAULT_TEMPERATURE", "KD_FORMS", "KD_ONLY_WEIGHT",
    "DistillationTask", "InitReport", "InitRow", "init_from_teacher", "kd_loss",
    "loop_interpolate", "map_blocks",
]  # fmt: skip

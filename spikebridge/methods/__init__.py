"""What the papers contribute, as functions over models.

- IDSNN (METHODS 1): :func:`init_from_teacher`, :func:`kd_loss`, :class:`DistillationTask`.
- Conversion (METHODS 2): see :mod:`spikebridge.methods.convert` and neighbours; user CNNs
  (any fx-traceable model) go through :mod:`spikebridge.methods.graph`.
"""

from spikebridge.methods.convert import (
    METHODS,
    ConversionReport,
    build_converted,
    check_convertible,
    convert,
    fold_batchnorm,
)
from spikebridge.methods.distill import (
    DEFAULT_KD_WEIGHT,
    DEFAULT_TEMPERATURE,
    KD_FORMS,
    KD_ONLY_WEIGHT,
    DistillationTask,
    kd_loss,
)
from spikebridge.methods.error_analysis import ErrorTable, decompose_errors, quantized_rate
from spikebridge.methods.graph import SpikingGraph, build_spiking_graph, site_graph
from spikebridge.methods.init_from_teacher import (
    BLOCK_RULES,
    InitReport,
    InitRow,
    init_from_teacher,
    loop_interpolate,
    map_blocks,
)
from spikebridge.methods.threshold_tuning import TuningReport, tune_thresholds

__all__ = [
    "BLOCK_RULES", "DEFAULT_KD_WEIGHT", "DEFAULT_TEMPERATURE", "KD_FORMS", "KD_ONLY_WEIGHT",
    "DistillationTask", "InitReport", "InitRow", "init_from_teacher", "kd_loss",
    "loop_interpolate", "map_blocks", "METHODS", "ConversionReport", "build_converted",
    "convert", "fold_batchnorm", "check_convertible", "SpikingGraph", "build_spiking_graph",
    "site_graph", "ErrorTable", "decompose_errors", "quantized_rate",
    "TuningReport", "tune_thresholds",
]  # fmt: skip

"""ANN -> SNN conversion (METHODS 2): one core, registered methods, shared parts.

``convert(ann, config, calibration) -> (snn, report)``: ``config`` is the typed config of
one registered method (:data:`METHODS`; ``method_config(name, **values)`` builds one by
name). Methods: ``maxnorm`` (Diehl 2015), ``robust`` (Rueckauer 2017), ``qcfs`` (Bu 2022),
``cos`` (Hao 2023) and ``ttrbr`` (our design on the TTRBR abstract). A new method is one
module with a config dataclass and a :class:`ConversionMethod` registered with
:func:`register_method` (:mod:`~spikebridge.conversion.registry`), imported below.

Shared parts, one module each: the spiking twins (:mod:`.twin`; user CNNs through torch.fx:
:mod:`.fx_graph`, :mod:`.fx_time`, :mod:`.fx_twin`), BN folding (:mod:`.folding`), sites,
calibration batches and site statistics (:mod:`.sites`), the error decomposition
(:mod:`.decomposition`; its plot: :mod:`spikebridge.analysis.conversion_errors`), threshold
tuning (:mod:`.tuning`), output calibration (:mod:`.output_calibration`) and reference
selection (:mod:`.selection`).
"""

# isort: off
# the built-in methods register themselves, in this order (METHODS, --help, experiments)
from spikebridge.conversion import maxnorm, robust, qcfs, cos, ttrbr  # noqa: F401

# isort: on
from spikebridge.conversion.core import ConversionReport, convert
from spikebridge.conversion.cos import CosConfig
from spikebridge.conversion.decomposition import ErrorTable, decompose_errors, quantized_rate
from spikebridge.conversion.folding import build_converted, fold_batchnorm, is_converted_state
from spikebridge.conversion.fx_graph import site_graph
from spikebridge.conversion.fx_time import SpikingGraph
from spikebridge.conversion.fx_twin import build_spiking_graph
from spikebridge.conversion.maxnorm import MaxnormConfig
from spikebridge.conversion.qcfs import QcfsConfig
from spikebridge.conversion.registry import (
    METHODS,
    ConversionMethod,
    MethodConfig,
    Tuned,
    get_method,
    method_config,
    method_of,
    register_method,
)
from spikebridge.conversion.robust import RobustConfig
from spikebridge.conversion.ttrbr import TtrbrConfig
from spikebridge.conversion.tuning import TuningReport, tune_thresholds
from spikebridge.conversion.twin import check_convertible

__all__ = [
    "METHODS", "ConversionMethod", "ConversionReport", "CosConfig", "ErrorTable", "MaxnormConfig",
    "MethodConfig", "QcfsConfig", "RobustConfig", "SpikingGraph", "TtrbrConfig", "Tuned",
    "TuningReport", "build_converted", "build_spiking_graph", "check_convertible", "convert",
    "decompose_errors", "fold_batchnorm", "get_method", "is_converted_state", "method_config",
    "method_of", "quantized_rate", "register_method", "site_graph", "tune_thresholds",
]  # fmt: skip

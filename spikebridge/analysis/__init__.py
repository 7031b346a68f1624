"""Measuring a network (METHODS 3): firing rates, MACs, synaptic operations, energy estimate."""

from spikebridge.analysis.firing import FiringMonitor
from spikebridge.analysis.ops import (
    E_AC_PJ,
    E_MAC_PJ,
    count_macs,
    count_sops,
    energy_estimate,
    measure_snn,
    measurement_at,
)

__all__ = [
    "E_AC_PJ", "E_MAC_PJ", "FiringMonitor", "count_macs", "count_sops", "energy_estimate",
    "measure_snn", "measurement_at",
]  # fmt: skip

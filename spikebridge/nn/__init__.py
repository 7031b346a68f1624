"""Building blocks: surrogate spikes, multi-step neurons, conversion-aware activations."""

from spikebridge.nn.activations import QCFS, Clip
from spikebridge.nn.neurons import IF, LIF, SpikingNeuron
from spikebridge.nn.surrogate import SURROGATES, spike, surrogate_grad
from spikebridge.nn.temporal import SpikingSite, fold, threshold_dependent_bn, unfold

__all__ = [
    "IF", "LIF", "QCFS", "SURROGATES", "Clip", "SpikingNeuron", "SpikingSite", "fold",
    "spike", "surrogate_grad", "threshold_dependent_bn", "unfold",
]  # fmt: skip

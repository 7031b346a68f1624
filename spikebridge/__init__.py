"""spikebridge: accurate low-latency spiking neural networks from ANNs.

Pipeline: data -> models -> methods -> engine -> CLI (see docs/DESIGN.md).
"""

__version__ = "0.1.0"

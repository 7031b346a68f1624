"""spikebridge: accurate low-latency spiking neural networks from ANNs.

Layers: data -> nn -> models -> config -> methods -> engine -> analysis/export -> runs ->
experiments -> CLI; each imports only from below (docs/DESIGN.md, tests/test_import_layers.py).
"""

__version__ = "0.1.0"

"""Export spiking models to other tools (the ``nir`` package is imported lazily)."""

from spikebridge.export.nir import export_nir, import_nir

__all__ = ["export_nir", "import_nir"]

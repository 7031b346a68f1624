"""``export_run``: the library entry point behind ``spikebridge export``; it reads finished
spiking run folders only."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spikebridge.data.spec import DATASET_INFO
from spikebridge.engine import rundir
from spikebridge.errors import ConfigError

EXPORT_FORMATS = ("nir",)


def _input_shape(config: Mapping[str, Any]) -> tuple[int, int, int]:
    """One image ``(C, H, W)`` of the run's dataset (from the dataset's description)."""
    dataset = config.get("data", {}).get("dataset")
    info = DATASET_INFO.get(dataset)
    if info is None:
        raise ConfigError(
            f"the input size of dataset {dataset!r} is unknown; pass input_shape (C, H, W)."
        )
    channels = int(config.get("model", {}).get("in_channels") or info.in_channels)
    return channels, info.image_size, info.image_size


def export_run(
    run_dir: str | Path,
    fmt: str = "nir",
    out: str | Path | None = None,
    input_shape: tuple[int, int, int] | None = None,
    target: str = "portable",
) -> Path:
    """Export a spiking run folder's selected model to ``out`` (default ``RUN/model.<fmt>``).

    Formats: ``nir`` (:func:`spikebridge.export.export_nir`; needs the ``nir`` package;
    ``target`` ``portable`` or ``compact``). The dataset's mean/std become the graph's
    first node, so the file takes raw pixels in [0, 1]. ANN runs are refused
    (ConfigError): NIR describes spiking networks; convert the ANN or train with
    ``--neuron lif`` first. Returns the written path.
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(
            f"export format {fmt!r} is unknown; expected one of {', '.join(EXPORT_FORMATS)}."
        )
    model, config = rundir.load_run(run_dir, "cpu")
    if not getattr(model, "spiking", False):
        raise ConfigError(
            f"run {str(run_dir)!r} is an ANN; {fmt} export covers spiking runs (train with "
            "--neuron lif, or convert the ANN first)."
        )
    from spikebridge.export import export_nir

    path = Path(out) if out is not None else Path(run_dir) / f"model.{fmt}"
    rundir.check_output_file(path, "-o", f"model.{fmt}")
    info = DATASET_INFO.get(config.get("data", {}).get("dataset"))
    normalization = (info.mean, info.std) if info is not None else None
    export_nir(model, path, input_shape or _input_shape(config), target=target,
               normalization=normalization)  # fmt: skip
    return path

"""``export_run``: the library entry point behind ``spikebridge export``; it reads finished
spiking run folders only."""

from __future__ import annotations

from pathlib import Path

from spikebridge.data import recorded_info
from spikebridge.engine import checkpoint as ckpt
from spikebridge.engine import rundir
from spikebridge.errors import ConfigError

EXPORT_FORMATS = ("nir",)


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
    try:  # the recorded shape and normalization (older runs: the dataset's constants)
        info = recorded_info(config, ckpt.read_json(Path(run_dir) / ckpt.SUMMARY_FILE))
    except ConfigError:
        if input_shape is None:
            raise
        info = None
    normalization = (info.mean, info.std) if info is not None else None
    shape = input_shape or info.shape  # type: ignore[union-attr]
    export_nir(model, path, shape, target=target, normalization=normalization)
    return path

"""``convert(ann, config, calibration)``: ANN -> IF spiking network with one method
(METHODS 2.1-2.2, 2.4-2.6).

The method is the registered one whose config ``config`` is (``QcfsConfig(timesteps=4)``,
``TtrbrConfig(timesteps=4, tune_epochs=0)``, or ``method_config("robust", timesteps=8)``),
the way SpikingJelly's converter takes one mode. Every method runs the same three steps:

1. the spiking twin of the ANN (:mod:`~spikebridge.conversion.twin`; a spikebridge ResNet or
   any fx-traceable user CNN);
2. the method's initial thresholds from the ANN (and the calibration images), set on every
   site with ``v_0 = φθ``;
3. the method's tuning, if it has one (ttrbr: :mod:`~spikebridge.conversion.ttrbr`).

Saving and reloading a converted model: BN is folded away, so the model is NOT what
``build_from_config(snn.config)`` makes. Save ``snn.state_dict()`` with ``snn.config``;
rebuild with :func:`~spikebridge.conversion.build_converted`, then ``load_state_dict``
(thresholds and φ are neuron buffers). A converted user model is rebuilt with
:func:`~spikebridge.conversion.build_spiking_graph` from a fresh instance of the ANN class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from spikebridge.conversion.output_calibration import CalibrationReport
from spikebridge.conversion.registry import MethodConfig, method_of
from spikebridge.conversion.selection import SelectionReport
from spikebridge.conversion.sites import CalibrationData, calibration_batches, model_device
from spikebridge.conversion.tuning import TuningReport
from spikebridge.conversion.twin import make_twin, mean_thresholds, set_neurons
from spikebridge.errors import ConfigError


@dataclass
class ConversionReport:
    """What :func:`convert` did; also attached to the returned model as ``conversion_report``."""

    method: str
    timesteps: int
    phi: float
    percentile: float | None
    channelwise: bool
    initial_thresholds: dict[str, float]  # mean θ per site before tuning
    thresholds: dict[str, float]  # mean θ per site in the returned model
    tuning: TuningReport | None = None
    calibration: CalibrationReport | None = None  # output calibration (ttrbr, tune_epochs)
    selection: SelectionReport | None = None  # ttrbr's choice on held-out images
    chosen: str | None = None  # what the kept thresholds aimed at, where the method chose

    @property
    def reference(self) -> str | None:
        """What a tuned method's thresholds came from (ttrbr: ``ann`` / ``clip``, or the
        untuned ``qcfs`` / ``robust`` set its selection kept); None otherwise."""
        if self.chosen is not None:
            return self.chosen
        return None if self.tuning is None else self.tuning.reference

    def to_markdown(self) -> str:
        lines = [f"method {self.method}, T = {self.timesteps}, φ = {self.phi}", ""]
        lines += ["| site | θ initial | θ |", "|---|---|---|"]
        for name, th in self.thresholds.items():
            lines.append(f"| {name} | {self.initial_thresholds[name]:.4g} | {th:.4g} |")
        return "\n".join(lines)


def convert(
    ann: nn.Module,
    config: MethodConfig,
    calibration: CalibrationData | None = None,
    *,
    held_out: Any = None,
) -> tuple[nn.Module, ConversionReport]:
    """Convert a ResNet ANN or a traceable user CNN into a NEW IF spiking network.

    Args:
        ann: a ReLU / Clip / QCFS ResNet ANN, or a user CNN (not modified).
        config: the config of one registered method (its class picks the method).
        calibration: normalized training images ``[N, C, H, W]`` or batches of them
            (``(images, labels)`` pairs are accepted); may be None for a method that
            ``needs_calibration`` is False for (qcfs).
        held_out: labelled ``(images, labels)`` batches, disjoint from ``calibration``, for a
            method that chooses among candidates on them (ttrbr's reference selection).

    Returns ``(snn, report)``: the spiking model in eval mode (a ResNet with ``.config``, or a
    :class:`~spikebridge.conversion.SpikingGraph`), also carrying ``.conversion_report``.
    """
    method = method_of(config)
    if method.needs_calibration and calibration is None:
        raise ConfigError(f"method {method.name!r} needs calibration data; none was given")
    ann, snn = make_twin(ann, config.timesteps, config.phi)  # user model: ann = its site graph
    batches = None
    if calibration is not None:
        batches = calibration_batches(calibration, config.chunk_size, model_device(ann))
    set_neurons(snn, method.thresholds(config, ann, batches), config.phi)
    initial = mean_thresholds(snn)
    tuned = method.tune(config, ann, snn, batches, held_out)
    report = ConversionReport(
        method.name, config.timesteps, config.phi, method.uses_percentile(config),
        bool(getattr(config, "channelwise", False)), initial, mean_thresholds(tuned.snn),
        tuned.tuning, tuned.calibration, tuned.selection, tuned.reference,
    )  # fmt: skip
    tuned.snn.conversion_report = report  # type: ignore[assignment]
    return tuned.snn.eval(), report

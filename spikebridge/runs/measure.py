"""The measurement step of a run (METHODS 3): firing rates, SOPs, MACs and energy estimate
on the first images of a split (:func:`measure_run`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from spikebridge.analysis import measure_snn
from spikebridge.engine.evaluate import simulating
from spikebridge.engine.train import Loaders
from spikebridge.errors import ConfigError

# Firing rates, SOPs and energy are measured on the first MEASURE_IMAGES test images (in file
# order, no augmentation): enough for stable averages, and a bounded cost (two forward passes
# per batch) however large the test set is.
MEASURE_IMAGES = 1024


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class _FirstImages:
    """Image batches of a loader (tensors or ``(images, labels)``), cut at ``max_images``;
    ``.seen`` counts the images handed out (streamed: no batch is kept)."""

    def __init__(self, loader: Iterable[Any], max_images: int) -> None:
        self.loader, self.max_images, self.seen = loader, max_images, 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        for batch in self.loader:
            if self.seen >= self.max_images:
                return
            images = (batch if torch.is_tensor(batch) else batch[0])[: self.max_images - self.seen]
            self.seen += len(images)
            yield images


def measure_run(
    model: nn.Module,
    loader: Iterable[Any],
    max_images: int = MEASURE_IMAGES,
    timesteps: int | None = None,
    headline_t: int | None = None,
) -> dict[str, Any]:
    """METHODS 3 numbers of ``model`` on the first ``max_images`` images of ``loader``.

    ``loader`` yields ``(images[B, C, H, W], labels)`` or image tensors (e.g. the test
    DeviceLoader, unshuffled). A spiking model is simulated once for ``timesteps`` steps
    (None: its own T; restored afterwards) and gives, at ``measured_timesteps`` =
    ``headline_t`` (None: the simulated T): ``firing_rate`` (spikes per neuron per step over
    all sites, in [0, 1]), ``firing_rate_by_layer``, ``silent_fraction``, ``sops_per_image``,
    ``first_layer_macs_per_image``, ``energy_estimate_uj`` (SNN); and at every t of the
    pass: ``firing_rate_by_timestep``, ``sops_by_timestep``, ``first_layer_macs_by_timestep``,
    ``energy_by_timestep``. Both kinds give ``macs_per_image`` (the ANN equivalent),
    ``ann_energy_estimate_uj`` and ``energy_note``. ``measured_images`` = images used (an
    ANN's MACs need only one batch). Energies are estimates: E_MAC = 4.6 pJ, E_AC = 0.9 pJ
    (45 nm, Horowitz 2014).
    """
    if max_images < 1:
        raise ConfigError(f"max_images is {max_images}; expected an integer >= 1.")
    images = _FirstImages(loader, max_images)
    spiking = getattr(model, "spiking", False)
    with simulating(model, timesteps if spiking else None):
        result = measure_snn(model, images, t=headline_t if spiking else None)
    result.pop("images", None)
    result["measured_images"] = images.seen
    return result


def measure_step(model: nn.Module, loaders: Loaders, log: Callable[[str], None]) -> dict:
    """The recipe's measurement step: :func:`measure_run` on the test split (else val)."""
    loader = loaders.test if loaders.test is not None else loaders.val
    if loader is None:
        log("no test or validation split: firing rates, SOPs and energy not measured")
        return {}
    return measure_run(model, loader)

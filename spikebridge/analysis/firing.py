"""Firing-rate monitoring by forward hooks on :class:`SpikingSite` modules (METHODS 3).

A site's output is ``o`` or ``o·θ`` (``emit_threshold``); with ``θ > 0`` a spike is exactly a
nonzero output, so spikes are counted as ``output != 0`` whatever θ is (scalar or
per-channel). Sites are found by type (``isinstance``), never by class name, so subclasses
and future neuron kinds are monitored too.

Statistics are running sums (spikes per site, per-neuron totals of shape ``[C, H, W]``,
neuron-steps, images), so memory stays constant however many batches are seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from spikebridge.errors import ModelError
from spikebridge.nn.temporal import SpikingSite


@dataclass
class _SiteStats:
    """Running sums for one site; ``per_neuron`` is ``[C, H, W]`` (one sample's shape)."""

    kind: str
    spikes: int = 0
    neuron_steps: int = 0
    images: int = 0
    steps: int = 0
    per_neuron: torch.Tensor | None = field(default=None, repr=False)

    @property
    def neurons(self) -> int:
        return 0 if self.per_neuron is None else self.per_neuron.numel()


def neuron_kind(site: SpikingSite) -> str:
    """A short description of a site's neuron model, e.g. ``IF(subtract)`` or ``LIF(hard)``.

    ``decay == 1`` is an integrate-and-fire neuron, anything else is leaky; the reset mode
    distinguishes the converted IF (METHODS 2.1) from IDSNN's LIF (METHODS 1.1).
    """
    neuron = site.neuron
    name = "IF" if neuron.decay == 1.0 else "LIF"
    return f"{name}({neuron.reset})"


class FiringMonitor:
    """Accumulate firing statistics of every :class:`SpikingSite` while the block runs.

    Usage::

        with FiringMonitor(model) as mon:
            for images, _ in loader:
                model(images)
        mon.rates(), mon.overall_rate(), mon.silent_fraction()

    Rates are spikes per neuron per time-step; a neuron is *silent* if it never fired on
    any image seen. Hooks are removed when the block exits; the numbers stay readable.
    """

    def __init__(self, model: nn.Module) -> None:
        self.sites = {n: m for n, m in model.named_modules() if isinstance(m, SpikingSite)}
        if not self.sites:
            raise ModelError("FiringMonitor needs a spiking model; this one has no SpikingSite")
        self.stats = {n: _SiteStats(neuron_kind(m)) for n, m in self.sites.items()}
        self._handles: list[Any] = []

    def __enter__(self) -> FiringMonitor:
        for name, site in self.sites.items():
            self._handles.append(site.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):  # type: ignore[no-untyped-def]
        def hook(site: SpikingSite, _inputs: tuple, output: torch.Tensor) -> None:
            self.update(name, output.detach(), site.timesteps)

        return hook

    def update(self, name: str, output: torch.Tensor, timesteps: int) -> None:
        """Add one folded site output ``[T*B, C, H, W]`` (or ``[T*B, N]``) to the sums."""
        fired = output != 0
        st = self.stats[name]
        per_neuron = fired.sum(0, dtype=torch.int64)
        if st.per_neuron is not None and st.per_neuron.shape != per_neuron.shape:
            raise ModelError(
                f"site {name!r} changed shape from {tuple(st.per_neuron.shape)} to "
                f"{tuple(per_neuron.shape)}; use one FiringMonitor per input size"
            )
        st.per_neuron = per_neuron if st.per_neuron is None else st.per_neuron + per_neuron
        st.spikes += int(per_neuron.sum())
        st.neuron_steps += fired.numel()
        st.images += output.shape[0] // timesteps
        st.steps = timesteps

    def _seen(self) -> dict[str, _SiteStats]:
        return {n: s for n, s in self.stats.items() if s.neuron_steps > 0}

    def rates(self) -> dict[str, float]:
        """Spikes per neuron per time-step, per site (sites that never ran are left out)."""
        return {n: s.spikes / s.neuron_steps for n, s in self._seen().items()}

    def overall_rate(self) -> float:
        """Rate over all sites, weighted by their number of neurons (NaN if nothing ran)."""
        seen = self._seen().values()
        steps = sum(s.neuron_steps for s in seen)
        return sum(s.spikes for s in seen) / steps if steps else float("nan")

    def rates_by_kind(self) -> dict[str, float]:
        """Neuron-weighted rate per neuron model (see :func:`neuron_kind`), METHODS 3."""
        out: dict[str, list[int]] = {}
        for s in self._seen().values():
            acc = out.setdefault(s.kind, [0, 0])
            acc[0], acc[1] = acc[0] + s.spikes, acc[1] + s.neuron_steps
        return {k: spikes / steps for k, (spikes, steps) in out.items()}

    def silent_fractions(self) -> dict[str, float]:
        """Per site: fraction of neurons that never fired over all images seen."""
        return {
            n: float((s.per_neuron == 0).sum()) / s.neurons  # type: ignore[operator]
            for n, s in self._seen().items()
        }

    def silent_fraction(self) -> float:
        """Fraction of all monitored neurons that never fired (NaN if nothing ran)."""
        seen = self._seen().values()
        neurons = sum(s.neurons for s in seen)
        silent = sum(int((s.per_neuron == 0).sum()) for s in seen)  # type: ignore[operator]
        return silent / neurons if neurons else float("nan")

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers: overall and per-site rates and silent fractions."""
        return {
            "firing_rate": self.overall_rate(),
            "firing_rate_by_layer": self.rates(),
            "firing_rate_by_kind": self.rates_by_kind(),
            "silent_fraction": self.silent_fraction(),
            "silent_fraction_by_layer": self.silent_fractions(),
        }

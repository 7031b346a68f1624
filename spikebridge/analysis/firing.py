"""Firing-rate monitoring by forward hooks on :class:`SpikingSite` modules (METHODS 3).

A site's output is ``o`` or ``o·θ`` (``emit_threshold``); with ``θ > 0`` a spike is exactly a
nonzero output, so spikes are counted as ``output != 0`` whatever θ is (scalar or
per-channel). Sites are found by type (``isinstance``), never by class name, so subclasses
and future neuron kinds are monitored too.

Statistics are running sums (spikes per site and per time-step, per-neuron totals and
first-spike steps of shape ``[C, H, W]``, neuron-steps, images), so memory stays constant
however many batches are seen.

Every figure is also available at any ``t <= T`` (the ``t`` argument): neurons are causal, so
the spikes of the first ``t`` steps of a ``T``-step run are those of a ``t``-step run
(METHODS 3), and a rate at ``t`` is the spikes of steps ``1..t`` over ``neurons·images·t``;
a neuron is silent at ``t`` when it fired in none of the first ``t`` steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from spikebridge.errors import ModelError
from spikebridge.nn.temporal import SpikingSite, unfold


@dataclass
class _SiteStats:
    """Running sums for one site; ``per_neuron`` and ``first_step`` are ``[C, H, W]`` (one
    sample's shape), ``by_step`` is ``[T]`` (spikes at each step, all images and neurons)."""

    kind: str
    spikes: int = 0
    neuron_steps: int = 0
    images: int = 0
    steps: int = 0
    per_neuron: torch.Tensor | None = field(default=None, repr=False)
    by_step: torch.Tensor | None = field(default=None, repr=False)
    # 0-based step of each neuron's earliest spike on any image (``steps`` if it never fired)
    first_step: torch.Tensor | None = field(default=None, repr=False)

    @property
    def neurons(self) -> int:
        return 0 if self.per_neuron is None else self.per_neuron.numel()

    def spikes_until(self, t: int | None) -> int:
        """Spikes in steps ``1..t`` (all steps for None)."""
        return self.spikes if t is None else int(self.by_step[:t].sum())  # type: ignore[index]

    def neuron_steps_until(self, t: int | None) -> int:
        """Neuron-steps of steps ``1..t``: ``neurons · images · t``."""
        return self.neuron_steps if t is None else self.neurons * self.images * min(t, self.steps)

    def silent_until(self, t: int | None) -> int:
        """Neurons with no spike in steps ``1..t`` on any image."""
        limit = self.steps if t is None else min(t, self.steps)
        return int((self.first_step >= limit).sum())  # type: ignore[operator]


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
        if st.steps and st.steps != timesteps:
            raise ModelError(
                f"site {name!r} ran {timesteps} time-steps after {st.steps}; use one "
                "FiringMonitor per T"
            )
        steps = unfold(fired, timesteps)  # [T, B, ...], time outermost
        by_step = steps.flatten(1).sum(1, dtype=torch.int64)
        # leading steps without a spike on any image of the batch = first spike step (or T)
        first = (~steps.any(1)).to(torch.int64).cumprod(0).sum(0)
        st.per_neuron = per_neuron if st.per_neuron is None else st.per_neuron + per_neuron
        st.by_step = by_step if st.by_step is None else st.by_step + by_step
        st.first_step = first if st.first_step is None else torch.minimum(st.first_step, first)
        st.spikes += int(per_neuron.sum())
        st.neuron_steps += fired.numel()
        st.images += output.shape[0] // timesteps
        st.steps = timesteps

    def _seen(self) -> dict[str, _SiteStats]:
        return {n: s for n, s in self.stats.items() if s.neuron_steps > 0}

    @property
    def timesteps(self) -> int:
        """The T the monitored sites ran (0 if nothing ran)."""
        return max((s.steps for s in self._seen().values()), default=0)

    def rates(self, t: int | None = None) -> dict[str, float]:
        """Spikes per neuron per time-step over steps ``1..t`` (None: all), per site (sites
        that never ran are left out)."""
        return {n: s.spikes_until(t) / s.neuron_steps_until(t) for n, s in self._seen().items()}

    def overall_rate(self, t: int | None = None) -> float:
        """Rate over all sites, weighted by their number of neurons (NaN if nothing ran)."""
        seen = self._seen().values()
        steps = sum(s.neuron_steps_until(t) for s in seen)
        return sum(s.spikes_until(t) for s in seen) / steps if steps else float("nan")

    def rates_by_timestep(self) -> dict[str, float]:
        """``{"1": overall rate over step 1, ..., "T": over steps 1..T}`` (METHODS 3)."""
        return {str(t): self.overall_rate(t) for t in range(1, self.timesteps + 1)}

    def rates_by_kind(self, t: int | None = None) -> dict[str, float]:
        """Neuron-weighted rate per neuron model (see :func:`neuron_kind`), METHODS 3."""
        out: dict[str, list[int]] = {}
        for s in self._seen().values():
            acc = out.setdefault(s.kind, [0, 0])
            acc[0], acc[1] = acc[0] + s.spikes_until(t), acc[1] + s.neuron_steps_until(t)
        return {k: spikes / steps for k, (spikes, steps) in out.items()}

    def silent_fractions(self, t: int | None = None) -> dict[str, float]:
        """Per site: fraction of neurons that fired in none of steps ``1..t`` on any image."""
        return {n: s.silent_until(t) / s.neurons for n, s in self._seen().items()}

    def silent_fraction(self, t: int | None = None) -> float:
        """Fraction of all monitored neurons that never fired in steps ``1..t`` (NaN if
        nothing ran)."""
        seen = self._seen().values()
        neurons = sum(s.neurons for s in seen)
        return sum(s.silent_until(t) for s in seen) / neurons if neurons else float("nan")

    def summary(self, t: int | None = None) -> dict[str, Any]:
        """JSON-ready numbers at ``t`` (None: all steps): overall and per-site rates and
        silent fractions, and the overall rate at every t."""
        return {
            "firing_rate": self.overall_rate(t),
            "firing_rate_by_layer": self.rates(t),
            "firing_rate_by_kind": self.rates_by_kind(t),
            "silent_fraction": self.silent_fraction(t),
            "silent_fraction_by_layer": self.silent_fractions(t),
            "firing_rate_by_timestep": self.rates_by_timestep(),
        }

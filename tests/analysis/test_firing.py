"""FiringMonitor: rates and silent neurons from known spike trains (METHODS 3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spikebridge.analysis.firing import FiringMonitor
from spikebridge.errors import ModelError
from spikebridge.models import build
from spikebridge.nn import IF, LIF, SpikingSite, fold

T = 4


def _lif_site() -> nn.Sequential:
    """One LIF site (θ = 0.5, decay 0.25, strict, hard reset) named "0"."""
    return nn.Sequential(SpikingSite(LIF(0.5, 0.25, backend="loop"), T))


def _currents() -> torch.Tensor:
    """Inputs ``[T, 1, 4]`` with hand-derived spike trains for 4 neurons.

    n0: 1.0 every step            -> h = 1 > 0.5 every step      -> 4 spikes
    n1: 0.0                       -> silent
    n2: 0.3 every step            -> h = 0.3, 0.375, 0.394, 0.398 -> 0 spikes (leak 0.25)
    n3: 0.25, 0.4375, 0, 0        -> h = 0.25, 0.5 (not > 0.5), 0.125, 0.03 -> 0 spikes
    Second batch makes n3 fire: 0.6 at t=0 only -> 1 spike.
    """
    x = torch.zeros(T, 1, 4)
    x[:, 0, 0] = 1.0
    x[:, 0, 2] = 0.3
    x[0, 0, 3], x[1, 0, 3] = 0.25, 0.4375  # dyadic: h hits 0.5 exactly at t=1
    return x


def test_rates_of_a_known_spike_train() -> None:
    model = _lif_site()
    with FiringMonitor(model) as mon:
        model(fold(_currents()))
    assert mon.rates() == {"0": pytest.approx(4 / (4 * T))}
    assert mon.overall_rate() == pytest.approx(0.25)
    assert mon.silent_fractions() == {"0": pytest.approx(3 / 4)}
    assert mon.silent_fraction() == pytest.approx(0.75)
    assert mon.stats["0"].images == 1 and mon.stats["0"].steps == T


def test_silent_fraction_is_over_all_batches_and_hooks_are_removed() -> None:
    model = _lif_site()
    second = torch.zeros(T, 1, 4)
    second[0, 0, 3] = 0.6  # n3 fires once in the second batch
    with FiringMonitor(model) as mon:
        model(fold(_currents()))
        model(fold(second))
    assert mon.rates()["0"] == pytest.approx(5 / (2 * 4 * T))
    assert mon.silent_fraction() == pytest.approx(2 / 4)  # n1 and n2 never fired
    assert mon.stats["0"].images == 2
    assert not model[0]._forward_hooks
    model(fold(second))  # after exit nothing is counted
    assert mon.stats["0"].images == 2


def test_threshold_emitting_neurons_count_spikes_not_values() -> None:
    site = SpikingSite(IF(threshold=2.0, phi=0.0, backend="loop"), T)
    model = nn.Sequential(site)
    x = torch.full((T, 3, 2), 2.0)  # u >= θ every step: one spike (value 2.0) per step
    x[:, :, 1] = 1.0  # fires every other step
    with FiringMonitor(model) as mon:
        out = model(fold(x))
    assert out.max() == 2.0
    assert mon.rates()["0"] == pytest.approx((3 * T + 3 * T / 2) / (6 * T))
    assert mon.silent_fraction() == 0.0


def test_weighted_overall_rate_and_kinds_on_two_sites() -> None:
    class Sub(SpikingSite):  # a subclass with another name is still monitored (type-based)
        pass

    a = SpikingSite(LIF(0.5, backend="loop"), 1)
    b = Sub(IF(1.0, phi=0.0, backend="loop"), 1)
    model = nn.Sequential(a, nn.Flatten(), nn.Linear(6, 2, bias=False), b)
    nn.init.constant_(model[2].weight, 0.0)  # b never fires
    with FiringMonitor(model) as mon:
        model(torch.ones(1, 6))  # a: 6 neurons all fire; b: 2 neurons silent
    assert mon.overall_rate() == pytest.approx(6 / 8)
    assert mon.rates_by_kind() == {"LIF(hard)": 1.0, "IF(subtract)": 0.0}
    assert mon.silent_fractions() == {"0": 0.0, "3": 1.0}
    assert mon.silent_fraction() == pytest.approx(2 / 8)


def test_resnet_sites_are_all_monitored_with_per_neuron_memory_only() -> None:
    torch.manual_seed(0)
    model = build("resnet20", width=0.25, neuron="lif", timesteps=2, in_channels=1).eval()
    with FiringMonitor(model) as mon, torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 1, 8, 8))
    names = {n for n, m in model.named_modules() if isinstance(m, SpikingSite)}
    assert set(mon.rates()) == names
    assert mon.stats["act1"].per_neuron.shape == (4, 8, 8)  # one counter per neuron
    assert mon.stats["act1"].images == 6
    rates = list(mon.rates().values())
    assert all(0.0 <= r <= 1.0 for r in rates) and max(rates) > 0
    summary = mon.summary()
    assert summary["firing_rate"] == pytest.approx(mon.overall_rate())


def test_model_without_sites_is_refused() -> None:
    with pytest.raises(ModelError, match="no SpikingSite"):
        FiringMonitor(build("resnet20", width=0.25))


def test_nothing_seen_gives_nan_overall() -> None:
    mon = FiringMonitor(_lif_site())
    assert mon.rates() == {}
    assert mon.overall_rate() != mon.overall_rate()  # NaN


def test_rates_and_silence_over_the_first_t_steps() -> None:
    # n0: 1.0 every step -> spikes at steps 1..4; n1: 0.45 every step, leak 0.25:
    # h = 0.45, 0.5625 (spike, reset), 0.45, 0.5625 (spike) -> spikes at steps 2 and 4
    model = _lif_site()
    x = torch.zeros(T, 1, 2)
    x[:, 0, 0], x[:, 0, 1] = 1.0, 0.45
    with FiringMonitor(model) as mon:
        model(fold(x))
    assert mon.stats["0"].by_step.tolist() == [1, 2, 1, 2]
    assert mon.rates_by_timestep() == {
        "1": pytest.approx(1 / 2), "2": pytest.approx(3 / 4),
        "3": pytest.approx(4 / 6), "4": pytest.approx(6 / 8),
    }  # fmt: skip
    assert mon.overall_rate(4) == mon.overall_rate()
    assert (mon.silent_fraction(1), mon.silent_fraction(2)) == (0.5, 0.0)
    assert mon.summary(1)["firing_rate_by_layer"] == {"0": 0.5}


def test_one_monitor_refuses_a_second_t() -> None:
    model = _lif_site()
    with FiringMonitor(model):
        model(fold(_currents()))
        model[0].timesteps = 2
        with pytest.raises(ModelError, match="one FiringMonitor per T"):
            model(fold(_currents()[:2]))

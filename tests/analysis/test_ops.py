"""MACs, synaptic operations and energy (METHODS 3), against hand counts and published MACs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from spikebridge.analysis.ops import (
    E_AC_PJ,
    E_MAC_PJ,
    count_macs,
    count_sops,
    energy_estimate,
    measure_snn,
)
from spikebridge.errors import DataError, ModelError
from spikebridge.models import build
from spikebridge.nn import IF, LIF, SpikingSite


def _spike_map(*positions: tuple[int, int]) -> torch.Tensor:
    """A 1-channel 4x4 image with 1.0 at ``positions`` (fed to a θ=0.5 LIF: spikes there)."""
    x = torch.zeros(1, 1, 4, 4)
    for i, j in positions:
        x[0, 0, i, j] = 1.0
    return x


def _site_then_conv(conv: nn.Conv2d) -> nn.Sequential:
    return nn.Sequential(SpikingSite(LIF(0.5, backend="loop"), 1), conv)


def _brute_force_reach(spikes: torch.Tensor, k: int, stride: int, pad: int) -> int:
    """Count, output by output, the spikes inside each receptive field (the definition)."""
    h = spikes.shape[-1]
    n_out = (h + 2 * pad - k) // stride + 1
    total = 0
    for oi in range(n_out):
        for oj in range(n_out):
            for di in range(k):
                for dj in range(k):
                    i, j = oi * stride - pad + di, oj * stride - pad + dj
                    if 0 <= i < h and 0 <= j < h:
                        total += int(spikes[:, :, i, j].sum())
    return total


def test_sops_of_known_spikes_through_a_padded_3x3_conv() -> None:
    # corner (0,0) reaches 2x2 outputs, edge (0,2) 2x3, interior (1,1) 3x3, corner (3,3) 2x2
    spikes = _spike_map((0, 0), (0, 2), (1, 1), (3, 3))
    model = _site_then_conv(nn.Conv2d(1, 2, 3, padding=1))
    result = count_sops(model, spikes)
    assert result["sops_per_image"] == 2 * (4 + 6 + 9 + 4)
    assert result["sops_per_image"] == 2 * _brute_force_reach(spikes, 3, 1, 1)
    assert result["sops_by_layer"] == {"1": 46.0}
    assert result["first_layer_macs_per_image"] == 0  # the site is fed straight from the input


def test_sops_with_stride_two_border_effects() -> None:
    # per dimension an input index i in 0..3 is reached by [1, 2, 1, 1] outputs
    spikes = _spike_map((0, 0), (1, 1), (3, 2), (1, 3))
    model = _site_then_conv(nn.Conv2d(1, 3, 3, stride=2, padding=1))
    expected = 3 * (1 * 1 + 2 * 2 + 1 * 1 + 2 * 1)
    assert count_sops(model, spikes)["sops_per_image"] == expected
    assert expected == 3 * _brute_force_reach(spikes, 3, 2, 1)


@settings(max_examples=30, deadline=None)
@given(
    bits=st.lists(st.booleans(), min_size=2 * 5 * 5, max_size=2 * 5 * 5),
    k=st.integers(1, 3), stride=st.integers(1, 2), pad=st.integers(0, 1), cout=st.integers(1, 3),
)  # fmt: skip
def test_sops_equal_the_receptive_field_definition(bits, k, stride, pad, cout) -> None:  # type: ignore[no-untyped-def]
    spikes = torch.tensor(bits, dtype=torch.float32).view(1, 2, 5, 5)
    model = _site_then_conv(nn.Conv2d(2, cout, k, stride=stride, padding=pad))
    expected = cout * _brute_force_reach(spikes, k, stride, pad)
    assert count_sops(model, spikes)["sops_per_image"] == expected


class _TwoThresholds(nn.Module):
    """Two IF sites with different θ summed into one conv (like a pre-add block output)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = SpikingSite(IF(threshold=2.0, phi=0.0, backend="loop"), 1)
        self.b = SpikingSite(IF(threshold=0.5, phi=0.0, backend="loop"), 1)
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.a(x) + self.b(x))


def test_summed_spike_trains_count_as_events_whatever_their_theta() -> None:
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0] = 3.0  # both sites fire: 2 events (value 2.0 + 0.5) at a corner (4 outputs)
    x[0, 0, 1, 1] = 1.0  # only b fires: 1 event at an interior position (9 outputs)
    assert count_sops(_TwoThresholds(), x)["sops_per_image"] == 2 * 4 + 1 * 9


def test_linear_layer_costs_events_times_out_features() -> None:
    model = nn.Sequential(SpikingSite(LIF(0.5, backend="loop"), 1), nn.Linear(5, 7))
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0]])
    assert count_sops(model, x)["sops_per_image"] == (3 + 1) * 7 / 2


def _reference_sops(model: nn.Module, images: torch.Tensor, theta: float) -> dict[str, float]:
    """Independent count for uniform-θ models: events = input / θ, SOPs = conv(events, 1)."""
    out: dict[str, float] = {}

    def make_hook(name: str):  # type: ignore[no-untyped-def]
        def hook(layer: nn.Module, inputs: tuple) -> None:
            events = inputs[0] / theta
            if isinstance(layer, nn.Conv2d):
                ones = torch.ones_like(layer.weight)
                reach = F.conv2d(events, ones, None, layer.stride, layer.padding)
                out[name] = float(reach.double().sum()) / images.shape[0]
            else:
                out[name] = float(events.double().sum()) * layer.out_features / images.shape[0]

        return hook

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in layers if n != "conv1"]
    with torch.no_grad():
        model(images)
    for h in handles:
        h.remove()
    return out


@pytest.mark.parametrize(
    "kwargs, theta",
    [({"neuron": "lif"}, 1.0), ({"neuron": "if", "block": "pre-add", "threshold": 0.5}, 0.5)],
)
def test_resnet_sops_match_an_independent_count(kwargs: dict, theta: float) -> None:
    # LIF emits o (unit 1); the IF emits o·θ with one θ everywhere, so input/θ = events there
    torch.manual_seed(0)
    model = build("resnet20", width=0.25, timesteps=3, **kwargs).eval()
    images = torch.randn(4, 3, 16, 16)
    result = count_sops(model, images)
    reference = _reference_sops(model, images, theta)
    assert set(result["sops_by_layer"]) == set(reference)
    for name, value in reference.items():
        assert result["sops_by_layer"][name] == pytest.approx(value, rel=1e-9), name
    assert result["sops_per_image"] > 0
    conv1 = count_macs(model, (3, 16, 16))["macs_by_layer"]["conv1"]
    assert result["first_layer_macs_by_layer"] == {"conv1": 3 * conv1}  # analog, once per step


def _cifar_resnet_macs(widths, blocks, size=32, classes=10, projections=True) -> int:  # type: ignore[no-untyped-def]
    """MACs from layer shapes: 3x3 stem, basic blocks, 1x1 projections, FC."""
    macs, cin, h = 9 * 3 * widths[0] * size * size, widths[0], size
    for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
        for j in range(n):
            stride = 2 if i > 0 and j == 0 else 1
            h //= stride
            macs += 9 * cin * w * h * h + 9 * w * w * h * h
            if projections and (stride != 1 or cin != w):
                macs += cin * w * h * h
            cin = w
    return macs + cin * classes


def test_resnet18_cifar_macs_match_the_layer_shapes_and_the_published_056_gmacs() -> None:
    result = count_macs(build("resnet18", num_classes=10), (3, 32, 32))
    expected = _cifar_resnet_macs((64, 128, 256, 512), (2, 2, 2, 2))
    assert result["macs_per_image"] == expected == 555_422_720
    assert round(result["macs_per_image"] / 1e9, 2) == 0.56  # published CIFAR ResNet-18
    assert len(result["macs_by_layer"]) == 1 + 16 + 3 + 1  # stem, 16 convs, 3 projections, fc


def test_resnet20_macs_match_the_layer_shapes_and_the_published_4055_m() -> None:
    result = count_macs(build("resnet20", num_classes=10), (3, 32, 32))
    assert result["macs_per_image"] == _cifar_resnet_macs((16, 32, 64), (3, 3, 3))
    # He et al.'s resnet20 (40.55 M) uses parameter-free shortcuts; ours adds two 1x1 convs
    without = sum(v for k, v in result["macs_by_layer"].items() if ".shortcut." not in k)
    assert without == _cifar_resnet_macs((16, 32, 64), (3, 3, 3), projections=False)
    assert round(without / 1e6, 2) == 40.55


def test_spiking_model_counts_its_ann_equivalent_macs() -> None:
    ann = count_macs(build("resnet20", width=0.25), (3, 16, 16))
    snn = count_macs(build("resnet20", width=0.25, neuron="lif", timesteps=4), (3, 16, 16))
    assert snn == ann


def test_energy_estimate_constants_and_units() -> None:
    e = energy_estimate(macs=1e6, sops=2e6, first_layer_macs=1e5)
    assert (E_MAC_PJ, E_AC_PJ) == (4.6, 0.9)
    assert e["ann_uj"] == pytest.approx(4.6)
    assert e["snn_uj"] == pytest.approx(0.46 + 1.8)
    assert e["ann_over_snn"] == pytest.approx(4.6 / 2.26)
    assert "estimate" in e["note"]


def test_measure_snn_accumulates_batches_like_one_batch() -> None:
    torch.manual_seed(1)
    model = build("resnet20", width=0.25, neuron="if", block="pre-add", timesteps=2).train()
    images = torch.randn(4, 3, 8, 8)
    split = measure_snn(model, [(images[:2], None), (images[2:], None)])
    whole = measure_snn(model, images)
    assert model.training  # restored after measuring in eval mode
    for key in ("firing_rate", "silent_fraction", "sops_per_image", "energy_estimate_uj"):
        assert split[key] == pytest.approx(whole[key], rel=1e-6), key
    assert split["images"] == 4
    e = energy_estimate(split["macs_per_image"], split["sops_per_image"],
                        split["first_layer_macs_per_image"])  # fmt: skip
    assert split["energy_estimate_uj"] == pytest.approx(e["snn_uj"])
    assert 0 < split["firing_rate"] < 1 and set(split["firing_rate_by_layer"]) >= {"act1"}
    limited = measure_snn(model, [images[:2], images[2:]], max_batches=1)
    assert limited["images"] == 2


def test_measure_ann_reports_macs_only_and_errors() -> None:
    ann = build("resnet20", width=0.25)
    result = measure_snn(ann, torch.randn(2, 3, 16, 16))
    assert set(result) == {"macs_per_image", "ann_energy_estimate_uj", "energy_note"}
    assert result["ann_energy_estimate_uj"] == pytest.approx(result["macs_per_image"] * 4.6e-6)
    with pytest.raises(ModelError, match="no SpikingSite"):
        count_sops(ann, torch.randn(1, 3, 16, 16))
    with pytest.raises(DataError, match="no image batches"):
        measure_snn(ann, [])


# ----------------------------------------------------------------------------- per time-step


def _converted_cnn(timesteps: int) -> nn.Module:
    """A user CNN (conv, ReLU, strided conv, ReLU, linear) converted to IF neurons (robust)."""
    from spikebridge.conversion import RobustConfig, convert

    torch.manual_seed(0)
    ann = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(),
        nn.Conv2d(6, 5, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(5 * 4 * 4, 7),
    ).eval()  # fmt: skip
    calibration = torch.rand(32, 1, 8, 8)
    return convert(ann, RobustConfig(timesteps=timesteps), calibration)[0]


def test_converted_sops_per_t_are_cumulative_and_match_spikes_times_fan_out() -> None:
    T, images = 8, torch.rand(6, 1, 8, 8)
    snn = _converted_cnn(T)
    sites = [m for m in snn.modules() if isinstance(m, SpikingSite)]
    assert len(sites) == 2
    recorded: list[torch.Tensor] = []
    handles = [s.register_forward_hook(lambda _m, _i, out: recorded.append(out != 0))
               for s in sites]  # fmt: skip
    result = count_sops(snn, images)
    for h in handles:
        h.remove()
    first, second = (r.view(T, 6, *r.shape[1:]).double() for r in recorded[:2])  # [T, B, ...]
    for t in (1, 2, 4, 8):  # spikes of the first t steps x fan-out, per image
        early = first[:t].flatten(0, 1)  # site 1 feeds the 3x3 stride-2 conv with 5 outputs
        by_hand = 5 * _brute_force_reach(early, 3, 2, 1) + second[:t].sum() * 7  # linear: 7
        assert result["sops_by_timestep"][str(t)] == pytest.approx(float(by_hand) / 6, rel=1e-12)
    assert result["sops_per_image"] == result["sops_by_timestep"]["8"]
    # IF neurons with φ = 0.5 fire at a roughly constant rate: 2 steps cost about a quarter
    ratio = result["sops_by_timestep"]["2"] / result["sops_by_timestep"]["8"]
    assert 0.2 < ratio < 0.3, ratio
    stem = result["first_layer_macs_by_timestep"]  # the analog stem: the same MACs each step
    assert stem["2"] == pytest.approx(stem["8"] / 4) and stem["1"] == 6 * 8 * 8 * 9


def test_figures_at_t_equal_a_run_of_t_steps() -> None:
    # spikes are causal: the first t steps of a T-step pass are a t-step run (METHODS 3)
    images = torch.rand(4, 1, 8, 8)
    long, short = measure_snn(_converted_cnn(8), images), measure_snn(_converted_cnn(3), images)
    assert long["measured_timesteps"] == 8 and short["measured_timesteps"] == 3
    for by_t, top in (("sops_by_timestep", "sops_per_image"),
                      ("energy_by_timestep", "energy_estimate_uj"),
                      ("firing_rate_by_timestep", "firing_rate"),
                      ("first_layer_macs_by_timestep", "first_layer_macs_per_image")):  # fmt: skip
        assert long[by_t]["3"] == pytest.approx(short[top], rel=1e-12), by_t
    e = energy_estimate(0, long["sops_by_timestep"]["3"], long["first_layer_macs_by_timestep"]["3"])
    assert long["energy_by_timestep"]["3"] == pytest.approx(e["snn_uj"])
    at3 = measure_snn(_converted_cnn(8), images, t=3)  # the top-level figures at t = 3
    assert at3["measured_timesteps"] == 3
    for key in ("sops_per_image", "firing_rate", "silent_fraction", "energy_estimate_uj"):
        assert at3[key] == pytest.approx(short[key], rel=1e-12), key
    assert at3["firing_rate_by_layer"] == pytest.approx(short["firing_rate_by_layer"])

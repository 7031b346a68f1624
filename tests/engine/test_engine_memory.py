"""The training-memory estimate (spikebridge.engine.memory): a hand count for a tiny model,
the parameter and activation counts of real models, and the refusal before allocating."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spikebridge.engine import memory
from spikebridge.errors import ConfigError
from spikebridge.models import ModelConfig, build_from_config

# ResNet-20 at width 1/16 (channels 1, 2, 4), 1 input channel, 4x4 images, 2 classes. By hand,
# parameters = conv weights + BN scale and shift per conv (+ classifier); activations = the
# floats of every conv output for one image:
#   stem 1->1 3x3: 9 + 2 = 11                                      1 conv  x 1x4x4 = 16
#   stage 1, 3 blocks of two 1->1 3x3 convs: 3 x 2 x 11 = 66       6 convs x 1x4x4 = 96
#   stage 2 (4x4 -> 2x2): 1->2 3x3 (22), 2->2 3x3 (40), 1x1 shortcut 1->2 (6),
#     then 2 blocks of two 2->2 convs (160): 228                   7 convs x 2x2x2 = 56
#   stage 3 (2x2 -> 1x1): 2->4 3x3 (80), 4->4 3x3 (152), 1x1 shortcut 2->4 (16),
#     then 2 blocks of two 4->4 convs (608): 856                   7 convs x 4x1x1 = 28
#   classifier 4 x 2 + 2 = 10
TINY = ModelConfig(name="resnet20", width=1 / 16, in_channels=1, num_classes=2)
TINY_PARAMETERS = 11 + 66 + 228 + 856 + 10  # 1171
TINY_ACTIVATIONS = 16 + 96 + 56 + 28  # 196 floats per image and step


def test_the_hand_count_of_a_tiny_resnet():
    est = memory.estimate_training_memory(TINY, image_size=4, batch=8)
    assert (est.parameters, est.activations) == (TINY_PARAMETERS, TINY_ACTIVATIONS)
    # ANN: 4 copies of the parameters + conv and ReLU outputs of 8 images, float32
    assert est.total_bytes == 4 * (4 * 1171) + 4 * (2 * 196 * 8) == 31280
    spiking = ModelConfig(**{**TINY.to_dict(), "neuron": "lif", "timesteps": 4})
    est = memory.estimate_training_memory(spiking, image_size=4, batch=8)
    # SNN: + the membrane potential, for each of the T = 4 steps (BPTT keeps them all)
    assert est.total_bytes == 4 * (4 * 1171) + 4 * (3 * 196 * 8 * 4) == 94000
    # evaluation at T = 4: the parameters once + two tensors of the largest output (16)
    assert est.largest == 16 and est.inference_bytes == 4 * (1171 + 2 * 16 * 8 * 4) == 8780


def conv_outputs(model: torch.nn.Module, image: torch.Tensor) -> int:
    """Floats of every convolution output for one image, counted by forward hooks."""
    total = [0]
    hooks = [m.register_forward_hook(lambda _m, _i, out: total.__setitem__(0, total[0] + out[0].numel()))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]  # fmt: skip
    model.eval()(image)
    for hook in hooks:
        hook.remove()
    return total[0]


@settings(max_examples=12, deadline=None)
@given(
    name=st.sampled_from(["resnet20", "resnet32", "resnet164", "resnet18", "resnet50"]),
    width=st.sampled_from([0.125, 0.25, 0.5]),
    stem=st.sampled_from(["3x3", "7x7"]),
    stem_pool=st.sampled_from(["avg", "none"]),
    size=st.sampled_from([8, 13, 16]),
    block=st.sampled_from(["post-add", "pre-add"]),
)
def test_the_counts_match_the_built_model(name, width, stem, stem_pool, size, block):
    cfg = ModelConfig(name=name, width=width, stem=stem, stem_pool=stem_pool, block=block,
                      in_channels=3, num_classes=10)  # fmt: skip
    est = memory.estimate_training_memory(cfg, image_size=size, batch=1)
    model = build_from_config(cfg)
    assert est.parameters == sum(p.numel() for p in model.parameters())
    assert est.activations == conv_outputs(model, torch.zeros(1, 3, size, size))


def test_a_run_that_cannot_fit_is_refused_with_the_estimate(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device_type="cpu": 50_000)
    memory.check_fits(TINY, 4, 8)  # 31280 bytes fit
    spiking = ModelConfig(**{**TINY.to_dict(), "neuron": "lif", "timesteps": 4})
    with pytest.raises(ConfigError) as err:
        memory.check_fits(spiking, 4, 8)
    assert str(err.value) == (
        "model resnet20 at width 0.0625 needs at least 91.8 KiB to train (18.3 KiB for 1,171 "
        "parameters with gradients and optimizer state, 73.5 KiB of activations for a batch of "
        "8 at T = 4) but 48.8 KiB of cpu memory is free; lower --width, --batch-size or "
        "--timesteps."
    )
    memory.check_simulation_fits(spiking, 4, 8, timesteps=4)  # 8780 bytes fit
    with pytest.raises(ConfigError, match=r"simulating resnet20 for T = 1000 steps on batches "
                       r"of 8 needs at least 1004\.6 KiB \(its largest layer, 16 values"):  # fmt: skip
        memory.check_simulation_fits(spiking, 4, 8, timesteps=1000)


def test_unknown_free_memory_refuses_nothing(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device_type="cpu": None)
    memory.check_fits(ModelConfig(name="resnet20", width=1e6), 32, 64)


def test_free_memory_of_this_machine_is_known():
    free = memory.available_bytes()
    assert free is not None and free > 0


def test_format_bytes():
    assert [memory.format_bytes(n) for n in (512, 1536, 3 * 2**30)] == [
        "512.0 B", "1.5 KiB", "3.0 GiB",
    ]  # fmt: skip

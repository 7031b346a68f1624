"""evaluate(): accuracy and loss at every t <= T in one pass (METHODS 3)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikebridge.data import DeviceLoader, load_splits
from spikebridge.engine import evaluate
from spikebridge.engine.evaluate import running_mean
from spikebridge.models import build


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead on a shared CPU
    yield
    torch.set_num_threads(before)


class FixedSteps(nn.Module):
    """A fake spiking model whose per-step logits are given: [T, B, K]."""

    spiking = True

    def __init__(self, steps):
        super().__init__()
        self.steps, self.timesteps = steps, steps.shape[0]

    def set_timesteps(self, t):
        self.timesteps = t

    def forward_steps(self, x):
        return self.steps[: self.timesteps]


def test_running_mean_reference_values():
    # two samples, two classes; per-step logits chosen so that the prediction flips
    steps = torch.tensor(
        [[[2.0, 0.0], [0.0, 1.0]], [[-4.0, 0.0], [0.0, 1.0]], [[5.0, 0.0], [3.0, 0.0]]]
    )
    mean = running_mean(steps)
    assert torch.allclose(mean[:, 0, 0], torch.tensor([2.0, -1.0, 1.0]))
    assert torch.allclose(mean[:, 1, 0], torch.tensor([0.0, 0.0, 1.0]))
    model = FixedSteps(steps)
    labels = torch.tensor([0, 1])
    result = evaluate(model, [(torch.zeros(2, 1, 1, 1), labels)])
    # t=1: sample0 -> 0 (ok), sample1 -> 1 (ok); t=2: 1 (wrong), 1 (ok); t=3: 0 (ok), 0 (wrong)
    assert result["accuracy_by_timestep"] == {"1": 1.0, "2": 0.5, "3": 0.5}
    assert result["accuracy"] == 0.5 and result["samples"] == 2
    ce3 = (F.cross_entropy(torch.tensor([[1.0, 0.0]]), torch.tensor([0])) +
           F.cross_entropy(torch.tensor([[1.0, 2 / 3]]), torch.tensor([1]))) / 2  # fmt: skip
    assert math.isclose(result["loss"], ce3.item(), rel_tol=1e-6)


@pytest.fixture(scope="module")
def synthetic_loader():
    s = load_splits("synthetic", subset=64)
    return DeviceLoader(s.test_x[:96], s.test_y[:96], 32, s.info, "cpu", False, False, 0)


def test_accuracy_by_timestep_equals_slow_per_t_recomputation(synthetic_loader):
    torch.manual_seed(0)
    model = build("resnet20", num_classes=4, in_channels=1, width=0.25, neuron="lif", timesteps=4)
    model.train()
    with torch.no_grad():  # give BN non-trivial running statistics
        for images, _ in synthetic_loader:
            model(images)
    # labels = the slow t=2 prediction, so that accuracy at t=2 must be exactly 1
    slow_pred, slow_logits = {}, {}
    model.eval()
    with torch.no_grad():
        images = torch.cat([x for x, _ in synthetic_loader])
        for t in range(1, 5):
            model.set_timesteps(t)
            slow_logits[t] = model(images)
            slow_pred[t] = slow_logits[t].argmax(1)
    model.set_timesteps(4)
    labels = slow_pred[2]
    loader = [(images[i : i + 32], labels[i : i + 32]) for i in range(0, len(labels), 32)]
    result = evaluate(model, loader)
    assert result["accuracy_by_timestep"]["2"] == 1.0
    for t in range(1, 5):
        expected = (slow_pred[t] == labels).double().mean().item()
        assert result["accuracy_by_timestep"][str(t)] == pytest.approx(expected, abs=1e-12)
        loss = F.cross_entropy(slow_logits[t], labels).item()
        assert result["loss_by_timestep"][str(t)] == pytest.approx(loss, rel=1e-5)
    assert model.timesteps == 4 and not model.training  # T and mode restored


def test_timesteps_argument_is_temporary_and_ann_has_t_equal_1(synthetic_loader):
    snn = build("resnet20", num_classes=4, in_channels=1, width=0.25, neuron="lif", timesteps=2)
    result = evaluate(snn, synthetic_loader, timesteps=3)
    assert list(result["accuracy_by_timestep"]) == ["1", "2", "3"] and snn.timesteps == 2
    ann = build("resnet20", num_classes=4, in_channels=1, width=0.25).train()
    result = evaluate(ann, synthetic_loader)
    assert list(result["accuracy_by_timestep"]) == ["1"] and ann.training
    assert result["samples"] == 96

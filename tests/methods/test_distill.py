"""IDSNN distillation (METHODS 1.3): hand-computed loss values, τ² scaling, gradients,
and a frozen, eval-mode, gradient-free teacher inside the training task."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from spikebridge.errors import ConfigError, ModelError
from spikebridge.methods.distill import (
    DEFAULT_KD_WEIGHT,
    DEFAULT_TEMPERATURE,
    KD_ONLY_WEIGHT,
    DistillationTask,
    kd_loss,
)
from spikebridge.models import build

G = torch.Generator().manual_seed(0)
Z_S = torch.randn(5, 4, generator=G, dtype=torch.float64) * 3
Z_T = torch.randn(5, 4, generator=G, dtype=torch.float64) * 3
Y = torch.tensor([0, 3, 1, 2, 3])


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _np_kl(z_s: np.ndarray, z_t: np.ndarray, tau: float) -> float:
    """sum_k p_t log(p_t / p_s) at temperature tau, averaged over the batch."""
    p_s, p_t = _softmax(z_s / tau), _softmax(z_t / tau)
    return float((p_t * np.log(p_t / p_s)).sum(axis=1).mean())


def _np_ce(z: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(_softmax(z)[np.arange(len(y)), y]).mean())


def test_constants_are_the_authors():
    assert (DEFAULT_KD_WEIGHT, KD_ONLY_WEIGHT, DEFAULT_TEMPERATURE) == (0.3, 0.5, 4.0)


def test_hand_computed_example():
    # τ = 4, teacher [4 ln 3, 0] -> p_t = [3/4, 1/4]; student [0, 0] -> p_s = [1/2, 1/2]
    z_t = torch.tensor([[4 * math.log(3.0), 0.0]])
    z_s = torch.zeros(1, 2)
    out = kd_loss(z_s, z_t, torch.tensor([0]))
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # 0.130812...
    assert out["ce_loss"].item() == pytest.approx(math.log(2), abs=1e-6)
    assert out["kd_loss"].item() == pytest.approx(16 * kl, abs=1e-5)
    assert out["loss"].item() == pytest.approx(math.log(2) + 0.3 * 16 * kl, abs=1e-5)
    assert out["loss"].item() == pytest.approx(1.321045, abs=1e-5)


def test_matches_numpy_reference_on_a_batch():
    zs, zt, y = Z_S.numpy(), Z_T.numpy(), Y.numpy()
    for form, w in (("additive", 0.3), ("convex", 0.7)):
        out = kd_loss(Z_S, Z_T, Y, weight=w, temperature=3.0, form=form)
        kd, ce = 9.0 * _np_kl(zs, zt, 3.0), _np_ce(zs, y)
        expected = (1 - w) * ce + w * kd if form == "convex" else ce + w * kd
        assert out["kd_loss"].item() == pytest.approx(kd, rel=1e-6)
        assert out["ce_loss"].item() == pytest.approx(ce, rel=1e-6)
        assert out["loss"].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0, 4.0, 8.0])
def test_kd_term_is_tau_squared_times_kl_at_tau(tau):
    out = kd_loss(Z_S, Z_T, Y, temperature=tau)
    kl = _np_kl(Z_S.numpy(), Z_T.numpy(), tau)
    assert kl > 0
    assert out["kd_loss"].item() / kl == pytest.approx(tau**2, rel=1e-6)


def test_zero_kd_when_student_equals_teacher():
    out = kd_loss(Z_T.clone(), Z_T, Y, weight=0.9)
    assert out["kd_loss"].abs().item() < 1e-6
    assert out["loss"].item() == pytest.approx(out["ce_loss"].item(), abs=1e-6)


def test_convex_vs_additive():
    w = 0.4
    add = kd_loss(Z_S, Z_T, Y, weight=w, form="additive")
    cvx = kd_loss(Z_S, Z_T, Y, weight=w, form="convex")
    assert torch.allclose(add["loss"] - cvx["loss"], w * add["ce_loss"])
    assert torch.allclose(cvx["loss"], (1 - w) * cvx["ce_loss"] + w * cvx["kd_loss"])
    assert kd_loss(Z_S, Z_T, Y, weight=1.0, form="convex")["loss"].item() == pytest.approx(
        add["kd_loss"].item()
    )


def test_gradient_of_kd_term_is_tau_times_prob_difference():
    # d/dz_s [τ² KL(p_t || softmax(z_s/τ))] = τ (p_s - p_t) / B
    tau = 2.5
    z_s = Z_S.clone().requires_grad_(True)
    kd_loss(z_s, Z_T, Y, temperature=tau)["kd_loss"].backward()
    p_s, p_t = _softmax(Z_S.numpy() / tau), _softmax(Z_T.numpy() / tau)
    expected = tau * (p_s - p_t) / Z_S.shape[0]
    np.testing.assert_allclose(z_s.grad.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_teacher_logits_get_no_gradient():
    z_s, z_t = Z_S.clone().requires_grad_(True), Z_T.clone().requires_grad_(True)
    kd_loss(z_s, z_t, Y)["loss"].backward()
    assert z_t.grad is None and z_s.grad is not None


def test_bad_options_are_refused():
    with pytest.raises(ConfigError, match="KD form"):
        kd_loss(Z_S, Z_T, Y, form="mixed")
    with pytest.raises(ConfigError, match="temperature"):
        kd_loss(Z_S, Z_T, Y, temperature=0.0)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        kd_loss(Z_S, Z_T, Y, weight=1.5, form="convex")
    with pytest.raises(ModelError, match="class count"):
        kd_loss(Z_S, Z_T[:, :3], Y)
    with pytest.raises(ConfigError, match="KD form"):
        DistillationTask(nn.Linear(2, 2), form="mixed")


def test_task_freezes_teacher_and_trains_student():
    torch.manual_seed(0)
    teacher = build("resnet20", width=0.25).train()
    student = build("resnet20", width=0.25, neuron="lif", timesteps=2)
    stats = teacher.bn1.running_mean.clone()
    task = DistillationTask(teacher)
    grad_mode = []
    teacher.register_forward_hook(lambda *_: grad_mode.append(torch.is_grad_enabled()))
    teacher.train()  # a training loop calling .train() on everything must not matter
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    out = task(student, images, labels)
    assert set(out) >= {"loss", "output", "ce_loss", "kd_loss"}
    assert out["output"].shape == (4, 10) and out["loss"].dim() == 0
    out["loss"].backward()
    assert grad_mode == [False]  # the teacher ran under torch.no_grad()
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert torch.equal(teacher.bn1.running_mean, stats)  # eval mode: no BN statistics update
    assert student.conv1.weight.grad is not None and student.conv1.weight.grad.abs().sum() > 0
    assert not out["kd_loss"].requires_grad and out["kd_loss"].item() > 0


def test_kd_only_training_pulls_student_to_teacher():
    torch.manual_seed(0)
    teacher, student = nn.Linear(8, 5), nn.Linear(8, 5)
    task = DistillationTask(teacher, weight=1.0, form="convex")  # pure soft-target loss
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    x, y = torch.randn(32, 8), torch.randint(0, 5, (32,))
    first = task(student, x, y)["kd_loss"].item()
    for _ in range(50):
        opt.zero_grad()
        task(student, x, y)["loss"].backward()
        opt.step()
    assert task(student, x, y)["kd_loss"].item() < 0.1 * first

"""Learning-rate schedules: reference values and exact continuation from a state dict."""

import math

import pytest
import torch

from spikebridge.config import OptimConfig
from spikebridge.engine.optim import build_optimizer, build_scheduler, lr_factor


def test_multistep_milestones_are_fractions_of_the_epochs():
    cfg = OptimConfig(schedule="multistep", milestones=(0.3, 0.6), gamma=0.1, warmup=0.0)
    f = lr_factor(cfg, epochs=10, steps_per_epoch=5)  # milestones at epochs 3 and 6
    assert f(0) == 1.0 and f(14) == 1.0
    assert f(15) == pytest.approx(0.1) and f(29) == pytest.approx(0.1)
    assert f(30) == pytest.approx(0.01) and f(49) == pytest.approx(0.01)


def test_multistep_never_decays_before_the_first_epoch():
    cfg = OptimConfig(schedule="multistep", milestones=(0.3, 0.6, 0.8), warmup=0.0)
    f = lr_factor(cfg, epochs=1, steps_per_epoch=4)
    assert [f(s) for s in range(4)] == [1.0] * 4  # round(0.3 * 1) = 0 is clamped to 1


def test_cosine_and_onecycle_reference_values():
    cos = lr_factor(OptimConfig(schedule="cosine", warmup=0.0), epochs=4, steps_per_epoch=25)
    assert cos(0) == 1.0 and cos(50) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0)
    one = lr_factor(OptimConfig(schedule="onecycle"), epochs=4, steps_per_epoch=25)
    assert one(0) == pytest.approx(1 / 25) and one(30) == pytest.approx(1.0)
    assert one(15) == pytest.approx((1 + 1 / 25) / 2)  # cosine half-way of the warm-up
    assert one(100) == pytest.approx(1 / 25e4)
    assert all(one(s) <= 1.0 for s in range(101))


def test_cosine_warmup_reference_values():
    """Default cosine: linear warm-up over 10 of 100 steps, then a half cosine over 90."""
    cfg = OptimConfig(schedule="cosine", warmup=0.1)
    f = lr_factor(cfg, epochs=4, steps_per_epoch=25)
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5)
    assert f(100) == pytest.approx(0.0)


def test_default_schedule_is_cosine_with_warmup_and_multistep_warms_too():
    cfg = OptimConfig()
    assert (cfg.optimizer, cfg.schedule, cfg.warmup, cfg.lr) == ("sgd", "cosine", 0.05, 0.1)
    f = lr_factor(OptimConfig(schedule="multistep", warmup=0.2, milestones=(0.5,)), 2, 10)
    assert [f(0), f(3), f(9), f(10)] == pytest.approx([0.25, 1.0, 1.0, 0.1])


def test_adamw_decays_only_weight_tensors_and_has_its_own_defaults():
    cfg = OptimConfig(optimizer="adamw")
    assert (cfg.lr, cfg.weight_decay) == (2e-3, 0.05)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    decayed, plain = opt.param_groups
    assert [p.dim() for p in decayed["params"]] == [4] and decayed["weight_decay"] == 0.05
    assert sorted(p.dim() for p in plain["params"]) == [1, 1, 1] and plain["weight_decay"] == 0


def test_idsnn_paper_preset_is_the_authors_recipe_and_options_override_it():
    from spikebridge.config import load_config

    cfg = load_config(preset="idsnn-paper", overrides={"epochs": 3})
    assert (cfg.optim.schedule, cfg.optim.warmup, cfg.optim.milestones) == (
        "multistep", 0.0, (0.3, 0.6, 0.8),
    )  # fmt: skip
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.train.epochs) == (0.05, 1e-4, 3)
    assert cfg.model.conv_init == "default"
    with pytest.raises(Exception, match="unknown preset 'paper'"):
        load_config(preset="paper")


@pytest.mark.parametrize("schedule", ["multistep", "cosine", "onecycle"])
def test_scheduler_resumes_from_its_state_dict(schedule):
    cfg = OptimConfig(lr=0.1, schedule=schedule, milestones=(0.5,))
    model = torch.nn.Linear(2, 2)

    def make():
        opt = build_optimizer(model, cfg)
        return opt, build_scheduler(opt, cfg, epochs=4, steps_per_epoch=3)

    opt, sched = make()
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    opt, sched = make()
    for _ in range(5):
        opt.step()
        sched.step()
    state = (opt.state_dict(), sched.state_dict())
    opt2, sched2 = make()
    opt2.load_state_dict(state[0])
    sched2.load_state_dict(state[1])
    resumed = []
    for _ in range(7):
        resumed.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert resumed == lrs[5:]
    assert math.isclose(lrs[0], 0.1 * lr_factor(cfg, 4, 3)(0))


def test_sgd_uses_the_config():
    cfg = OptimConfig(lr=0.2, momentum=0.8, nesterov=True, weight_decay=5e-4)
    group = build_optimizer(torch.nn.Linear(2, 2), cfg).param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (
        0.2, 0.8, True, 5e-4,
    )  # fmt: skip

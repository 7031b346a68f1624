"""IDSNN initialization from a teacher (METHODS 1.2): block mapping, loop interpolation,
what is copied and what is left alone, equivalence with the teacher, clear errors."""

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from spikebridge.errors import ConfigError, ModelError
from spikebridge.methods.init_from_teacher import (
    RULE_COPY,
    RULE_INTERP,
    RULE_RANDOM,
    init_from_teacher,
    loop_interpolate,
    map_blocks,
)
from spikebridge.models import ResNet, build
from spikebridge.nn.neurons import SpikingNeuron

X = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _trained_like(model: ResNet, seed: int = 1) -> ResNet:
    """Give every BN non-default statistics and affine values, as a trained teacher has."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t in (m.weight, m.bias, m.running_mean):
                    t.copy_(torch.randn(t.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.num_batches_tracked.fill_(123)
    return model


def _tiled(w_t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Independent reference for loop interpolation: tile the teacher, then crop."""
    reps = [math.ceil(s / c) for s, c in zip(shape[:2], w_t.shape[:2], strict=False)]
    reps += [1] * (w_t.dim() - len(reps))
    return w_t.repeat(*reps)[tuple(slice(0, s) for s in shape[:2])]


def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    return model.state_dict()[name]


# --- block mapping -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_t", "n_s", "rule", "expected"),
    [
        # resnet34 (3,4,6,3) -> resnet18 (2,2,2,2)
        *[(n, 2, "first", [0, 1]) for n in (3, 4, 6)],
        (3, 2, "spread", [0, 2]),
        (4, 2, "spread", [0, 3]),
        (6, 2, "spread", [0, 5]),
        # resnet18 -> resnet34: the deeper student repeats the teacher's last block
        (2, 3, "first", [0, 1, 1]),
        (2, 4, "first", [0, 1, 1, 1]),
        (2, 6, "first", [0, 1, 1, 1, 1, 1]),
        # resnet110 (18 per stage) -> resnet20 (3): 1*17/2 = 8.5 rounds half UP to 9
        (18, 3, "first", [0, 1, 2]),
        (18, 3, "spread", [0, 9, 17]),
        # resnet20 (3) -> resnet56 (9): j*2/8 = 0, .25, .5, .75, 1, 1.25, 1.5, 1.75, 2
        (3, 9, "first", [0, 1, 2, 2, 2, 2, 2, 2, 2]),
        (3, 9, "spread", [0, 0, 1, 1, 1, 1, 2, 2, 2]),
        (5, 1, "spread", [0]),
        (5, 1, "first", [0]),
    ],
)
def test_map_blocks_hand_checked(n_t, n_s, rule, expected):
    assert map_blocks(n_t, n_s, rule) == expected


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40))
def test_spread_mapping_properties(n_t, n_s):
    idx = map_blocks(n_t, n_s, "spread")
    assert len(idx) == n_s and idx[0] == 0
    assert all(a <= b for a, b in zip(idx, idx[1:], strict=False))  # keeps relative order
    if n_s > 1:
        assert idx[-1] == n_t - 1  # first and last teacher blocks are both used
    for j, m in enumerate(idx):  # nearest teacher position, halves rounded up
        exact = j * (n_t - 1) / max(n_s - 1, 1)
        assert abs(m - exact) <= 0.5 and (m - exact != -0.5)


def test_map_blocks_rejects_bad_input():
    with pytest.raises(ConfigError, match="block mapping"):
        map_blocks(3, 2, "middle")
    with pytest.raises(ModelError, match="at least one block"):
        map_blocks(0, 2, "first")


def test_resnet34_to_resnet18_uses_mapped_blocks():
    teacher = _trained_like(build("resnet34", width=0.125))
    for rule, src in (("first", 1), ("spread", 5)):
        student = build("resnet18", width=0.125)
        report = init_from_teacher(student, teacher, blocks=rule)
        assert report.block_map[2] == [0, src]
        for key in ("conv2.weight", "bn1.running_mean"):
            assert torch.equal(
                _tensor(student, f"stages.2.1.{key}"), _tensor(teacher, f"stages.2.{src}.{key}")
            )


# --- loop interpolation ------------------------------------------------------------------


def test_loop_interpolate_hand_example():
    w_t = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).view(2, 3, 1, 1)
    wider_out_narrower_in = torch.tensor([[1.0, 2.0], [4.0, 5.0], [1.0, 2.0]]).view(3, 2, 1, 1)
    assert torch.equal(loop_interpolate(w_t, (3, 2, 1, 1)), wider_out_narrower_in)
    assert torch.equal(
        loop_interpolate(torch.tensor([7.0, 8.0]), (5,)), torch.tensor([7.0, 8, 7, 8, 7])
    )
    with pytest.raises(ModelError, match="channel"):
        loop_interpolate(w_t, (3, 2, 3, 3))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 20), st.integers(1, 20))
def test_loop_interpolate_matches_modulo_rule(co_t, ci_t, co_s, ci_s):
    w_t = torch.randn(co_t, ci_t, 3, 3)
    w_s = loop_interpolate(w_t, (co_s, ci_s, 3, 3))
    assert torch.equal(w_s, _tiled(w_t, (co_s, ci_s)))
    o, i = co_s - 1, ci_s - 1  # spot check of the formula itself on the last entry
    assert torch.equal(w_s[o, i], w_t[o % co_t, i % ci_t])


@settings(max_examples=12, deadline=None)
@given(
    st.sampled_from([0.0625, 0.125, 0.2, 0.25, 0.375, 0.5]),
    st.sampled_from([0.0625, 0.125, 0.2, 0.25, 0.375, 0.5]),
    st.sampled_from([1, 3]),
    st.sampled_from([1, 3]),
)
def test_every_model_tensor_follows_the_modulo_rule(w_teacher, w_student, c_teacher, c_student):
    teacher = _trained_like(build("resnet20", width=w_teacher, in_channels=c_teacher))
    student = build("resnet20", width=w_student, in_channels=c_student)
    report = init_from_teacher(student, teacher)
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for row in report.rows:
        if row.rule == RULE_RANDOM:
            assert row.student_param.startswith("fc.")
            continue
        expected = t_sd[row.teacher_param]
        if expected.dim() > 0:
            expected = _tiled(expected, row.student_shape)
        assert torch.equal(s_sd[row.student_param], expected), row.student_param
        assert row.rule == (RULE_COPY if row.student_shape == row.teacher_shape else RULE_INTERP)


# --- what is copied, what is left alone --------------------------------------------------


def test_bn_stats_copied_fc_and_thresholds_untouched():
    teacher = _trained_like(build("resnet34", width=0.25))
    student = build("resnet18", width=0.125, neuron="lif", timesteps=2, num_classes=7)
    fc_before = {k: v.clone() for k, v in student.fc.state_dict().items()}
    neurons = [m for m in student.modules() if isinstance(m, SpikingNeuron)]
    buffers_before = [(m.threshold.clone(), m.phi.clone()) for m in neurons]
    report = init_from_teacher(student, teacher)
    bn_s, bn_t = student.stages[1][0].bn2, teacher.stages[1][0].bn2
    assert torch.equal(bn_s.running_mean, bn_t.running_mean[:16])
    assert torch.equal(bn_s.running_var, bn_t.running_var[:16])
    assert bn_s.num_batches_tracked.item() == 123
    # tdBN γ (initialized to θ = 0.5) is overwritten by the teacher's BN weight
    assert torch.equal(student.bn1.weight, teacher.bn1.weight[:8])
    for k, v in student.fc.state_dict().items():
        assert torch.equal(v, fc_before[k])
    for m, (th, phi) in zip(neurons, buffers_before, strict=True):
        assert torch.equal(m.threshold, th) and torch.equal(m.phi, phi)
    random = {r.student_param for r in report.rows if r.rule == RULE_RANDOM}
    assert random == {"fc.weight", "fc.bias"}
    assert report.num_random == 2 and report.num_copied == len(report.rows) - 2


def test_same_architecture_ann_student_reproduces_teacher_features():
    torch.manual_seed(0)
    teacher = _trained_like(build("resnet20", width=0.25)).eval()
    torch.manual_seed(1)
    student = build("resnet20", width=0.25, num_classes=5).eval()
    assert not torch.equal(student.features(X), teacher.features(X))
    report = init_from_teacher(student, teacher)
    assert report.count(RULE_INTERP) == 0
    assert torch.equal(student.features(X), teacher.features(X))
    assert student.fc.weight.shape != teacher.fc.weight.shape


@pytest.mark.parametrize("width", [0.125, 0.5])
def test_spiking_student_of_other_width_runs(width):
    teacher = _trained_like(build("resnet34", width=0.25))
    student = build("resnet18", width=width, neuron="lif", timesteps=2)
    init_from_teacher(student, teacher)
    out = student(X)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert student.conv1.weight.grad is not None


def test_shortcuts_flag():
    teacher = _trained_like(build("resnet20", width=0.25))
    torch.manual_seed(3)
    student = build("resnet20", width=0.5)
    before = student.stages[1][0].shortcut.conv.weight.clone()
    report = init_from_teacher(student, teacher, shortcuts=False)
    rows = {r.student_param: r for r in report.rows}
    assert torch.equal(student.stages[1][0].shortcut.conv.weight, before)
    assert rows["stages.1.0.shortcut.bn.running_mean"].rule == RULE_RANDOM
    assert rows["stages.1.0.conv1.weight"].rule == RULE_INTERP
    report = init_from_teacher(student, teacher, shortcuts=True)
    w_t = teacher.stages[1][0].shortcut.conv.weight
    assert torch.equal(student.stages[1][0].shortcut.conv.weight, _tiled(w_t, (16, 8)))
    assert {r.student_param: r for r in report.rows}[
        "stages.1.0.shortcut.bn.weight"
    ].rule == RULE_INTERP


def test_shortcut_kind_mismatch_is_left_random_and_noted():
    # a one-block-per-stage teacher: with "first", student blocks 1 and 2 both take block 0,
    # whose projection shortcut has no counterpart in the student's identity blocks
    teacher = _trained_like(ResNet("basic", (1, 1, 1), (16, 32, 64), width=0.25))
    student = build("resnet20", width=0.25)
    report = init_from_teacher(student, teacher)
    assert any("stages.1.0.shortcut (projection) unused" in n for n in report.notes)
    assert student(X).shape == (4, 10)
    # and the other way round: a student projection over a teacher identity stays random
    teacher = build("resnet20", width=0.25)
    teacher.stages[1][0].shortcut = None
    before = student.stages[1][0].shortcut.conv.weight.clone()
    report = init_from_teacher(student, teacher)
    assert torch.equal(student.stages[1][0].shortcut.conv.weight, before)
    assert any("stages.1.0.shortcut left random" in n for n in report.notes)
    assert "note: stages.1.0.shortcut left random" in report.to_markdown()


def test_smaller_to_larger_three_stage():
    teacher = _trained_like(build("resnet20", width=0.125))
    student = build("resnet56", width=0.25, neuron="lif", timesteps=2)
    report = init_from_teacher(student, teacher, blocks="spread")
    assert report.block_map == [[0, 0, 1, 1, 1, 1, 2, 2, 2]] * 3
    w_t = teacher.stages[2][1].conv1.weight
    assert torch.equal(student.stages[2][5].conv1.weight, _tiled(w_t, (16, 16)))
    assert torch.isfinite(student(X)).all()


# --- report ------------------------------------------------------------------------------


def test_report_table_and_dict():
    teacher, student = build("resnet34", width=0.125), build("resnet18", width=0.25)
    report = init_from_teacher(student, teacher)
    text = str(report)
    assert text == report.to_markdown()
    assert (
        "| stages.1.0.conv1.weight | stages.1.0.conv1.weight | [32, 16, 3, 3] | [16, 8, 3, 3] | loop-interp |"
        in text
    )
    assert "| fc.weight | - | [10, 128] | - | random (not copied) |" in text
    d = report.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert sum(d["counts"].values()) == len(d["rows"]) == len(report.rows)
    assert d["counts"][RULE_RANDOM] == report.num_random == 2
    n_tensors = len(list(student.parameters())) + 3 * sum(
        isinstance(m, nn.BatchNorm2d) for m in student.modules()
    )
    assert len(report.rows) == n_tensors  # every parameter and BN statistic is accounted for


# --- errors ------------------------------------------------------------------------------


def test_kernel_mismatch_names_both_layers_and_writes_nothing():
    teacher, student = build("resnet20", width=0.25), build("resnet20", width=0.25)
    student.stages[2][2].conv2 = nn.Conv2d(16, 16, 5, padding=2, bias=False)
    stem = student.conv1.weight.clone()
    with pytest.raises(
        ModelError, match=r"student layer stages\.2\.2\.conv2.*teacher layer stages\.2\.2\.conv2"
    ):
        init_from_teacher(student, teacher)
    assert torch.equal(student.conv1.weight, stem)  # validated before writing


def test_basic_vs_bottleneck_is_refused():
    with pytest.raises(
        ModelError, match=r"stages\.0\.0 is a BasicBlock.*stages\.0\.0 is a Bottleneck"
    ):
        init_from_teacher(build("resnet18", width=0.0625), build("resnet50", width=0.0625))


def test_stage_count_mismatch_is_refused():
    with pytest.raises(ModelError, match="4 stages but the student has 3"):
        init_from_teacher(build("resnet20", width=0.25), build("resnet18", width=0.0625))
    with pytest.raises(ModelError, match="spikebridge ResNet"):
        init_from_teacher(nn.Linear(2, 2), build("resnet18", width=0.0625))

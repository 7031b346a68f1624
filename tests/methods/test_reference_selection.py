"""ttrbr's tuning reference chosen on held-out labelled images (``tune_reference="select"``)."""

import copy

import pytest
import torch
from conversion_helpers import calibrate_bn
from torch import nn

from spikebridge.errors import ConfigError, DataError
from spikebridge.methods.convert import convert
from spikebridge.methods.reference_selection import (
    held_out_correct,
    labelled_batches,
    select_reference,
)
from spikebridge.models import build


class FixedLogits(nn.Module):
    """Answers class ``answer[i]`` for the i-th image of every batch (an SNN stand-in)."""

    def __init__(self, answers: list[int], timesteps: int = 4) -> None:
        super().__init__()
        self.answers, self.timesteps = answers, timesteps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(torch.tensor(self.answers[: x.shape[0]]), 3).float()


def _batches(labels: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.zeros(len(labels), 1, 2, 2), torch.tensor(labels))]


def test_held_out_correct_counts_right_answers():
    assert held_out_correct(FixedLogits([0, 1, 2, 2]), _batches([0, 1, 1, 2])) == 3


def test_select_keeps_the_more_accurate_and_the_first_on_ties():
    data = _batches([0, 1, 1, 2])
    worse, better = FixedLogits([0, 0, 0, 0]), FixedLogits([0, 1, 1, 0])
    report = select_reference({"ann": worse, "clip": better}, data, 4)
    assert report.chosen == "clip" and report.images == 4 and report.timesteps == 4
    assert report.accuracy == {"ann": 0.25, "clip": 0.75}
    tie = select_reference({"ann": better, "clip": copy.deepcopy(better)}, data, 4)
    assert tie.chosen == "ann"


@pytest.mark.parametrize(
    "bad",
    [[torch.zeros(2, 1, 2, 2)], [(torch.zeros(2, 1, 2, 2), torch.zeros(3))], []],
)
def test_selection_data_must_be_labelled_image_batches(bad):
    with pytest.raises(DataError):
        labelled_batches(bad)


@pytest.fixture(scope="module")
def qcfs_ann():
    """A BN-calibrated QCFS (L = 2) resnet20, calibration images and labelled held-out ones."""
    torch.manual_seed(5)
    ann = build("resnet20", width=0.25, activation="qcfs", qcfs_levels=2, threshold=1.5)
    x = torch.randn(12, 3, 16, 16)
    ann = calibrate_bn(ann, x)
    held_x = torch.randn(10, 3, 16, 16)
    with torch.no_grad():  # labels the ANN mostly gets right, so the two references can differ
        labels = ann(held_x).argmax(-1)
    labels[:3] = (labels[:3] + 1) % 10
    return ann, x, [(held_x[:6], labels[:6]), (held_x[6:], labels[6:])]


def test_select_tunes_towards_both_references_and_keeps_the_reported_winner(qcfs_ann):
    ann, x, held_out = qcfs_ann
    snn = convert(ann, "ttrbr", x, 3, tune_epochs=1, batch_size=6, selection_data=held_out)
    report = snn.conversion_report
    assert report.selection is not None and set(report.selection.accuracy) == {"ann", "clip"}
    best = max(report.selection.accuracy.values())
    assert report.selection.accuracy[report.selection.chosen] == best
    assert report.tuning.reference == report.selection.chosen
    assert report.calibration.reference == report.selection.chosen
    # the returned model is the candidate that was scored: same held-out accuracy
    assert held_out_correct(snn, held_out) / 10 == pytest.approx(best)
    for reference in ("ann", "clip"):  # each candidate is what a fixed reference gives
        fixed = convert(ann, "ttrbr", x, 3, tune_epochs=1, batch_size=6, tune_reference=reference)
        assert held_out_correct(fixed, held_out) / 10 == pytest.approx(
            report.selection.accuracy[reference]
        )


def test_select_needs_labelled_data_except_where_both_references_are_one_network(qcfs_ann):
    ann, x, _ = qcfs_ann
    with pytest.raises(ConfigError, match="selection_data"):
        convert(ann, "ttrbr", x, 3, tune_epochs=0, tune_reference="select")
    with pytest.raises(ConfigError, match="tuning reference"):
        convert(ann, "ttrbr", x, 3, tune_epochs=0, tune_reference="teacher")
    # no selection data and no reference given: auto, as before
    assert convert(ann, "ttrbr", x, 3, tune_epochs=0).conversion_report.selection is None
    torch.manual_seed(5)
    relu = calibrate_bn(build("resnet20", width=0.25), x)  # its clip twin is itself
    snn = convert(relu, "ttrbr", x, 3, tune_epochs=0, tune_reference="select")
    assert snn.conversion_report.selection is None
    assert snn.conversion_report.tuning.reference == "ann"

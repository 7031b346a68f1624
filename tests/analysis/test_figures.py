"""Report figures a reviewer would accept: 0-100 % accuracy axes, chance and reference lines,
integer epoch / time-step ticks, energy comparisons with T and accuracy on both sides, and no
energy ratio for a model near chance (checked on the matplotlib Figure objects)."""

from __future__ import annotations

import json

import pytest

from spikebridge.analysis.figures import (
    EnergySides,
    References,
    plot_curves,
    plot_firing_rates,
    plot_operations,
    plot_timesteps,
    ratio_withheld,
)
from spikebridge.analysis.report import write_report

TEN = References(10, ("ANN before conversion", 0.85))
RECORD = {"epoch": 1, "train_loss": 2.3, "val_loss": 2.29, "train_accuracy": 0.1,
          "val_accuracy": 0.098, "test_accuracy": 0.0995, "lr": 0.1}  # fmt: skip
MEASURED = {"macs_per_image": 4e7, "ann_energy_estimate_uj": 184.0, "sops_per_image": 1e7,
            "first_layer_macs_per_image": 1e6, "energy_estimate_uj": 13.6}  # fmt: skip


def _labels(ax) -> list[str]:
    return [line.get_label() for line in ax.get_lines()]


def _ticks(ax) -> list[float]:
    low, high = ax.get_xlim()
    return [t for t in ax.get_xticks() if low <= t <= high]


def test_one_epoch_curves_have_one_integer_tick_and_a_full_accuracy_axis(tmp_path) -> None:
    fig = plot_curves([RECORD], tmp_path / "c.png", TEN)
    loss_ax, acc_ax, lr_ax = fig.axes
    for ax in (loss_ax, acc_ax, lr_ax):
        assert _ticks(ax) == [1.0]  # not 0.945 ... 1.05
    assert acc_ax.get_ylim() == (0.0, 100.0)
    labels = _labels(acc_ax)
    assert "chance (1/10 = 10.0 %)" in labels
    assert "ANN before conversion: 85.0 %" in labels
    chance = acc_ax.get_lines()[labels.index("chance (1/10 = 10.0 %)")]
    assert list(chance.get_ydata()) == [10.0, 10.0]


def test_many_epochs_get_whole_number_ticks(tmp_path) -> None:
    records = [{**RECORD, "epoch": e} for e in range(1, 41)]
    fig = plot_curves(records, tmp_path / "c.png", References(10))
    ticks = _ticks(fig.axes[1])
    assert len(ticks) >= 3 and all(t == int(t) for t in ticks)
    assert not any("ANN" in label for label in _labels(fig.axes[1]))  # no reference: no line


def test_timestep_plot_axis_chance_and_reference(tmp_path) -> None:
    curves = {"summary.json": {1: 0.093, 2: 0.1}}  # a chance-level model stays flat at ~10 %
    fig = plot_timesteps(curves, tmp_path / "t.png", References(10, ("teacher ANN", 0.9)))
    (ax,) = fig.axes
    assert ax.get_ylim() == (0.0, 100.0)
    assert _ticks(ax) == [1.0, 2.0]
    assert {"chance (1/10 = 10.0 %)", "teacher ANN: 90.0 %"} <= set(_labels(ax))


def test_firing_plot_names_its_t(tmp_path) -> None:
    fig = plot_firing_rates({"act1": 0.1, "fc_in": 0.05}, tmp_path / "f.png", 0.08, 4, 512)
    assert fig.axes[0].get_title() == "Firing rate per layer at T = 4, 512 images"
    assert fig.axes[0].get_xlim()[0] == 0


@pytest.mark.parametrize(
    "snn, ann, withheld",
    [
        (None, None, True),  # accuracy unknown
        (0.149, None, True),  # 4.9 points above chance (10 %)
        (0.151, None, False),
        (0.40, 0.85, True),  # below half the ANN's accuracy
        (0.43, 0.85, False),
    ],
)
def test_the_energy_ratio_is_withheld_near_chance(snn, ann, withheld) -> None:
    reason = ratio_withheld(snn, References(10), ann)
    assert (reason is not None) == withheld


def _texts(ax) -> str:
    return " ".join(t.get_text() for t in ax.texts)


def test_energy_chart_names_t_and_accuracy_of_both_sides(tmp_path) -> None:
    sides = EnergySides(4, 0.80, 0.85, ann_trained=True)
    fig = plot_operations(MEASURED, tmp_path / "o.png", sides, TEN)
    energy_ax = fig.axes[1]
    names = [t.get_text() for t in energy_ax.get_xticklabels()]
    assert names == ["ANN (trained, T = 1)\nacc 85.0 %", "SNN at T = 4\nacc 80.0 %"]
    assert "ANN / SNN energy: 13.5x" in _texts(energy_ax)


def test_energy_chart_of_a_chance_model_against_an_untrained_ann(tmp_path) -> None:
    sides = EnergySides(4, 0.102, None, ann_trained=False)
    fig = plot_operations(MEASURED, tmp_path / "o.png", sides, References(10))
    energy_ax = fig.axes[1]
    text = _texts(energy_ax)
    assert "ratio withheld" in text and "chance" in text
    assert "13.5x" not in text
    names = [t.get_text() for t in energy_ax.get_xticklabels()]
    assert "not a trained ANN" in names[0] and names[1] == "SNN at T = 4\nacc 10.2 %"


def _run_folder(tmp_path, accuracy: float, **summary):
    """A finished-looking folder: config + summary with per-t measurements."""
    config = {"model": {"name": "resnet20", "neuron": "lif", "timesteps": 2, "num_classes": 10},
              "data": {"dataset": "fashion-mnist"}}  # fmt: skip
    by_t = {"accuracy_by_timestep": {"1": accuracy - 0.01, "2": accuracy},
            "sops_by_timestep": {"1": 4e6, "2": 1e7},
            "first_layer_macs_by_timestep": {"1": 5e5, "2": 1e6},
            "energy_by_timestep": {"1": 5.9, "2": 13.6},
            "firing_rate_by_timestep": {"1": 0.05, "2": 0.08}}  # fmt: skip
    full = {**MEASURED, **by_t, "test_accuracy": accuracy, "measured_timesteps": 2,
            "measured_images": 64, "timesteps": 2, **summary}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "summary.json").write_text(json.dumps(full))
    return write_report(tmp_path).read_text()


def test_report_withholds_the_ratio_of_a_chance_level_run(tmp_path) -> None:
    text = _run_folder(tmp_path, 0.11)
    assert "| chance level (1/10) | 10 % |" in text
    assert "SNN at T = 2 (accuracy 11 %)" in text
    assert "No energy ratio is given" in text and "within 5 points of chance" in text
    assert "a MAC count, not a trained network" in text
    assert "| 2 | 11 % | 0.08 | 10 M | 13.6 | withheld |" in text
    assert "x |" not in text  # no ratio anywhere in the per-t table


def test_report_gives_the_ratio_of_a_working_converted_run(tmp_path) -> None:
    text = _run_folder(tmp_path, 0.8, ann_accuracy=0.85)
    assert "the trained ANN (T = 1, accuracy 85 %)" in text
    assert "ANN / SNN energy: 13.5x" in text
    assert "| 2 | 80 % | 0.08 | 10 M | 13.6 | 13.5x |" in text
    assert "| 1 | 79 % | 0.05 | 4 M | 5.9 | 31.2x |" in text


def test_loss_and_learning_rate_axes_start_at_zero_with_the_uniform_guess_loss(tmp_path) -> None:
    loss_ax, _, lr_ax = plot_curves([RECORD], tmp_path / "c.png", TEN).axes
    assert loss_ax.get_ylim()[0] == 0 and lr_ax.get_ylim()[0] == 0
    assert "cross-entropy of a uniform guess: ln 10 = 2.30" in _labels(loss_ax)


def test_firing_bars_too_short_to_see_carry_their_value(tmp_path) -> None:
    rates = {"a": 0.2, "silent": 0.0, "faint": 1e-4}
    fig = plot_firing_rates(rates, tmp_path / "f.png", 0.1, 4, 8)
    assert {t.get_text().strip() for t in fig.axes[0].texts} == {"0: no spike", "0.0001"}


def test_an_old_run_folder_without_per_t_figures_is_still_reported(tmp_path) -> None:
    config = {"model": {"name": "resnet20", "neuron": "lif", "timesteps": 4}}
    old = {**MEASURED, "test_accuracy": 0.8, "timesteps": 4, "measured_timesteps": 4,
           "accuracy_by_timestep": {"4": 0.8}}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "summary.json").write_text(json.dumps(old))
    text = write_report(tmp_path).read_text()
    assert "`summary.json` has figures at T = 4 only" in text
    assert "SNN at T = 4 (accuracy 80 %)" in text

"""The demo's comparison rows: accuracy at the row's T, operations only where measured."""

from spikebridge.demo import _row, format_table

SNN = {
    "accuracy_by_timestep": {"1": 0.5, "4": 0.7, "8": 0.8},
    "measured_timesteps": 4, "firing_rate": 0.2, "sops_per_image": 2e6,
    "macs_per_image": 5e6, "energy_estimate_uj": 1.8, "ann_energy_estimate_uj": 23.0,
}  # fmt: skip
ANN = {"test_accuracy": 0.9, "macs_per_image": 5e6, "ann_energy_estimate_uj": 23.0}


def test_snn_rows_take_the_accuracy_at_their_t_and_operations_only_at_the_measured_t():
    at4, at8 = _row("snn", SNN, 4), _row("snn", SNN, 8)
    assert (at4["test_accuracy"], at8["test_accuracy"]) == (0.7, 0.8)
    assert (at4["sops_per_image"], at4["energy_uj"]) == (2e6, 1.8)
    assert at8["sops_per_image"] is None and at8["energy_uj"] is None


def test_ann_rows_show_the_ann_energy_and_the_table_prints_percentages():
    row = _row("ann", ANN, 1)
    assert (row["T"], row["energy_uj"]) == ("-", 23.0)
    table = format_table([row, _row("snn", SNN, 4)])
    assert "| ann | - | 90.00 % |" in table and "| snn | 4 | 70.00 % | 0.200 | 2.00 M |" in table

"""Measurement wired into runs: summary.json / eval.json carry firing rates, SOPs, MACs and
the energy estimate (METHODS 3); ``measure_run`` bounds the images; TensorBoard is optional."""

import dataclasses
import json
import math
import sys
import types

import pytest
import torch

from spikebridge.analysis import count_macs, energy_estimate, measure_snn
from spikebridge.cli import main
from spikebridge.config import TrainConfig, build_section
from spikebridge.engine import ClassificationTask, fit, load_run
from spikebridge.engine.train import TENSORBOARD_DIR, open_tensorboard
from spikebridge.errors import ConfigError
from spikebridge.models import build
from spikebridge.nn.temporal import SpikingSite
from spikebridge.runs.measure import MEASURE_IMAGES, measure_run
from spikebridge.runs.setup import setup_data

TINY = ["--dataset", "synthetic", "--model", "resnet20", "--width", "0.25", "--epochs", "1",
        "--subset", "128", "--batch-size", "32", "--no-progress", "--threads", "1"]  # fmt: skip
SNN = ["--neuron", "lif", "--timesteps", "2", "--block", "pre-add"]
SNN_KEYS = {
    "firing_rate", "firing_rate_by_layer", "silent_fraction", "sops_per_image",
    "first_layer_macs_per_image", "macs_per_image", "energy_estimate_uj",
    "ann_energy_estimate_uj", "energy_note", "measured_images", "measured_timesteps",
    "firing_rate_by_timestep", "sops_by_timestep", "first_layer_macs_by_timestep",
    "energy_by_timestep",
}  # fmt: skip
ANN_KEYS = {"macs_per_image", "ann_energy_estimate_uj", "energy_note", "measured_images"}
SYNTHETIC_TEST_IMAGES = 256  # make_synthetic's test split; fewer than MEASURE_IMAGES


def train(tmp_path_factory, name, *extra):
    out = tmp_path_factory.mktemp("runs") / name
    assert main(["train", *TINY, "--out", str(out), *extra]) == 0
    return out


@pytest.fixture(scope="module")
def snn_run(tmp_path_factory):
    return train(tmp_path_factory, "snn", *SNN)


@pytest.fixture(scope="module")
def ann_run(tmp_path_factory):
    return train(tmp_path_factory, "ann")


def read(run, name="summary.json"):
    return json.loads((run / name).read_text())


def check_snn_measurement(m, model, timesteps=2):
    assert set(m) >= SNN_KEYS
    assert m["sops_per_image"] > 0 and m["first_layer_macs_per_image"] > 0
    assert 0 <= m["firing_rate"] <= 1 and 0 <= m["silent_fraction"] <= 1
    sites = {n for n, mod in model.named_modules() if isinstance(mod, SpikingSite)}
    assert set(m["firing_rate_by_layer"]) == sites
    assert all(0 <= r <= 1 for r in m["firing_rate_by_layer"].values())
    assert m["macs_per_image"] == count_macs(model, (1, 16, 16))["macs_per_image"]
    energy = energy_estimate(
        m["macs_per_image"], m["sops_per_image"], m["first_layer_macs_per_image"]
    )
    assert math.isclose(m["energy_estimate_uj"], energy["snn_uj"], rel_tol=1e-12)
    assert math.isclose(m["ann_energy_estimate_uj"], energy["ann_uj"], rel_tol=1e-12)
    assert m["measured_images"] == min(SYNTHETIC_TEST_IMAGES, MEASURE_IMAGES)
    assert m["measured_timesteps"] == timesteps
    # the top-level figures are those of the last t, named beside them
    last = str(timesteps)
    assert m["sops_by_timestep"][last] == pytest.approx(m["sops_per_image"], rel=1e-12)
    assert m["energy_by_timestep"][last] == pytest.approx(m["energy_estimate_uj"], rel=1e-12)
    assert m["firing_rate_by_timestep"][last] == pytest.approx(m["firing_rate"], rel=1e-12)


def test_snn_summary_has_measurement(snn_run):
    model, _ = load_run(snn_run)
    check_snn_measurement(read(snn_run), model)


def test_ann_summary_has_macs_and_ann_energy_only(ann_run):
    summary = read(ann_run)
    model, _ = load_run(ann_run)
    assert set(summary) >= ANN_KEYS
    assert "firing_rate" not in summary and "sops_per_image" not in summary
    assert summary["macs_per_image"] == count_macs(model, (1, 16, 16))["macs_per_image"] > 0
    expected = energy_estimate(summary["macs_per_image"], 0.0)["ann_uj"]
    assert math.isclose(summary["ann_energy_estimate_uj"], expected, rel_tol=1e-12)


def test_eval_measures_at_the_t_it_reports_and_each_t_over_its_first_steps(snn_run, capsys):
    # the model was trained (and its summary measured) at T = 2; eval at 3 simulates 3 steps
    assert main(["eval", str(snn_run), "--timesteps", "3", "--device", "cpu"]) == 0
    report = read(snn_run, "eval.json")
    model, _ = load_run(snn_run)
    check_snn_measurement(report, model, timesteps=3)
    assert sorted(report["sops_by_timestep"]) == ["1", "2", "3"]
    # t = 2 of the 3-step pass uses the first 2 steps only: it equals the summary's T = 2 run
    summary = read(snn_run)
    for by_t, top in (("sops_by_timestep", "sops_per_image"),
                      ("energy_by_timestep", "energy_estimate_uj"),
                      ("firing_rate_by_timestep", "firing_rate")):  # fmt: skip
        assert report[by_t]["2"] == pytest.approx(summary[top], rel=1e-9), by_t
    assert report["sops_by_timestep"]["3"] > report["sops_by_timestep"]["2"]
    out = capsys.readouterr().out
    assert "SOPs/image" in out and "firing rate" in out and "estimate" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:6].strip()
            in {"1", "2", "3"}}  # fmt: skip
    assert rows["2"][5] == f"{summary['sops_per_image'] * 1e-6:.4g}"  # printed at its own t


def test_eval_of_a_list_reports_the_measurement_at_those_t_only(snn_run):
    assert main(["eval", str(snn_run), "--timesteps", "1,2", "--device", "cpu"]) == 0
    report = read(snn_run, "eval.json")
    assert report["measured_timesteps"] == 2 and sorted(report["energy_by_timestep"]) == ["1", "2"]
    summary = read(snn_run)
    assert report["sops_per_image"] == pytest.approx(summary["sops_per_image"], rel=1e-9)


def test_measure_run_stops_at_max_images_and_matches_measure_snn():
    torch.manual_seed(0)
    model = build("resnet20", num_classes=4, in_channels=1, width=0.25, neuron="lif",
                  timesteps=2, block="pre-add").eval()  # fmt: skip
    images = torch.randn(12, 1, 16, 16)
    loader = [(images[i : i + 4], torch.zeros(4, dtype=torch.long)) for i in range(0, 12, 4)]
    m = measure_run(model, loader, max_images=6)
    assert m["measured_images"] == 6
    reference = measure_snn(model, [images[:4], images[4:6]])
    for key in ("sops_per_image", "firing_rate", "silent_fraction", "energy_estimate_uj"):
        assert m[key] == pytest.approx(reference[key], rel=1e-12)
    with pytest.raises(ConfigError, match="max_images"):
        measure_run(model, loader, max_images=0)


def test_tensorboard_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'spikebridge\[tensorboard\]'"):
        open_tensorboard(tmp_path)


HAS_TB_FIELD = "tensorboard" in {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.skipif(not HAS_TB_FIELD, reason="TrainConfig has no tensorboard field yet")
def test_train_tensorboard_option(tmp_path, monkeypatch, capsys):
    out = tmp_path / "tb"
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        assert main(["train", *TINY, "--out", str(out), "--tensorboard"]) == 2
        assert "spikebridge[tensorboard]" in capsys.readouterr().err
        assert not out.exists()  # refused before the run folder was made
        return
    assert main(["train", *TINY, "--out", str(out), "--tensorboard"]) == 0
    assert any((out / TENSORBOARD_DIR).glob("events.out.tfevents.*"))


class FakeWriter:
    """Stands in for torch.utils.tensorboard.SummaryWriter (tensorboard is optional)."""

    instances: list["FakeWriter"] = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        FakeWriter.instances.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_fit_logs_every_epoch_metric_to_tensorboard(monkeypatch, tmp_path):
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    data = build_section("data", {"dataset": "synthetic", "subset": 64, "batch_size": 32})
    loaders, _ = setup_data(data, 0, torch.device("cpu"))
    train_cfg = TrainConfig(epochs=2, progress=False)
    train_cfg.tensorboard = True  # the flag fit reads (set as the train section field would)
    model = build("resnet20", num_classes=4, in_channels=1, width=0.25)
    result = fit(model, ClassificationTask(), loaders, build_section("optim", {}), train_cfg,
                 tmp_path, log=lambda _: None)  # fmt: skip
    (writer,) = FakeWriter.instances
    assert writer.log_dir == str(tmp_path / TENSORBOARD_DIR) and writer.closed
    logged = {(tag, step): value for tag, value, step in writer.scalars}
    for record in result.history:
        for key in ("train_loss", "train_accuracy", "val_accuracy", "test_accuracy", "lr"):
            assert logged[(key, record["epoch"])] == record[key]

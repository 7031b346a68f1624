"""``spikebridge export RUN --format nir``: spiking runs -> NIR files; ANN runs refused."""

import numpy as np
import pytest

from spikebridge.cli import main
from spikebridge.data.spec import DATASET_INFO
from spikebridge.engine import load_run
from spikebridge.errors import ModelError
from spikebridge.export import export_nir, import_nir

pytest.importorskip("nir")

TINY = ["--dataset", "synthetic", "--model", "resnet20", "--width", "0.25", "--epochs", "1",
        "--subset", "128", "--batch-size", "32", "--no-progress", "--threads", "1"]  # fmt: skip
INPUT_SHAPE = (1, 16, 16)  # synthetic images


def train(tmp_path_factory, name, *extra):
    out = tmp_path_factory.mktemp("runs") / name
    assert main(["train", *TINY, "--out", str(out), *extra]) == 0
    return out


@pytest.fixture(scope="module")
def lif_run(tmp_path_factory):
    return train(tmp_path_factory, "lif", "--neuron", "lif", "--timesteps", "2")


@pytest.fixture(scope="module")
def ann_run(tmp_path_factory):
    return train(tmp_path_factory, "ann", "--activation", "clip")


def check_export(run, out, target="portable"):
    args = ["export", str(run), "--format", "nir", "-o", str(out), "--nir-target", target]
    assert main(args) == 0
    graph = import_nir(out)
    model, _ = load_run(run)
    info = DATASET_INFO["synthetic"]
    expected = export_nir(model, None, INPUT_SHAPE, target=target,
                          normalization=(info.mean, info.std))  # fmt: skip
    assert set(graph.nodes) == set(expected.nodes)
    assert len(graph.edges) == len(expected.edges)
    assert graph.metadata["timesteps"] == model.timesteps
    assert graph.metadata["target"] == target
    # the dataset's mean/std are the first node: the file takes raw pixels in [0, 1]
    assert ("input", "normalize") in graph.edges
    np.testing.assert_allclose(graph.metadata["input_mean"], info.mean)
    np.testing.assert_allclose(graph.nodes["normalize"].bias, [-info.mean[0] / info.std[0]],
                               rtol=1e-6)  # fmt: skip


def test_export_lif_run(lif_run, tmp_path):
    check_export(lif_run, tmp_path / "model.nir")
    check_export(lif_run, tmp_path / "compact.nir", target="compact")


def test_export_converted_run(ann_run, tmp_path):
    converted = tmp_path / "converted"
    args = ["convert", str(ann_run), "--method", "maxnorm", "--timesteps", "2",
            "--calibration-size", "32", "--out", str(converted), "--device", "cpu"]  # fmt: skip
    if main(args) != 0:
        pytest.skip("spikebridge convert could not make a converted run folder here")
    try:
        load_run(converted)
    except ModelError as exc:
        pytest.skip(f"load_run cannot rebuild a converted folder yet: {exc}")
    check_export(converted, tmp_path / "converted.nir")


def test_export_ann_run_is_refused(ann_run, tmp_path, capsys):
    out = tmp_path / "ann.nir"
    assert main(["export", str(ann_run), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is an ANN" in err and "Traceback" not in err
    assert not out.exists()


def test_unknown_format_and_missing_folder(lif_run, tmp_path, capsys):
    assert main(["export", str(lif_run), "--format", "onnx", "-o", str(tmp_path / "m")]) == 2
    assert "export format 'onnx' is unknown; expected one of nir" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(lif_run), "-o", str(tmp_path / "no" / "m.nir")]) == 2
    assert "output folder" in capsys.readouterr().err

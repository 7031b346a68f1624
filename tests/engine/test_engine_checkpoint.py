"""Run-folder files: atomic writes, unwrapped weights, load_run and its errors."""

import json
import random

import numpy as np
import pytest
import torch

from spikebridge.engine import checkpoint as ckpt
from spikebridge.engine.checkpoint import load_run, save_weights, unwrap_state_dict
from spikebridge.errors import ModelError
from spikebridge.models import ModelConfig, build_from_config


def make_run(path, model_cfg, weights_cfg=None):
    """A run folder whose config says ``model_cfg`` and whose weights come from ``weights_cfg``."""
    path.mkdir()
    torch.manual_seed(0)
    model = build_from_config(weights_cfg or model_cfg)
    save_weights(model, path / ckpt.BEST_WEIGHTS)
    (path / ckpt.CONFIG_FILE).write_text(json.dumps({"model": model_cfg.to_dict()}))
    return model


TINY = ModelConfig(name="resnet20", width=0.25, num_classes=4, in_channels=1)


def test_load_run_rebuilds_the_model_with_identical_weights(tmp_path):
    snn = ModelConfig(**{**TINY.to_dict(), "neuron": "lif", "timesteps": 3})
    model = make_run(tmp_path / "run", snn)
    loaded, config = load_run(tmp_path / "run")
    assert config["model"]["timesteps"] == 3 and loaded.spiking and loaded.timesteps == 3
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_load_run_names_the_first_mismatching_key_and_shapes(tmp_path):
    wider = ModelConfig(**{**TINY.to_dict(), "width": 0.5})
    make_run(tmp_path / "run", wider, weights_cfg=TINY)
    with pytest.raises(ModelError, match=r"'conv1.weight' has shape \(4, 1, 3, 3\) in the file "
                       r"but \(8, 1, 3, 3\) in the model"):  # fmt: skip
        load_run(tmp_path / "run")


def test_load_run_names_a_missing_key(tmp_path):
    deeper = ModelConfig(**{**TINY.to_dict(), "name": "resnet32"})
    make_run(tmp_path / "run", deeper, weights_cfg=TINY)
    with pytest.raises(ModelError, match="the file lacks 'stages.0.3.conv1.weight'"):
        load_run(tmp_path / "run")


def test_load_run_missing_folder_or_weights(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_run(tmp_path / "nowhere")
    make_run(tmp_path / "run", TINY)
    (tmp_path / "run" / ckpt.BEST_WEIGHTS).unlink()
    with pytest.raises(ModelError, match="has no model.safetensors"):
        load_run(tmp_path / "run")
    (tmp_path / "run" / ckpt.BEST_WEIGHTS).write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        load_run(tmp_path / "run")


def test_wrapper_prefixes_are_stripped_before_saving(tmp_path):
    model = build_from_config(TINY)
    wrapped = {"_orig_mod.module." + k: v for k, v in model.state_dict().items()}
    assert unwrap_state_dict(wrapped).keys() == model.state_dict().keys()
    save_weights(wrapped, tmp_path / "w.safetensors")
    assert ckpt.load_weights(tmp_path / "w.safetensors").keys() == model.state_dict().keys()


def test_atomic_write_leaves_the_old_file_and_no_temporary_on_failure(tmp_path):
    path = tmp_path / "summary.json"
    ckpt.write_json(path, {"a": 1})

    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("{half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        ckpt.atomic_write(path, fail)
    assert ckpt.read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_rng_states_roundtrip_through_train_state(tmp_path):
    ckpt.save_train_state(tmp_path / "state.pt", {"rng": ckpt.capture_rng()})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    ckpt.restore_rng(ckpt.load_train_state(tmp_path / "state.pt")["rng"])  # weights_only load
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and (expected[1] == again[1]).all()
    assert expected[2] == again[2]

"""Run-folder files: atomic writes, unwrapped weights, load_run and its errors."""

import json
import random

import numpy as np
import pytest
import torch

from spikebridge.engine import checkpoint as ckpt
from spikebridge.engine.checkpoint import save_weights, unwrap_state_dict
from spikebridge.engine.rundir import load_run
from spikebridge.errors import ModelError, RunError
from spikebridge.models import ModelConfig, build_from_config


def make_run(path, model_cfg, weights_cfg=None):
    """A finished run folder whose config says ``model_cfg`` and whose weights come from
    ``weights_cfg``."""
    path.mkdir()
    torch.manual_seed(0)
    model = build_from_config(weights_cfg or model_cfg)
    save_weights(model, path / ckpt.BEST_WEIGHTS)
    (path / ckpt.CONFIG_FILE).write_text(json.dumps({"model": model_cfg.to_dict()}))
    (path / ckpt.SUMMARY_FILE).write_text(json.dumps({"test_accuracy": 0.5}))
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


def test_rng_states_roundtrip_through_the_checkpoint(tmp_path):
    state = {"format": ckpt.CHECKPOINT_FORMAT, "rng": ckpt.capture_rng()}
    ckpt.save_checkpoint(tmp_path / "state.pt", state)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    ckpt.restore_rng(ckpt.load_checkpoint(tmp_path / "state.pt")["rng"])  # weights_only load
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and (expected[1] == again[1]).all()
    assert expected[2] == again[2]


def test_a_checkpoint_of_another_format_or_damaged_is_refused(tmp_path):
    ckpt.save_checkpoint(tmp_path / "old.pt", {"format": 1})
    with pytest.raises(RunError, match="not a format-2 spikebridge checkpoint"):
        ckpt.load_checkpoint(tmp_path / "old.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "old.pt").read_bytes()[:40])
    with pytest.raises(RunError, match="is unreadable"):
        ckpt.load_checkpoint(tmp_path / "cut.pt")


def test_damaged_json_is_one_sentence_with_its_position(tmp_path):
    (tmp_path / "config.json").write_text('{"model": {"width": 0.5,}}')
    with pytest.raises(RunError, match=r"not valid JSON \(line 1, column 25: .*\); the file is"):
        ckpt.read_json(tmp_path / "config.json")
    (tmp_path / "m.jsonl").write_text('{"epoch": 1}\n{"epoch": \n')
    with pytest.raises(RunError, match="not valid JSON"):
        ckpt.read_jsonl(tmp_path / "m.jsonl")


def test_a_model_section_with_bad_values_is_a_run_error(tmp_path):
    make_run(tmp_path / "run", TINY)
    bad = {"model": {**TINY.to_dict(), "width": "wide"}}
    (tmp_path / "run" / ckpt.CONFIG_FILE).write_text(json.dumps(bad))
    with pytest.raises(RunError, match="describes no valid model: config key 'width' is 'wide'"):
        load_run(tmp_path / "run")

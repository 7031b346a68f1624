"""Config system: sections, YAML (nested or flat) + overrides, unknown keys, generated options."""

import argparse
from dataclasses import dataclass

import pytest

from spikebridge import config_core as C
from spikebridge.config import (
    TRAIN_SECTIONS,
    Config,
    load_config,
    option,
    register_section,
)
from spikebridge.config_cli import add_config_arguments, config_from_args
from spikebridge.errors import ConfigError
from spikebridge.models import ModelConfig


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def parse(argv, sections=TRAIN_SECTIONS):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, sections, presets=True)
    return config_from_args(parser.parse_args(argv), sections)


def test_defaults_are_typed_sections():
    cfg = load_config()
    assert isinstance(cfg.model, ModelConfig)  # reused, not redefined
    assert cfg.data.dataset == "fashion-mnist" and cfg.data.batch_size == 32
    assert cfg.optim.lr == 0.1 and cfg.optim.milestones == (0.3, 0.6, 0.8)
    assert cfg.train.device == "auto" and cfg.train.amp is True


def test_defaults_are_those_our_measurements_recommend():
    """docs/notes/results-history.md, "Defaults against our own measurements": a short run
    (3 epochs, batch 32, lr 0.1, no augmentation, clipping at 2) and QCFS with L = 4."""
    cfg = load_config()
    assert (cfg.train.epochs, cfg.data.batch_size, cfg.data.augment) == (3, 32, "none")
    assert (cfg.optim.optimizer, cfg.optim.lr, cfg.optim.grad_clip) == ("sgd", 0.1, 2.0)
    assert (cfg.optim.schedule, cfg.optim.warmup) == ("cosine", 0.05)
    assert cfg.model.qcfs_levels == 4 and ModelConfig().qcfs_levels == 4


@pytest.mark.parametrize(
    ("options", "zero_init"),
    [
        ({"activation": "qcfs"}, True),
        ({"activation": "clip", "block": "pre-add"}, True),
        ({"activation": "qcfs", "zero_init_residual": False}, False),  # a source said so
        ({"activation": "relu"}, False),
        ({"activation": "qcfs", "neuron": "if"}, False),  # spiking: off
        ({"neuron": "lif"}, False),
    ],
)
def test_clip_and_qcfs_anns_start_with_zero_initialised_residual_branches(options, zero_init):
    assert load_config(overrides=options).model.zero_init_residual is zero_init


@pytest.mark.parametrize(
    ("options", "threshold"),
    [
        ({"activation": "qcfs"}, 2.0),  # L = 4 levels of 0.5
        ({"activation": "qcfs", "threshold": "none"}, None),  # a source said so: lambda 8
        ({"activation": "qcfs", "threshold": 3.0}, 3.0),
        ({"activation": "clip"}, None),
        ({"activation": "qcfs", "neuron": "if"}, None),
    ],
)
def test_qcfs_anns_start_with_lambda_2(options, threshold):
    assert load_config(overrides=options).model.threshold == threshold


def test_a_stored_config_keeps_its_zero_init_choice():
    stored = load_config(overrides={"activation": "qcfs", "zero_init_residual": False})
    assert load_config(base=stored.to_dict()).model.zero_init_residual is False


def test_the_idsnn_paper_preset_keeps_the_papers_values_over_the_new_defaults():
    cfg = load_config(preset="idsnn-paper")
    assert (cfg.train.epochs, cfg.data.batch_size, cfg.data.augment) == (200, 64, "crop,flip")
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.05, 0.9, 1e-4)
    assert (cfg.optim.schedule, cfg.optim.milestones, cfg.optim.gamma) == (
        "multistep", (0.3, 0.6, 0.8), 0.1,
    )  # fmt: skip
    assert cfg.optim.grad_clip is None and cfg.optim.warmup == 0.0 and cfg.train.amp is True
    assert (cfg.model.conv_init, cfg.model.zero_init_residual) == ("default", False)
    assert parse(["--preset", "idsnn-paper", "--epochs", "3"]).train.epochs == 3  # options win


def test_yaml_nested_and_flat_keys_with_command_line_winning(tmp_path):
    path = write(
        tmp_path,
        "model: {name: resnet20, width: 0.5}\noptim:\n  lr: 0.2\n"
        "batch-size: 16\nneuron: lif\ntimesteps: 6\nmilestones: [0.5, 0.75]\n",
    )
    cfg = parse(["--config", str(path), "--timesteps", "2", "--lr", "0.01", "--no-augment"])
    assert (cfg.model.name, cfg.model.width, cfg.model.neuron) == ("resnet20", 0.5, "lif")
    assert cfg.model.timesteps == 2 and cfg.optim.lr == 0.01  # command line wins
    assert cfg.data.batch_size == 16 and cfg.data.augment == "none"
    assert cfg.optim.milestones == (0.5, 0.75)


def test_flat_model_key_is_the_model_name(tmp_path):
    cfg = parse(["--config", str(write(tmp_path, "model: resnet32\n"))])
    assert cfg.model.name == "resnet32"
    assert parse(["--model", "resnet44", "--neuron", "none"]).model.neuron is None


def test_config_roundtrips_through_its_dict():
    cfg = load_config(overrides={"width": 0.25, "neuron": "lif", "milestones": "0.5"})
    assert load_config(base=cfg.to_dict()) == cfg
    assert cfg.to_dict()["optim"]["milestones"] == [0.5]


@pytest.mark.parametrize(
    ("source", "nearest"),
    [
        ({"widht": 0.5}, "'width'"),
        ({"batchsize": 3}, "'batch_size'"),
        ({"optim": {"lrr": 0.1}}, "'optim.lr'"),
        ({"model.timestep": 2}, "'model.timesteps'"),
    ],
)
def test_unknown_key_names_the_nearest_valid_key(source, nearest):
    with pytest.raises(ConfigError, match=f"did you mean {nearest}"):
        load_config(overrides=source)


def test_unknown_yaml_key_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'epoch'.*'epochs'"):
        parse(["--config", str(write(tmp_path, "epoch: 3\n"))])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lr": "fast"}, "'lr' is 'fast'; expected a finite number"),
        ({"lr": "nan"}, "'lr' is 'nan'; expected a finite number"),
        ({"width": float("inf")}, "'width' is inf; expected a finite number"),
        ({"width": 0}, "model option 'width' is 0.0; expected a finite number > 0"),
        ({"width": -0.5}, "model option 'width' is -0.5"),
        ({"timesteps": 0}, "model option 'timesteps' is 0; expected an integer >= 1"),
        ({"threshold": 0.0}, "model option 'threshold' is 0.0; expected a finite number > 0"),
        ({"epochs": 2.5}, "'epochs' is 2.5; expected an integer"),
        ({"schedule": "linear"}, "expected one of cosine, multistep, onecycle"),
        ({"neuron": "izhikevich"}, "expected one of none, lif, if"),
        ({"milestones": "0.8,0.2"}, "increasing fractions"),
        ({"batch_size": 0}, "batch_size is 0"),
    ],
)
def test_bad_values_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def test_model_config_refuses_impossible_values_when_built_directly():
    with pytest.raises(ConfigError, match="model option 'width' is nan"):
        ModelConfig(width=float("nan"))
    with pytest.raises(ConfigError, match="model option 'qcfs_levels' is 0"):
        ModelConfig(qcfs_levels=0)
    assert ModelConfig(width=0.25, timesteps=1, threshold=None).width == 0.25


@pytest.mark.parametrize(
    ("text", "where"),
    [("optim: {lr: 0.1\n", "line 2, column 1: expected ',' or '}'"),
     ("optim:\n  lr: 0.1\n   x: 2\n", "line 3, column 5: mapping values are not allowed")],
)  # fmt: skip
def test_yaml_syntax_errors_are_one_line_with_the_position(tmp_path, text, where):
    with pytest.raises(ConfigError) as info:
        parse(["--config", str(write(tmp_path, text))])
    assert "\n" not in str(info.value) and f"is not valid YAML ({where}" in str(info.value)


def test_string_values_are_coerced_by_field_type():
    cfg = load_config(overrides={"subset": "100", "val_size": "0.2", "threshold": "none"})
    assert cfg.data.subset == 100 and cfg.data.val_size == 0.2 and cfg.model.threshold is None
    assert load_config(overrides={"val_size": "50"}).data.val_size == 50  # a count


def test_help_shows_every_option_with_its_default():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, TRAIN_SECTIONS)
    text = " ".join(parser.format_help().split())
    for expected in [
        "--batch-size BATCH_SIZE training batch size",
        "(default: 32)",
        "--qcfs-levels QCFS_LEVELS quantization levels L of the qcfs activation (4 in every "
        "run of docs/RESULTS.md) (default: 4)",
        "(default: on for clip/qcfs ANNs, else off)",
        "(default: lif 0.5, if 1.0)",
        "--milestones MILESTONES",
        "(default: 0.3,0.6,0.8)",
        "--progress, --no-progress",
        "--neuron {none,lif,if}",
    ]:
        assert expected in text
    hidden = {"num_classes", "in_channels"}
    for name in set(C.SECTIONS["model"].field_names()) - hidden - {"name"}:
        assert "--" + name.replace("_", "-") + " " in text
    assert "--num-classes" not in text  # comes from the dataset


@pytest.fixture
def isolated_registry(monkeypatch):
    monkeypatch.setattr(C, "SECTIONS", dict(C.SECTIONS))
    monkeypatch.setattr(C, "_FLAT", {k: list(v) for k, v in C._FLAT.items()})


def test_a_new_section_is_one_registered_dataclass(isolated_registry, tmp_path):
    @register_section("toy")
    @dataclass
    class ToyConfig:
        toy_weight: float = option(0.3, "weight w of the KD term")
        toy_form: str = option("additive", "loss form", ("additive", "convex"))

    sections = (*TRAIN_SECTIONS, "toy")
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, sections)
    assert "weight w of the KD term (default: 0.3)" in " ".join(parser.format_help().split())
    path = write(tmp_path, "toy: {toy_form: convex}\ntoy_weight: 0.5\n")
    cfg = config_from_args(
        parser.parse_args(["--config", str(path), "--toy-weight", "0.7"]), sections
    )
    assert (cfg.toy.toy_weight, cfg.toy.toy_form) == (0.7, "convex")
    with pytest.raises(ConfigError, match="belongs to the 'toy' section"):
        load_config(TRAIN_SECTIONS, overrides={"toy_weight": 0.1})


def test_a_flat_name_may_repeat_across_sections_but_not_within_a_command(isolated_registry):
    """``eval`` and ``train`` both have a ``device``; one command never combines two
    sections that share a name (which of them would ``--lr`` set?)."""

    @dataclass
    class Clash:
        lr: float = 0.1

    register_section("other", Clash)
    assert load_config(("other",), overrides={"lr": 0.5}).other.lr == 0.5
    assert load_config(("optim",), overrides={"lr": 0.5}).optim.lr == 0.5
    with pytest.raises(ConfigError, match="both use the name 'lr'"):
        load_config(("optim", "other"))
    with pytest.raises(ConfigError, match="registered twice"):
        register_section("other", Clash)
    # a command's own (standalone) section is no key source of a run's config
    import spikebridge.config_commands  # noqa: F401 - registers eval, compare, ...

    assert "eval" in C.SECTIONS and "eval" not in C.shared_sections()
    assert {"data", "model", "optim", "train", "other"} <= set(C.shared_sections())


def test_config_is_read_only_and_replace_validates():
    cfg = load_config()
    with pytest.raises(AttributeError):
        cfg.data = None
    assert cfg.replace("model", width=0.5).model.width == 0.5
    assert cfg.model.width == 1.0
    with pytest.raises(ConfigError):
        cfg.replace("optim", lr=-1.0)
    assert isinstance(cfg, Config) and cfg.sections == TRAIN_SECTIONS

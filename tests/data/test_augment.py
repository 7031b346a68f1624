"""Augmentation as separate choices, and the old boolean spellings (deprecated)."""

from __future__ import annotations

import argparse

import pytest

import spikebridge.data.augment as augment_module
from spikebridge.config import (
    TRAIN_SECTIONS,
    add_config_arguments,
    config_from_args,
    load_config,
    stored_data_section,
)
from spikebridge.data import Augment, normalize_augment, parse_augment
from spikebridge.errors import ConfigError


@pytest.fixture(autouse=True)
def fresh_notices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the once-per-process notices afresh."""
    monkeypatch.setattr(augment_module, "_NOTICES", set())


@pytest.mark.parametrize(
    ("value", "expected"),
    [("crop,flip", "crop,flip"), ("flip, crop", "crop,flip"), ("CROP", "crop"),
     ("flip", "flip"), ("none", "none"), (False, "none"), ("false", "none"), ("", "none")],
)  # fmt: skip
def test_spellings(value: object, expected: str, capsys: pytest.CaptureFixture) -> None:
    assert normalize_augment(value) == expected  # type: ignore[arg-type]
    assert capsys.readouterr().err == ""  # none of these is deprecated


def test_parse_augment() -> None:
    assert parse_augment("crop") == Augment(crop=True) and not Augment().any
    assert parse_augment("crop,flip") == Augment(True, True) and str(Augment(True, True)) == (
        "crop,flip"
    )


@pytest.mark.parametrize("value", ["rotate", "crop,rotate", ",", "crop;flip"])
def test_unknown_transform_is_one_sentence(value: str) -> None:
    with pytest.raises(ConfigError, match="expected none or a comma-separated list of crop"):
        normalize_augment(value)


def test_true_is_deprecated_and_never_flips_digits(capsys: pytest.CaptureFixture) -> None:
    assert normalize_augment(True) == "crop,flip"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: ") and "--augment crop,flip" in err
    assert normalize_augment(True, flip_safe=False) == "crop"  # idx: digits, text
    assert "write --augment crop " in capsys.readouterr().err
    normalize_augment(True)  # the same notice again: printed once per process
    assert capsys.readouterr().err == ""


def _parse(argv: list[str]):  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, TRAIN_SECTIONS)
    return config_from_args(parser.parse_args(argv), TRAIN_SECTIONS)


@pytest.mark.parametrize(
    ("argv", "expected", "deprecated"),
    [([], "none", False), (["--augment", "crop,flip"], "crop,flip", False),
     (["--augment", "crop"], "crop", False), (["--no-augment"], "none", False),
     (["--augment"], "crop,flip", True),
     (["--augment", "--dataset", "idx", "--data-dir", "d"], "crop", True),
     (["--dataset", "idx", "--augment", "flip"], "flip", False)],
)  # fmt: skip
def test_command_line(
    argv: list[str], expected: str, deprecated: bool, capsys: pytest.CaptureFixture
) -> None:
    assert _parse(argv).data.augment == expected
    assert ("deprecated" in capsys.readouterr().err) == deprecated


def test_yaml_boolean_is_deprecated(tmp_path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  augment: true\n")
    assert load_config(yaml_path=path).data.augment == "crop,flip"
    assert "augment: crop,flip" in capsys.readouterr().err
    path.write_text("augment: crop\n")
    assert load_config(yaml_path=path).data.augment == "crop"
    assert capsys.readouterr().err == ""


def test_no_augment_takes_no_value() -> None:
    with pytest.raises(SystemExit):
        _parse(["--no-augment", "crop"])


def test_stored_runs_with_a_boolean_read_silently(capsys: pytest.CaptureFixture) -> None:
    assert stored_data_section({"augment": True}).augment == "crop,flip"
    assert stored_data_section({"augment": False}, data_dir="moved").data_dir == "moved"
    assert capsys.readouterr().err == ""

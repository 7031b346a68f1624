"""One CLI grammar (issue 22, items 3-4): every subcommand takes ``--config FILE.yaml``, refuses
an unknown key naming the nearest valid one, and lets its command line win over the file;
every old spelling still works, with a one-line notice on stderr naming the new one.

The first tests run over the subcommand table, so a new command is tested automatically."""

import argparse
import typing
from pathlib import Path

import pytest

from spikebridge import cli
from spikebridge.cli import SUBCOMMANDS, build_parser, main
from spikebridge.cli.convert import convert_args_config
from spikebridge.cli.eval import _old_timestep_list
from spikebridge.cli.train import training_config
from spikebridge.config_cli import config_from_args, deprecated_alias
from spikebridge.config_commands import EvalConfig
from spikebridge.config_core import SECTIONS
from spikebridge.errors import ConfigError


def _module(command: str):
    return next(m for m in cli.COMMAND_MODULES if m.__name__.endswith("." + command))


def _subparser(command: str) -> argparse.ArgumentParser:
    actions = build_parser()._subparsers._group_actions[0]
    return actions.choices[command]


def _positionals(command: str, tmp_path: Path) -> list[str]:
    """A placeholder for every positional argument (RUN, A B, FILE): never read, since a
    bad --config is refused first."""
    parser = _subparser(command)
    return [str(tmp_path / a.dest) for a in parser._actions if not a.option_strings]


def _config_options(command: str) -> list[argparse.Action]:
    """The options of the command's config sections (dest ``section.field``)."""
    return [a for a in _subparser(command)._actions if "." in a.dest and a.option_strings]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_refuses_an_unknown_config_key_naming_the_nearest(
    command, tmp_path, capsys
):
    options = _config_options(command)
    # a typo of one of the command's own keys, else (no settings: report) any key
    key = options[0].option_strings[-1][2:].replace("-", "_")[:-1] if options else "bogus_key"
    config = tmp_path / "c.yaml"
    config.write_text(f"{key}: 1\n")
    assert main([command, *_positionals(command, tmp_path), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: unknown config key {key!r}; ") and err.count("\n") == 1, err
    if options:
        assert f"did you mean {key + options[0].option_strings[-1][-1]!r}?" in err
    else:  # no settings at all: said so, no far-fetched suggestion
        assert err.endswith(f"the {command!r} section has no settings.\n"), err
    assert not any(tmp_path.iterdir()) or [p.name for p in tmp_path.iterdir()] == ["c.yaml"]


# Strings checked when the section is built: a dataset name against the registry (it may
# grow after import, so the option lists no choices), augment against crop / flip / none.
CHECKED_STRINGS = ("data.dataset", "data.augment")


def _string_option(command: str) -> argparse.Action | None:
    """An option of the command that takes any string (device, out, profile, ...)."""
    for action in _config_options(command):
        if action.dest in CHECKED_STRINGS:
            continue
        section, name = action.dest.split(".", 1)
        hint = typing.get_type_hints(SECTIONS[section].cls)[name]  # inherited fields too
        any_string = "str" in str(hint) and "tuple" not in str(hint)
        if any_string and not str(action.metavar or "").startswith("{"):  # no choices
            return action
    return None


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_the_command_line_wins_over_the_config_file(command, tmp_path):
    module = _module(command)
    sections = module.SECTIONS
    action = _string_option(command)
    if action is None:  # no setting at all (report): the file is read, any key refused
        (tmp_path / "c.yaml").write_text("{}\n")
        args = build_parser().parse_args(
            [command, *_positionals(command, tmp_path), "--config", str(tmp_path / "c.yaml")]
        )
        assert config_from_args(args, sections).sections == sections
        return
    section, name = action.dest.split(".", 1)
    (tmp_path / "c.yaml").write_text(f"{section}:\n  {name}: from-file\n")
    argv = [command, *_positionals(command, tmp_path), "--config", str(tmp_path / "c.yaml")]
    from_file = config_from_args(build_parser().parse_args(argv), sections)
    assert getattr(getattr(from_file, section), name) == "from-file"
    cli_args = build_parser().parse_args([*argv, action.option_strings[-1], "from-cli"])
    assert getattr(getattr(config_from_args(cli_args, sections), section), name) == "from-cli"


# ----------------------------------------------------------------------------- old spellings

# (old command line, the same in the new grammar, the notice the old one prints)
DEPRECATED = [
    (["eval", "RUN", "--timesteps", "1,2,4"], ["eval", "RUN", "--report-at", "1,2,4"],
     "warning: --timesteps with a list is deprecated; use --report-at 1,2,4"),
    (["compare", "A", "B", "--timesteps", "1,2"], ["compare", "A", "B", "--report-at", "1,2"],
     "warning: --timesteps is deprecated; use --report-at"),
    (["analyze", "RUN", "--images", "8"], ["analyze", "RUN", "--calibration-images", "8"],
     "warning: --images is deprecated; use --calibration-images"),
    (["train", "--activation", "qcfs", "--threshold", "3"],
     ["train", "--activation", "qcfs", "--initial-lambda", "3"],
     "warning: --threshold for a clip/qcfs ANN is deprecated; use --initial-lambda"),
    (["distill", "--activation", "clip", "--neuron", "none", "--threshold", "3"],
     ["distill", "--activation", "clip", "--neuron", "none", "--initial-lambda", "3"],
     "warning: --threshold for a clip/qcfs ANN is deprecated; use --initial-lambda"),
    (["convert", "--ann", "RUN", "--method", "maxnorm"], ["convert", "RUN", "--method", "maxnorm"],
     "warning: --ann is deprecated; pass the run positionally (spikebridge convert RUN "
     "--method M)"),
    (["convert", "RUN", "--method", "ttrbr", "--tune-timesteps", "4"],
     ["convert", "RUN", "--method", "ttrbr", "--tune-at", "4"],
     "warning: --tune-timesteps is deprecated; use --tune-at 4"),
]  # fmt: skip


def _resolve(argv: list[str]):
    """The config the command line ``argv`` builds (what its command's run() would use)."""
    args = build_parser().parse_args(argv)
    module = _module(argv[0])
    if argv[0] == "eval":
        _old_timestep_list(args)
    if argv[0] in ("train", "distill"):
        return training_config(args, module.SECTIONS)
    if argv[0] == "convert":
        return convert_args_config(args)
    return config_from_args(args, module.SECTIONS)


@pytest.mark.parametrize(("old", "new", "notice"), DEPRECATED, ids=[d[0][0] for d in DEPRECATED])
def test_each_old_spelling_works_with_a_one_line_notice(old, new, notice, capsys):
    assert _resolve(old) == _resolve(new[:])
    err = capsys.readouterr().err
    assert err == notice + "\n"  # once, from the old spelling only


def test_eval_report_at_and_timesteps():
    cfg = EvalConfig(timesteps=8, report_at=(4, 1, 2))
    assert cfg.requested() == [1, 2, 4] and EvalConfig(timesteps=8).requested() == 8
    with pytest.raises(ConfigError, match="--report-at asks for t = 16 but --timesteps is 8"):
        EvalConfig(timesteps=8, report_at=(16,))
    with pytest.raises(ConfigError, match="--report-at is \\[0\\]"):
        EvalConfig(report_at=(0,))


def test_initial_lambda_is_refused_where_there_is_no_lambda(capsys):
    assert main(["train", "--neuron", "lif", "--initial-lambda", "2"]) == 2
    assert "--initial-lambda sets the clipping level of a clip or qcfs ANN" in (
        capsys.readouterr().err
    )


def test_deprecated_alias_of_a_boolean_flag_and_of_a_positional(capsys):
    """The helper other commands reuse: an old ``--x`` of a new ``--x/--no-x``, and an old
    ``--ann RUN`` of a positional RUN."""
    parser = argparse.ArgumentParser()
    parser.add_argument("run", nargs="?", default=argparse.SUPPRESS)  # else None overwrites it
    parser.add_argument("--tune-phi", action=argparse.BooleanOptionalAction, default=False)
    deprecated_alias(parser, "--old-phi", "--tune-phi", const=True)
    deprecated_alias(parser, "--ann", dest="run", instead="pass the run positionally")
    args = parser.parse_args(["--old-phi", "--ann", "runs/x"])
    assert (args.tune_phi, args.run) == (True, "runs/x")
    assert capsys.readouterr().err.splitlines() == [
        "warning: --old-phi is deprecated; use --tune-phi",
        "warning: --ann is deprecated; pass the run positionally",
    ]
    assert parser.parse_args(["runs/y"]).run == "runs/y"
    assert vars(parser.parse_args([])) == {"tune_phi": False} and capsys.readouterr().err == ""


def test_a_repeatable_option_keeps_each_value_whole(tmp_path):
    """``--set`` values hold commas (``models=[a,b]``); a YAML list is the same."""
    argv = ["experiment", "f.yaml", "--set", "models=[resnet20,resnet56]", "--set", "seed=1"]
    cfg = config_from_args(build_parser().parse_args(argv), ("experiment",)).experiment
    assert cfg.overrides == ("models=[resnet20,resnet56]", "seed=1")
    (tmp_path / "c.yaml").write_text("set: ['models=[resnet20,resnet56]']\nprofile: full\n")
    args = build_parser().parse_args(["experiment", "f.yaml", "--config", str(tmp_path / "c.yaml")])
    cfg = config_from_args(args, ("experiment",)).experiment
    assert (cfg.overrides, cfg.profile) == (("models=[resnet20,resnet56]",), "full")

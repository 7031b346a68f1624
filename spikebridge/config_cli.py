"""The argparse side of the config: ``--config FILE.yaml``, one option per field, old spellings.

:func:`add_config_arguments` gives a command ``--config`` and one option per field of its
sections (help and default from the field); :func:`config_from_args` resolves the parsed
command line as defaults < ``--config`` file < options given, so the command line wins over
the file and every source is checked the same way (unknown keys refused with the nearest
valid one). :func:`deprecated_alias` keeps an old spelling working with a one-line notice on
stderr (:func:`warn_deprecated`) naming the new one; every command uses it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from spikebridge import config_core
from spikebridge.config_core import Config, Section, check_sections, resolve_config


def _default_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "none"
    return str(value)


def add_config_arguments(
    parser: argparse.ArgumentParser, sections: Iterable[str], presets: bool = True
) -> None:
    """Add ``--config FILE.yaml`` (and ``--preset`` when ``presets``) and one option per
    field of each section (with help).

    Options default to "not given" (``argparse.SUPPRESS``) so that only explicit ones
    override the YAML file; the field default is shown in the help text instead.
    """
    sections = check_sections(sections)
    parser.add_argument(
        "--config", metavar="FILE.yaml", help="YAML config (nested by section or flat keys); "
        "options given on the command line override it",
    )  # fmt: skip
    if presets:
        parser.add_argument(
            "--preset", choices=tuple(config_core.PRESETS), help="named recipe applied under --config and "
            "the options (idsnn-paper: the IDSNN authors' SGD, 200 epochs, x0.1 at 60/120/160)",
        )  # fmt: skip
    for name in sections:
        section = config_core.SECTIONS[name]  # the registry as it is now
        group = parser.add_argument_group(f"{name} options")
        for f in section.fields():
            if f.name not in section.cli_hidden:
                _add_field_option(group, section, f)


def _add_field_option(group: Any, section: Section, f: dataclasses.Field[Any]) -> None:
    flat = section.flat(f.name)
    shown = section.shown_of(f) or _default_text(f.default)
    text = f"{section.help_of(f)} (default: {shown})".replace("%", "%%")
    kwargs: dict[str, Any] = dict(dest=f"{section.name}.{f.name}", default=argparse.SUPPRESS)
    choices = section.choices_of(f)
    if f.metadata.get("optional_value"):  # --x VALUE, --x (True), --no-x (False)
        name = flat.replace("_", "-")
        group.add_argument(f"--{name}", nargs="?", const=True, metavar="LIST", help=text,
                           **kwargs)  # fmt: skip
        group.add_argument(f"--no-{name}", action="store_const", const=False,
                           help=f"same as --{name} none", **kwargs)  # fmt: skip
        return
    hint = typing.get_type_hints(section.cls)[f.name]
    if hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif choices is not None:
        kwargs["metavar"] = "{" + ",".join(_default_text(c) for c in choices) + "}"
    else:
        kwargs["metavar"] = f.metadata.get("metavar") or flat.upper()
    if f.metadata.get("repeatable"):
        kwargs["action"] = "append"  # --x A --x B: each value whole (it may hold commas)
    flags = f.metadata.get("flags", ())
    group.add_argument(*flags, "--" + flat.replace("_", "-"), help=text, **kwargs)


def given_options(args: argparse.Namespace, sections: Iterable[str]) -> dict[str, Any]:
    """The config options given explicitly on the command line, as ``{"section.field": value}``."""
    sections = tuple(sections)
    return {k: v for k, v in vars(args).items() if k.split(".", 1)[0] in sections and "." in k}


def config_from_args(
    args: argparse.Namespace, sections: Iterable[str], base: Mapping[str, Any] | None = None
) -> Config:
    """Resolve the config of a parsed command line: ``base`` < ``--config`` < options."""
    sections = tuple(sections)
    return resolve_config(
        sections, base=base, yaml_path=args.config, overrides=given_options(args, sections),
        preset=getattr(args, "preset", None),
    )  # fmt: skip


# ----------------------------------------------------------------------------- old spellings


def warn_deprecated(old: str, instead: str) -> None:
    """The one-line notice of an old spelling: ``warning: OLD is deprecated; INSTEAD``."""
    print(f"warning: {old} is deprecated; {instead}", file=sys.stderr)


class DeprecatedAlias(argparse.Action):
    """An old option string: stores into the new option's ``dest`` after the notice."""

    def __init__(self, option_strings: list[str], dest: str, instead: str, **kwargs: Any):
        if "const" in kwargs:  # an old flag without a value (e.g. --tune-phi)
            kwargs.setdefault("nargs", 0)
        super().__init__(option_strings, dest, **kwargs)
        self.instead = instead

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
        option_string: str | None = None,
    ) -> None:  # fmt: skip
        warn_deprecated(option_string or self.dest, self.instead)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def deprecated_alias(
    parser: argparse.ArgumentParser | Any,
    old: str,
    new: str | None = None,
    *,
    dest: str | None = None,
    instead: str | None = None,
    **kwargs: Any,
) -> argparse.Action:
    """Add the old option string ``old`` that sets what ``new`` sets, after the notice
    ``warning: OLD is deprecated; use NEW`` (or ``; INSTEAD``) on stderr.

    ``dest`` defaults to the dest of the option ``new`` already added to ``parser``; give it
    (and ``instead``) when the new spelling is not an option, e.g. a positional RUN:
    ``deprecated_alias(parser, "--ann", dest="run", instead="pass the run positionally")``.
    The positional then needs ``nargs="?", default=argparse.SUPPRESS`` (with a default of
    None, argparse would overwrite the old option's value when RUN is left out).
    ``const=VALUE`` makes a flag without a value (an old ``--x`` of a new ``--x/--no-x``).
    """
    if dest is None:
        if new is None:
            raise ValueError("deprecated_alias needs the new option or a dest")
        dest = _dest_of(parser, new)
    instead = instead or f"use {new}"
    kwargs.setdefault("default", argparse.SUPPRESS)
    kwargs.setdefault("help", f"deprecated: {instead}")
    return parser.add_argument(old, dest=dest, action=DeprecatedAlias, instead=instead, **kwargs)


def _dest_of(parser: Any, option: str) -> str:
    """The dest of the option string ``option`` already added to ``parser`` (or its group)."""
    actions = getattr(parser, "_option_string_actions", {})
    if option not in actions:
        raise ValueError(f"{option} is not an option of this parser; add it first")
    return actions[option].dest

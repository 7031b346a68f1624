"""The generic configuration machinery: typed dataclass sections, YAML, nearest-key errors.

A configuration is made of *sections*, one dataclass each (``data``, ``model``, ``optim``,
``train``, ``distill``, ``eval``, ...). Adding a section is one registration::

    @register_section("distill")
    @dataclass
    class DistillConfig:
        kd_weight: float = option(0.3, "weight w of the KD term (METHODS 1.3)")

Every field gets a *flat name* (its field name unless renamed), which is its YAML key and its
command-line option: ``kd_weight`` <-> ``--kd-weight`` <-> ``distill.kd_weight``. Flat names
must be unique among the sections one command combines (``eval`` and ``train`` may both have
a ``device``; ``train`` and ``model`` may not share one). Help text comes from the field's
metadata (``option(...)``), the ``help`` dict given at registration, or the source comment.

Sources, later wins: a base dict (e.g. a run's stored ``config.json``), a YAML file (nested
by section *or* flat keys), explicit overrides (command line or Python dict). Any unknown key
is a :class:`ConfigError` naming the nearest valid key. The sections themselves live in
:mod:`spikebridge.config` (training) and :mod:`spikebridge.config_commands` (the other
commands); the argparse side is :mod:`spikebridge.config_cli`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from spikebridge.errors import ConfigError


def option(
    default: Any,
    help: str,
    choices: Iterable[Any] | None = None,
    *,
    flags: Iterable[str] = (),
    shown: str | None = None,
    metavar: str | None = None,
    repeatable: bool = False,
    optional_value: bool = False,
) -> Any:
    """A dataclass field with its help text in the metadata, and optionally its allowed
    values, extra option strings (``flags=("-o",)``), the default as ``--help`` shows it
    (``shown``, for a default that depends on other options), the value's name there, and
    ``repeatable`` (a tuple field given as ``--x A --x B``, each value whole, commas kept).
    ``optional_value``: the option grew from a boolean into a value (``--augment crop,flip``):
    ``--x`` alone still gives True, ``--no-x`` False, and the section reads all three."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None,
            "flags": tuple(flags), "shown": shown, "metavar": metavar,
            "repeatable": repeatable, "optional_value": optional_value}  # fmt: skip
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Section:
    """A registered config section: its dataclass plus CLI/YAML naming and help."""

    name: str
    cls: type
    help: Mapping[str, str]
    choices: Mapping[str, tuple[Any, ...]]
    flat_names: Mapping[str, str]  # field name -> flat name (default: the field name)
    cli_hidden: frozenset[str]  # fields not offered as options (e.g. set from the dataset)
    shown: Mapping[str, str]  # field name -> the default as --help shows it, where it varies
    standalone: bool  # one command's own settings (eval, compare, ...), never in a run's config

    def fields(self) -> list[dataclasses.Field[Any]]:
        return list(fields(self.cls))

    def field_names(self) -> list[str]:
        return [f.name for f in fields(self.cls)]

    def flat(self, name: str) -> str:
        return self.flat_names.get(name, name)

    def help_of(self, f: dataclasses.Field[Any]) -> str:
        """Help text: field metadata, else the registration's dict, else the source comment."""
        return (
            f.metadata.get("help") or self.help.get(f.name) or _comments(self.cls).get(f.name, "")
        )

    def choices_of(self, f: dataclasses.Field[Any]) -> tuple[Any, ...] | None:
        return f.metadata.get("choices") or self.choices.get(f.name)

    def shown_of(self, f: dataclasses.Field[Any]) -> str | None:
        return f.metadata.get("shown") or self.shown.get(f.name)


@functools.cache
def _comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` from ``name: type = default  # comment`` lines of a class's source."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    pattern = re.compile(r"^\s+(\w+):[^#\n]*#\s*(.+)$", re.MULTILINE)
    return {name: text.strip() for name, text in pattern.findall(source)}


SECTIONS: dict[str, Section] = {}
_FLAT: dict[str, list[tuple[str, str]]] = {}  # flat name -> every (section, field) using it


def register_section(
    name: str,
    cls: type | None = None,
    *,
    help: Mapping[str, str] | None = None,
    choices: Mapping[str, Iterable[Any]] | None = None,
    flat_names: Mapping[str, str] | None = None,
    cli_hidden: Iterable[str] = (),
    shown: Mapping[str, str] | None = None,
    standalone: bool = False,
) -> Any:
    """Register dataclass ``cls`` as config section ``name`` (usable as a class decorator).

    A section name is registered once; flat names may repeat across sections, and
    :func:`check_sections` refuses sections that share one when a command combines them.
    ``standalone``: one command's own section (eval, compare, convert, ...), which no run
    stores; its flat names may mean there what they mean for that command.
    """

    def register(cls: type) -> type:
        section = Section(
            name, cls, dict(help or {}), {k: tuple(v) for k, v in (choices or {}).items()},
            dict(flat_names or {}), frozenset(cli_hidden), dict(shown or {}), standalone,
        )  # fmt: skip
        if name in SECTIONS:
            raise ConfigError(f"config section {name!r} is registered twice.")
        SECTIONS[name] = section
        for n in section.field_names():
            _FLAT.setdefault(section.flat(n), []).append((name, n))
        return cls

    return register(cls) if cls is not None else register


class Config:
    """A resolved configuration: one dataclass instance per section, read as attributes.

    ``config.model`` is a :class:`ModelConfig`, ``config.optim`` an :class:`OptimConfig`, ...
    """

    def __init__(self, **sections: Any) -> None:
        self.__dict__["_sections"] = dict(sections)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_sections"][name]
        except KeyError:
            raise AttributeError(f"config has no section {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Config is read-only; use Config.replace(section, **changes)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Config({self.to_dict()!r})"

    @property
    def sections(self) -> tuple[str, ...]:
        return tuple(self._sections)

    def replace(self, section: str, **changes: Any) -> Config:
        """A copy with some fields of one section changed (validated like any input)."""
        values = {**dataclasses.asdict(self._sections[section]), **changes}
        return Config(**{**self._sections, section: build_section(section, values)})

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict (JSON/YAML-ready: tuples become lists)."""
        return {name: _plain(dataclasses.asdict(obj)) for name, obj in self._sections.items()}


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


# ----------------------------------------------------------------------------- values


def _describe(hint: Any) -> str:
    words = {bool: "true/false", int: "an integer", float: "a finite number", str: "a string"}
    words[type(None)] = "none"
    words[tuple[int, ...]] = "comma-separated integers"
    words[tuple[str, ...]] = "a list of strings"
    return " or ".join(words.get(a, "comma-separated numbers") for a in _union_args(hint))


def _union_args(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _convert(value: Any, kind: Any) -> Any:
    """Convert ``value`` to ``kind`` (bool, int, float, str, tuple[X, ...]) or raise; a
    string for a tuple is split at commas (``"1,2,4"``), a list's items are kept whole."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
        return words[str(value).lower()]
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        if kind is int and isinstance(value, float):
            raise ValueError
        number = kind(value)
        if not math.isfinite(number):  # nan / inf: never a meaningful setting
            raise ValueError
        return number
    if kind is str:
        if not isinstance(value, str):
            raise ValueError
        return value
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, (list, tuple)):
            raise ValueError
        return tuple(_convert(v, item) for v in value if not (isinstance(v, str) and not v))
    raise ValueError


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Return ``value`` as type ``hint`` (a field annotation); ConfigError naming ``key``."""
    args = _union_args(hint)
    is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
    if is_none and type(None) in args:
        return None
    kinds = [a for a in args if a is not type(None)]
    if not isinstance(value, str):  # keep a native value of an allowed type as it is
        kinds = sorted(kinds, key=lambda k: k is not type(value))
    for kind in kinds:
        try:
            return _convert(value, kind)
        except (ValueError, KeyError, TypeError):
            continue
    raise ConfigError(f"config key {key!r} is {value!r}; expected {_describe(hint)}.")


def build_section(name: str, values: Mapping[str, Any]) -> Any:
    """Instantiate section ``name`` from raw values (strings or native), validated."""
    section = SECTIONS[name]
    hints = typing.get_type_hints(section.cls)
    kwargs = {}
    for f in section.fields():
        if f.name not in values:
            continue
        key = section.flat(f.name)
        value = coerce(values[f.name], hints[f.name], key)
        allowed = section.choices_of(f)
        if allowed is not None and value not in allowed:
            shown = ", ".join("none" if a is None else str(a) for a in allowed)
            raise ConfigError(f"config key {key!r} is {value!r}; expected one of {shown}.")
        kwargs[f.name] = value
    return section.cls(**kwargs)


def check_count(option: str, value: int | None, low: int = 1) -> None:
    """ConfigError unless ``value`` (a count given as ``option``, e.g. ``--batch-size``) is
    None (the default) or an integer >= ``low``: 0 or -1 never silently means "all" or
    "the default"."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
        raise ConfigError(
            f"{option} is {value!r}; expected an integer >= {low} (leave it out for the default)."
        )


# ----------------------------------------------------------------------------- keys


def check_sections(sections: Iterable[str]) -> tuple[str, ...]:
    """``sections`` as a tuple; ConfigError for an unregistered one or two sharing a flat name
    (a programming error of a command that combines them)."""
    sections = tuple(sections)
    for name in sections:
        if name not in SECTIONS:
            raise ConfigError(
                f"unknown config section {name!r}; registered: {', '.join(SECTIONS)}."
            )
    for flat, owners in _FLAT.items():
        shared = [s for s, _ in owners if s in sections]
        if len(shared) > 1:
            raise ConfigError(f"config sections {shared} both use the name {flat!r}.")
    return sections


def shared_sections() -> tuple[str, ...]:
    """Every registered section a run's config can hold (not ``standalone``): the keys of
    a run's ``config.json`` and of an experiment file's settings."""
    return tuple(name for name, s in SECTIONS.items() if not s.standalone)


def flat_owner(flat: str, sections: Iterable[str]) -> tuple[str, str] | None:
    """The (section, field) of flat name ``flat`` among ``sections``, or None."""
    return next((o for o in _FLAT.get(flat, []) if o[0] in tuple(sections)), None)


def flat_names(sections: Iterable[str]) -> list[str]:
    """Every flat name of ``sections``."""
    return [flat for flat in _FLAT if flat_owner(flat, sections) is not None]


def _unknown(key: str, candidates: Iterable[str], sections: Iterable[str]) -> ConfigError:
    """The error for an unknown key: names the nearest valid key (difflib)."""
    owners = _FLAT.get(key.replace("-", "_"))
    if owners:
        return ConfigError(
            f"config key {key!r} belongs to the {owners[0][0]!r} section, which this command "
            f"does not use (sections: {', '.join(sections)})."
        )
    near = difflib.get_close_matches(key.replace("-", "_"), list(candidates), n=1, cutoff=0.0)
    hint = f"; did you mean {near[0]!r}?" if near else "."
    return ConfigError(f"unknown config key {key!r}{hint}")


def _resolve(key: str, value: Any, sections: tuple[str, ...]) -> list[tuple[str, str, Any]]:
    """Map one raw key (section, ``section.field``, flat, dashes or underscores) to fields."""
    k = key.replace("-", "_")
    if k in sections and isinstance(value, Mapping):
        return [_resolve_field(k, sub, v) for sub, v in value.items()]
    if "." in k and k.split(".", 1)[0] in sections:
        return [_resolve_field(*k.split(".", 1), value)]
    owner = flat_owner(k, sections)
    if owner is not None:
        return [(*owner, value)]
    if not flat_names(sections) and k not in _FLAT:  # e.g. report: nothing to be near
        shown = ", ".join(repr(s) for s in sections)
        raise ConfigError(f"unknown config key {key!r}; the {shown} section has no settings.")
    raise _unknown(key, flat_names(sections) + list(sections), sections)


def _resolve_field(section: str, key: str, value: Any) -> tuple[str, str, Any]:
    name = str(key).replace("-", "_")
    names = SECTIONS[section].field_names()
    if name not in names:
        raise _unknown(f"{section}.{key}", [f"{section}.{n}" for n in names], [section])
    return section, name, value


def read_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """Read a YAML file (a mapping; ``what`` names it in errors, e.g. ``experiment file``);
    ConfigError (one line, with the position of a syntax error) when it is missing,
    unreadable or malformed."""
    name = f"{what} {str(path)!r}"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {name} ({exc.strerror}).") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{name} is not UTF-8 text; expected a YAML text file.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name} is not valid YAML ({_yaml_problem(exc)}).") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{name} must hold a mapping of keys to values.")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """``line L, column C: <problem>`` of a YAML error, on one line."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())


def merge_sources(
    sections: Iterable[str], sources: Iterable[Mapping[str, Any] | None]
) -> dict[str, dict[str, Any]]:
    """The raw values per section and field of ``sources`` (later wins); keys may be nested
    (``{"optim": {"lr": 0.1}}``), dotted (``"optim.lr"``) or flat (``"lr"``, ``"batch-size"``).
    Any unknown key is a ConfigError naming the nearest valid key."""
    sections = check_sections(sections)
    values: dict[str, dict[str, Any]] = {s: {} for s in sections}
    for source in sources:
        for key, value in (source or {}).items():
            for section, name, v in _resolve(str(key), value, sections):
                values[section][name] = v
    return values


# ----------------------------------------------------------------------------- resolving

PRESETS: dict[str, dict[str, Any]] = {}  # name -> flat keys (register_presets)
# Steps run on every resolved config: (config, the raw values given per section) -> config.
_FINISHERS: list[Callable[[Config, Mapping[str, Mapping[str, Any]]], Config]] = []


def register_presets(presets: Mapping[str, Mapping[str, Any]]) -> None:
    """Add named presets (``--preset NAME``): flat keys applied under the YAML file."""
    PRESETS.update({name: dict(values) for name, values in presets.items()})


def register_finisher(finish: Callable[[Config, Mapping[str, Mapping[str, Any]]], Config]) -> Any:
    """Run ``finish(config, given)`` on every resolved config (``given``: the raw values each
    source set, per section), e.g. defaults that depend on other fields."""
    _FINISHERS.append(finish)
    return finish


def preset_values(name: str | None, sections: Iterable[str]) -> dict[str, Any]:
    """The flat keys of preset ``name`` that belong to ``sections`` (none: ``{}``)."""
    if name is None:
        return {}
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}.")
    owned = set(flat_names(sections))
    return {k: v for k, v in PRESETS[name].items() if k in owned}


def resolve_config(
    sections: Iterable[str],
    *,
    base: Mapping[str, Any] | None = None,
    yaml_path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    preset: str | None = None,
) -> Config:
    """Resolve ``sections`` from defaults < ``base`` < ``preset`` < YAML file < ``overrides``
    (:func:`spikebridge.config.load_config` with the training sections as the default)."""
    sections = check_sections(sections)
    sources = [base, preset_values(preset, sections), read_yaml(yaml_path) if yaml_path else None]
    values = merge_sources(sections, [*sources, overrides])
    config = Config(**{s: build_section(s, values[s]) for s in sections})
    for finish in _FINISHERS:
        config = finish(config, values)
    return config

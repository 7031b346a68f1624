"""The ``convert`` config section: what a conversion run needs, typed, in one place.

Run-level fields (the ANN run, the method, which T, how many images, where to write) are
stated below; the method options (``percentile``, ``tune_epochs``, ...) are gathered from the
registered methods' own config classes (:mod:`spikebridge.conversion.registry`), where their
defaults live: here they default to none, "the method's default". The section is registered
standalone (:func:`~spikebridge.config.register_section`), so ``--timesteps`` and ``--out``
mean what they mean for ``convert``; ``spikebridge convert --config FILE.yaml``, the
experiment files, the demo and :func:`~spikebridge.runs.conversion.convert_run` all build
it through :func:`convert_config` (unknown keys refused with the nearest valid one).

The T's (METHODS 3: one causal pass gives the accuracy at every t <= T):

- ``timesteps``: the T the saved spiking model runs at (default: the largest ``report_at``);
- ``report_at``: the t's printed and recorded (default: 1, 2, 4, 8, 16, 32 up to T, and T);
- ``tune_at``: the T a tuning method (ttrbr) tunes at (default: the smallest reported
  t >= 4, else the largest) -- tuning at every T would multiply the cost.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import PurePath
from typing import Any

import spikebridge.conversion as conversion
from spikebridge.config import DEVICES_HELP, load_config, register_section
from spikebridge.conversion.registry import MethodConfig
from spikebridge.errors import ConfigError

SECTION = "convert"
AUTO = "auto"  # --method auto: every registered method, the best kept per T (conversion_auto)
DEFAULT_REPORT_AT = (1, 2, 4, 8, 16, 32)
DEFAULT_CALIBRATION = 1024
DEFAULT_SELECTION = 2000  # held-out labelled images a selecting method (ttrbr) decides on
RUN_SET = ("timesteps", "progress", "select_at", "chunk_size")  # method fields the run sets


def _run(default: Any, help: str, shown: str | None = None) -> Any:
    """A run-level field with its help (and the default as --help shows it)."""
    return dataclasses.field(default=default, metadata={"help": help, "shown": shown})


@dataclass(frozen=True)
class _RunFields:
    """The run-level fields of the ``convert`` section (method options are added below)."""

    ann_run: str | None = _run(None, "the trained ANN run folder (RUN on the command line)")
    method: str | None = _run(
        None,
        "conversion method: "
        + "; ".join(m.summary for m in conversion.METHODS.values())
        + f"; {AUTO}: every method above scored on held-out images, the best kept per T",
    )
    report_at: tuple[int, ...] | None = _run(
        None, "comma-separated t's to print and record, e.g. 1,2,4,8 (one simulation at T gives "
        "every t <= T; summary.json holds them all)", "1,2,4,8,16,32 up to T, and T",
    )  # fmt: skip
    timesteps: int | None = _run(
        None, "T, the number of time-steps the saved spiking model runs at",
        "the largest --report-at",
    )  # fmt: skip
    tune_at: int | None = _run(
        None, "the T a tuning method (ttrbr) tunes its thresholds at",
        "the smallest reported t >= 4, else the largest",
    )  # fmt: skip
    calibration_size: int = _run(
        DEFAULT_CALIBRATION, "training images (seeded draw, never augmented) for the "
        "statistics and the tuning",
    )  # fmt: skip
    selection_size: int = _run(
        DEFAULT_SELECTION, "ttrbr selecting its reference: at most this many held-out labelled "
        "images (the ANN run's validation split, else training images outside the "
        "calibration draw) decide",
    )  # fmt: skip
    test_images: int | None = _run(None, "evaluate on the first N test images only", "all")
    out: str | None = _run(None, "converted run folder", "runs/<ann>-<method>-<time>")
    device: str = _run("auto", DEVICES_HELP)
    batch_size: int | None = _run(None, "evaluation batch size", "the ANN run's")
    data_dir: str | None = _run(None, "folder of the dataset files", "the ANN run's")


_SHARED = {f.name for f in fields(MethodConfig)}


def _method_fields() -> dict[str, tuple[Any, dict[str, Any]]]:
    """``{option: (type, metadata)}`` over every registered method's own options, with the
    methods' defaults written out for ``--help`` (``ttrbr on, maxnorm off``)."""
    options: dict[str, tuple[Any, dict[str, Any]]] = {}
    for method in conversion.METHODS.values():
        hints = typing.get_type_hints(method.config_class)
        for f in fields(method.config_class):
            if f.name in RUN_SET:
                continue
            shown = f"{method.name} {_shown(f.default)}"
            if f.name in options:
                if f.name not in _SHARED:
                    options[f.name][1]["shown"] += f", {shown}"
                continue
            if f.name in _SHARED:  # the same default for every method
                shown = _shown(f.default)
            hint = hints[f.name]  # a flag stays bool (--x/--no-x); none = the method's default
            options[f.name] = (
                hint if hint is bool else hint | None,
                {**f.metadata, "shown": shown},
            )
    return options


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "none"
    return "none" if value is None else str(value)


def _build_section() -> type:
    extra = [
        (name, hint, dataclasses.field(default=None, metadata=meta))
        for name, (hint, meta) in _method_fields().items()
    ]
    cls = dataclasses.make_dataclass("ConvertConfig", extra, bases=(_RunFields,), frozen=True)
    cls.__doc__ = "The typed config of a conversion run (see spikebridge.runs.conversion_config)."
    cls.__module__ = __name__
    return register_section(SECTION, cls, cli_hidden=("ann_run",), standalone=True)


ConvertConfig = _build_section()
RUN_OPTIONS = tuple(f.name for f in fields(_RunFields))
METHOD_OPTIONS = tuple(f.name for f in fields(ConvertConfig) if f.name not in RUN_OPTIONS)


def convert_config(values: Mapping[str, Any] | Any, yaml_path: str | None = None) -> Any:
    """A :data:`ConvertConfig` from a mapping (flat or ``convert.``-nested keys, strings or
    native values) and an optional YAML file under it; an existing one is returned as is.
    Unknown keys are refused with the nearest valid key."""
    if isinstance(values, ConvertConfig):
        return values
    overrides = {k: _plain(v) for k, v in dict(values).items()}
    return getattr(load_config((SECTION,), yaml_path=yaml_path, overrides=overrides), SECTION)


def _plain(value: Any) -> Any:
    """A path as its text and a tuple as a list: what the config machinery reads."""
    if isinstance(value, PurePath):
        return str(value)
    return list(value) if isinstance(value, tuple) else value


def method_options(config: Any, strict: bool = True) -> dict[str, Any]:
    """The method options ``config`` sets (not none). ``strict``: one the chosen method does
    not have is refused, naming the methods it belongs to; otherwise it is left out (an
    experiment sets options once for several methods)."""
    method = conversion.get_method(_method_name(config))
    own = {f.name for f in fields(method.config_class)}
    given = {k: getattr(config, k) for k in METHOD_OPTIONS if getattr(config, k) is not None}
    if strict:
        for key in given:
            if key not in own:
                owners = [m.name for m in conversion.METHODS.values() if key in _names(m)]
                raise ConfigError(
                    f"option {key!r} belongs to method {' / '.join(owners)}, not "
                    f"{method.name!r}; leave it out or choose {owners[0]!r}."
                )
    return {k: v for k, v in given.items() if k in own}


def _names(method: Any) -> set[str]:
    return {f.name for f in fields(method.config_class)}


def _method_name(config: Any) -> str:
    if config.method is None:
        raise ConfigError(
            f"convert needs a method; expected --method (or 'method:') one of "
            f"{', '.join(conversion.METHODS)} (or {AUTO})."
        )
    return str(config.method)


def report_steps(config: Any) -> tuple[list[int], int]:
    """``(reported t's, T)`` of a run config; ConfigError for a t < 1 or a reported t above T."""
    given = config.report_at
    if given is not None and (not given or min(given) < 1):
        raise ConfigError(f"--report-at is {list(given)}; expected integers >= 1, e.g. 1,2,4,8.")
    if config.timesteps is not None and config.timesteps < 1:
        raise ConfigError(f"--timesteps is {config.timesteps}; expected an integer >= 1.")
    if given is None:
        T = config.timesteps or max(DEFAULT_REPORT_AT)
        return sorted({*(t for t in DEFAULT_REPORT_AT if t <= T), T}), T
    wanted = sorted(set(given))
    T = config.timesteps or wanted[-1]
    if wanted[-1] > T:
        raise ConfigError(
            f"--report-at {wanted[-1]} exceeds --timesteps {T}; expected reported t's <= T "
            f"(or leave --timesteps out: it defaults to the largest reported t)."
        )
    return wanted, T


def default_tune_at(wanted: Sequence[int]) -> int:
    """The smallest reported t >= 4, else the largest."""
    at_least_4 = [t for t in wanted if t >= 4]
    return min(at_least_4) if at_least_4 else max(wanted)


def build_method_config(
    config: Any, tune_at: int, select_at: Sequence[int], strict: bool = True
) -> MethodConfig:
    """The method's typed config from a run config: its options, ``timesteps`` = the tuning
    T and, for a method that has it, ``select_at`` = the reported t's."""
    name = _method_name(config)
    values: dict[str, Any] = {"timesteps": int(tune_at), **method_options(config, strict)}
    if "select_at" in {f.name for f in fields(conversion.get_method(name).config_class)}:
        values["select_at"] = tuple(select_at)
    return conversion.method_config(name, **values)

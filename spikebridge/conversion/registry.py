"""The registry of conversion methods: each method is a strategy with its own typed config.

A method is one module: a frozen dataclass config (a subclass of :class:`MethodConfig`, its
fields and defaults stated there, once) and a :class:`ConversionMethod` subclass registered
by name::

    @dataclass(frozen=True, kw_only=True)
    class MyConfig(MethodConfig):
        percentile: float = option(99.9, "percentile of the positive pre-activations")

    @register_method
    class MyMethod(ConversionMethod):
        name, config_class = "mine", MyConfig
        summary = "one line for --help"

        def thresholds(self, config, ann, batches):
            return site_thresholds(ann, batches, config.percentile)

:func:`spikebridge.conversion.convert` calls the hooks; nothing outside a method's module
tests its name. ``method_config("ttrbr", timesteps=4, tune_epochs=0)`` builds a config by
name; an unknown method or option is refused in one sentence with the nearest valid name.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from spikebridge.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from spikebridge.conversion.output_calibration import CalibrationReport
    from spikebridge.conversion.selection import SelectionReport
    from spikebridge.conversion.tuning import TuningReport


def option(default: Any, help: str, choices: Iterable[Any] | None = None) -> Any:
    """A config field with its help text (and allowed values) in the metadata, in the form
    :mod:`spikebridge.config` reads (the convert run section and ``--help`` show them)."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None}
    return field(default=default, metadata=meta)


def nearest(word: str, valid: Iterable[str]) -> str:
    """``; did you mean 'x'?`` for the closest of ``valid`` (empty when there is none)."""
    near = difflib.get_close_matches(word, list(valid), n=1, cutoff=0.0)
    return f"; did you mean {near[0]!r}?" if near else ""


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Options every conversion method takes (METHODS 2.1). ``timesteps`` has no default:
    it is the T the spiking network simulates, and the T a tuning method tunes for."""

    timesteps: int = field(metadata={"help": "T the spiking network simulates (and tunes for)"})
    phi: float = option(0.5, "initial membrane potential as a fraction of θ (0.5: QCFS, Bu 2022)")
    chunk_size: int = option(64, "calibration images per forward pass (memory, not results)")
    progress: bool = option(False, "print a line per tuned site")

    def __post_init__(self) -> None:
        for name, value, low in (("timesteps", self.timesteps, 1), ("chunk_size", self.chunk_size, 1)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} is {value!r}; expected an integer >= {low}.")
        if not 0.0 <= self.phi <= 1.0:
            raise ConfigError(f"phi is {self.phi!r}; expected a fraction in [0, 1].")

    def options(self) -> dict[str, Any]:
        """The method's own options (not the ones every method shares), as a plain dict."""
        shared = {f.name for f in dataclasses.fields(MethodConfig)}
        values = dataclasses.asdict(self)
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if k not in shared
        }


@dataclass
class Tuned:
    """What a method's :meth:`ConversionMethod.tune` returns: the kept spiking network and the
    reports of the stages that ran (None where a stage did not run)."""

    snn: nn.Module
    tuning: TuningReport | None = None
    calibration: CalibrationReport | None = None
    selection: SelectionReport | None = None
    reference: str | None = None  # what the kept thresholds aimed at, where that was a choice


class ConversionMethod:
    """A conversion strategy. Subclasses set the class attributes and override the hooks."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    summary: ClassVar[str] = ""  # one line: who published it (or "ours") and what it does
    needs_calibration: ClassVar[bool] = True  # False: thresholds come from the ANN alone
    tunes: ClassVar[bool] = False  # True: config.timesteps is a tuning T (the run records it)
    ann_activations: ClassVar[tuple[str, ...]] = ("relu",)  # ANNs the experiments convert

    def thresholds(
        self, config: Any, ann: nn.Module, batches: list[torch.Tensor] | None
    ) -> dict[str, torch.Tensor]:
        """The initial threshold of every ANN site, by site name (scalar or ``[C]``)."""
        raise NotImplementedError

    def tune(
        self, config: Any, ann: nn.Module, snn: nn.Module, batches: list[torch.Tensor] | None,
        held_out: Any,
    ) -> Tuned:  # fmt: skip
        """Change the thresholded ``snn`` (in place or a copy); default: keep it as it is."""
        return Tuned(snn)

    def needs_held_out(self, config: Any) -> bool:
        """Whether this config uses labelled held-out images (a run then draws them)."""
        return False

    def uses_percentile(self, config: Any) -> float | None:
        """The percentile the thresholds use, for the report (None: no percentile)."""
        return getattr(config, "percentile", None)


METHODS: dict[str, ConversionMethod] = {}
_BY_CONFIG: dict[type, ConversionMethod] = {}


def register_method(cls: type[ConversionMethod]) -> type[ConversionMethod]:
    """Register a :class:`ConversionMethod` subclass under its ``name`` (a class decorator).
    A second method with the same name or config class is refused at import time."""
    if not cls.name or cls.name in METHODS:
        raise ConfigError(f"conversion method name {cls.name!r} is empty or taken.")
    if cls.config_class in _BY_CONFIG or not issubclass(cls.config_class, MethodConfig):
        raise ConfigError(f"method {cls.name!r} needs a config class of its own.")
    METHODS[cls.name] = _BY_CONFIG[cls.config_class] = cls()
    return cls


def get_method(name: str) -> ConversionMethod:
    """The registered method ``name``; ConfigError (one sentence, nearest name) otherwise."""
    if name not in METHODS:
        raise ConfigError(
            f"unknown conversion method {name!r}{nearest(str(name), METHODS)} "
            f"(registered: {', '.join(METHODS)})"
        )
    return METHODS[name]


def method_of(config: MethodConfig) -> ConversionMethod:
    """The registered method whose config class ``config`` is an instance of."""
    method = _BY_CONFIG.get(type(config))
    if method is None:
        raise ConfigError(
            f"{type(config).__name__} is not the config of a registered conversion method; "
            f"expected one of {', '.join(m.config_class.__name__ for m in METHODS.values())}"
        )
    return method


def method_config(name: str, **values: Any) -> MethodConfig:
    """The config of method ``name`` from keyword values; an option the method does not have
    is refused with the nearest one it has (and, when another method has it, which)."""
    config_class = get_method(name).config_class
    valid = [f.name for f in dataclasses.fields(config_class)]
    for key in values:
        if key not in valid:
            owners = [m.name for m in METHODS.values() if key in _field_names(m.config_class)]
            where = f" (an option of {', '.join(owners)})" if owners else ""
            raise ConfigError(f"method {name!r} has no option {key!r}{where}{nearest(key, valid)}")
    return config_class(**values)


def _field_names(config_class: type) -> list[str]:
    return [f.name for f in dataclasses.fields(config_class)]

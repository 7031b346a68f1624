"""Model names -> constructors, and :func:`build`, the one way to make a model.

Each architecture is a tiny function registered by name (timm style). ``build`` takes the
same keyword options as the CLI and configs (``--width`` -> ``width=``, ...), so a run
folder's ``config.json`` rebuilds its model with ``build(**config["model"])``.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from spikebridge.errors import ConfigError
from spikebridge.models.resnet import ActivationSpec, ResNet

_REGISTRY: dict[str, Callable[..., ResNet]] = {}
# name -> (block, blocks per stage, base channels per stage): the shape of each registered
# ResNet, read by checks that must not build the model (width bounds, memory estimates).
ARCHITECTURES: dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]] = {}

FOUR_STAGE_WIDTHS = (64, 128, 256, 512)
THREE_STAGE_WIDTHS = (16, 32, 64)


def register_model(name: str) -> Callable[[Callable[..., ResNet]], Callable[..., ResNet]]:
    def decorator(fn: Callable[..., ResNet]) -> Callable[..., ResNet]:
        _REGISTRY[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    return sorted(_REGISTRY, key=lambda n: (len(n), n))


def _resnet(name: str, block: str, layers: tuple[int, ...], widths: tuple[int, ...]) -> None:
    ARCHITECTURES[name] = (block, layers, widths)
    register_model(name)(lambda **kw: ResNet(block, layers, widths, **kw))


def _three_stage(name: str, depth: int, block: str = "basic") -> None:
    n = (depth - 2) // (3 * (2 if block == "basic" else 3))
    _resnet(name, block, (n, n, n), THREE_STAGE_WIDTHS)


for _name, _block, _layers in [
    ("resnet18", "basic", (2, 2, 2, 2)),
    ("resnet34", "basic", (3, 4, 6, 3)),
    ("resnet50", "bottleneck", (3, 4, 6, 3)),
    ("resnet101", "bottleneck", (3, 4, 23, 3)),
    ("resnet152", "bottleneck", (3, 8, 36, 3)),
]:
    _resnet(_name, _block, _layers, FOUR_STAGE_WIDTHS)

for _depth in (20, 32, 44, 56, 110, 1202):
    _three_stage(f"resnet{_depth}", _depth)
_three_stage("resnet164", 164, "bottleneck")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model (stored in a run folder's ``config.json``).

    ``neuron`` (``lif`` / ``if``) makes the model spiking; otherwise ``activation``
    (``relu`` / ``clip`` / ``qcfs``) is the ANN nonlinearity.
    """

    name: str = "resnet18"
    num_classes: int = 10
    in_channels: int = 3
    width: float = 1.0  # channel multiplier on every stage
    neuron: str | None = None  # None = ANN; "lif" (IDSNN, METHODS 1.1) or "if" (METHODS 2.1)
    activation: str = "relu"  # ANN activation: relu | clip | qcfs (METHODS 2.2)
    timesteps: int = 4  # T, used when spiking
    block: str = "post-add"  # residual structure: post-add | pre-add (METHODS 2.5)
    threshold: float | None = None  # θ (LIF 0.5, IF 1.0) or initial λ of clip/qcfs (8.0)
    decay: float = 0.25  # LIF: fraction of the membrane potential kept per step (METHODS 1.1)
    surrogate: str = "rect"  # rect | sigmoid | atan
    surrogate_alpha: float | None = None  # surrogate width/sharpness; None = its default
    phi: float = 0.5  # IF initial potential, fraction of θ (METHODS 2.1)
    qcfs_levels: int = 4  # L for the qcfs activation (every documented run uses 4)
    stem_padding: int = 1  # 3 reproduces the IDSNN authors' stem quirk
    stem: str = "3x3"  # 3x3 (small images) | 7x7 (ImageNet style, stride 2 + pooling)
    stem_pool: str = "avg"  # after a 7x7 stem: avg (spiking-friendly) | max (torchvision) | none
    neuron_backend: str = "fused"  # fused | loop (reference)
    zero_init_residual: bool = False  # last BN of every residual branch starts at γ = 0
    conv_init: str = "default"  # default (PyTorch's, as the IDSNN authors) | kaiming (fan-out)

    def __post_init__(self) -> None:
        """ConfigError for values no model can have: a width that is not a finite number
        > 0 (``--width nan`` crashed, ``--width 0`` built 1-channel stages), T, class or
        channel counts or QCFS levels < 1, a threshold or surrogate width <= 0, a
        non-finite leak or initial potential, a negative stem padding."""
        _check_number("width", self.width, low=0.0)
        for key in ("timesteps", "num_classes", "in_channels", "qcfs_levels"):
            _check_number(key, getattr(self, key), low=1, integer=True)
        for key in ("threshold", "surrogate_alpha"):
            if getattr(self, key) is not None:
                _check_number(key, getattr(self, key), low=0.0)
        _check_number("phi", self.phi)
        _check_decay(self.decay)
        _check_narrowest_stage(self.name, self.width)
        _check_number("stem_padding", self.stem_padding, low=0, integer=True)

    def activation_spec(self) -> ActivationSpec:
        return ActivationSpec(
            kind=self.neuron or self.activation,
            timesteps=self.timesteps if self.neuron else 1,
            threshold=self.threshold,
            decay=self.decay,
            surrogate=self.surrogate,
            surrogate_alpha=self.surrogate_alpha,
            phi=self.phi,
            qcfs_levels=self.qcfs_levels,
            neuron_backend=self.neuron_backend,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_number(key: str, value: Any, low: float | None = None, integer: bool = False) -> None:
    """ConfigError unless ``value`` is a finite number (an integer when ``integer``), above
    ``low`` (a float bound is exclusive, an integer bound inclusive)."""
    kind = numbers.Integral if integer else numbers.Real  # numpy scalars count too
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value >= low if isinstance(low, int) else value > low
    if not ok:
        what = "an integer" if integer else "a finite number"
        bound = "" if low is None else (f" >= {low}" if isinstance(low, int) else f" > {low:g}")
        raise ConfigError(f"model option {key!r} is {value!r}; expected {what}{bound}.")


def _check_decay(decay: Any) -> None:
    """The LIF leak multiplies the membrane potential each step (METHODS 1.1): in (0, 1]; 1
    is no leak, above 1 the potential would grow by itself."""
    _check_number("decay", decay)
    if not 0 < decay <= 1:
        raise ConfigError(
            f"model option 'decay' is {decay!r}; expected the LIF leak factor in (0, 1] "
            "(the share of the membrane potential kept per step, e.g. 0.25)."
        )


def _check_narrowest_stage(name: str, width: float) -> None:
    """Our lower bound of ``width``: the narrowest stage keeps at least 1 channel, i.e.
    ``width >= 1 / (its base channels)`` (below it every channel count would be rounded up
    to 1 or more, a different network than the one asked for)."""
    if name not in ARCHITECTURES:
        return  # unknown names are refused by name when the model is built
    narrowest = min(ARCHITECTURES[name][2])
    if width * narrowest < 1:
        raise ConfigError(
            f"model option 'width' is {width!r}; {name}'s narrowest stage has {narrowest} base "
            f"channels, so the width must be >= 1/{narrowest} = {1 / narrowest:g} to give "
            "every layer at least one channel."
        )


def model_config_keys() -> list[str]:
    return [f.name for f in fields(ModelConfig)]


def check_model_name(name: str) -> None:
    if name not in _REGISTRY:
        near = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"unknown model {name!r}{hint}; available: {', '.join(list_models())}")


def build(name: str = "resnet18", **kwargs: Any) -> ResNet:
    """Build a registered model. Keyword options are the fields of :class:`ModelConfig`.

    Example: ``build("resnet18", num_classes=10, in_channels=1, neuron="lif", timesteps=4)``.
    Unset (``None``) options keep their defaults; unknown options are refused by name.
    """
    check_model_name(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None or k == "neuron"}
    unknown = sorted(set(kwargs) - set(model_config_keys()))
    if unknown:
        near = difflib.get_close_matches(unknown[0], model_config_keys(), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"unknown model option {unknown[0]!r}{hint}")
    return build_from_config(ModelConfig(name=name, **kwargs))


def build_from_config(cfg: ModelConfig) -> ResNet:
    """Build the model a :class:`ModelConfig` describes."""
    check_model_name(cfg.name)
    model = _REGISTRY[cfg.name](
        num_classes=cfg.num_classes,
        in_channels=cfg.in_channels,
        width=cfg.width,
        act=cfg.activation_spec(),
        structure=cfg.block,
        stem_padding=cfg.stem_padding,
        stem=cfg.stem,
        stem_pool=cfg.stem_pool,
        zero_init_residual=cfg.zero_init_residual,
        conv_init=cfg.conv_init,
    )
    model.config = cfg  # type: ignore[assignment]
    return model

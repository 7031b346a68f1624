"""One ResNet for ANN and SNN (DESIGN: "one model definition").

An ANN, a directly trained SNN, an IDSNN student and a converted SNN are the same
:class:`ResNet`, built with a different activation factory (:class:`ActivationSpec`)
and block structure:

- ``post-add`` (standard): ``act(BN(conv(act(BN(conv x)))) + shortcut(x))``
- ``pre-add`` (METHODS 2.5, our design): ``act(BN(conv(act(BN(conv x))))) + shortcut(x)``,
  with a projection shortcut ending in its own activation, ``act(BN(conv1x1 x))``.

Spiking models fold time into the batch: the image ``[B, C, H, W]`` is repeated ``T``
times (direct encoding, METHODS 1.1) and every layer but the neurons sees ``[T*B, ...]``.
Parameter and buffer names are identical for ANN and SNN, so weights move between them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, is_dataclass, replace

import torch
from torch import nn

from spikebridge.errors import ConfigError
from spikebridge.nn.activations import DEFAULT_LAMBDA, QCFS, Clip
from spikebridge.nn.neurons import IF, LIF
from spikebridge.nn.temporal import SpikingSite, fold, threshold_dependent_bn, unfold

ACTIVATIONS = ("relu", "clip", "qcfs")
NEURONS = ("lif", "if")
STRUCTURES = ("post-add", "pre-add")
# Conv weight initialisation. "default" keeps PyTorch's own (kaiming-uniform, a = sqrt(5)), as
# the IDSNN authors do; "kaiming" is He et al.'s fan-out normal. With BN after every conv the
# scale of the init sets the effective step size (a BN-normalised weight of norm r moves as
# lr / r^2): kaiming's ~2.5x larger weights train a spiking ResNet at ~1/6 of the step, and
# the loss sits near ln 10 for the first hundred steps (docs/notes/results-history.md,
# "Training defaults screen").
CONV_INITS = ("default", "kaiming")
STEMS = ("3x3", "7x7")
STEM_POOLS = ("avg", "max", "none")


@dataclass
class ActivationSpec:
    """What to plug into every activation site; ``spec()`` makes a fresh module per site.

    ``kind`` is an ANN activation (``relu``, ``clip``, ``qcfs``) or a neuron (``lif``, ``if``).
    Neuron fields follow METHODS 1.1 (LIF) and 2.1 (IF); ``threshold=None`` picks the
    neuron's default (LIF 0.5, IF 1.0) or the initial λ of clip/qcfs.
    """

    kind: str = "relu"
    timesteps: int = 1
    threshold: float | None = None
    decay: float = 0.25
    surrogate: str = "rect"
    surrogate_alpha: float | None = None
    detach_reset: bool = True
    phi: float = 0.5
    qcfs_levels: int = 8
    neuron_backend: str = "fused"

    def __post_init__(self) -> None:
        if self.kind not in ACTIVATIONS + NEURONS:
            raise ConfigError(
                f"unknown activation/neuron {self.kind!r}; expected one of "
                f"{', '.join(ACTIVATIONS + NEURONS)}"
            )
        if self.timesteps < 1:
            raise ConfigError(f"timesteps must be >= 1, got {self.timesteps}")

    @property
    def spiking(self) -> bool:
        return self.kind in NEURONS

    @property
    def neuron_threshold(self) -> float:
        if self.threshold is not None:
            return self.threshold
        return {"lif": 0.5, "if": 1.0}.get(self.kind, DEFAULT_LAMBDA)

    def __call__(self) -> nn.Module:
        th = self.neuron_threshold
        common = dict(surrogate=self.surrogate, alpha=self.surrogate_alpha)
        common.update(detach_reset=self.detach_reset, backend=self.neuron_backend)
        if self.kind == "lif":
            return SpikingSite(LIF(th, self.decay, **common), self.timesteps)
        if self.kind == "if":
            return SpikingSite(IF(th, self.phi, **common), self.timesteps)
        if self.kind == "clip":
            return Clip(th)
        if self.kind == "qcfs":
            return QCFS(self.qcfs_levels, th)
        return nn.ReLU()


NormFactory = Callable[[int], nn.Module]


def conv3x3(cin: int, cout: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=padding, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


def _shortcut(
    cin: int, cout: int, stride: int, act: ActivationSpec, norm: NormFactory, structure: str
) -> nn.Module | None:
    """Projection shortcut when the shape changes (``None`` = identity)."""
    if stride == 1 and cin == cout:
        return None
    layers = OrderedDict(conv=conv1x1(cin, cout, stride), bn=norm(cout))
    if structure == "pre-add":
        layers["act"] = act()  # keeps the pre-add network spike-driven (METHODS 2.5)
    return nn.Sequential(layers)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; ``act2`` sits after (post-add) or before (pre-add) the sum."""

    expansion = 1

    def __init__(
        self, cin: int, planes: int, stride: int, act: ActivationSpec, norm: NormFactory,
        structure: str = "post-add",
    ) -> None:  # fmt: skip
        super().__init__()
        self.structure = structure
        self.conv1, self.bn1, self.act1 = conv3x3(cin, planes, stride), norm(planes), act()
        self.conv2, self.bn2, self.act2 = conv3x3(planes, planes), norm(planes), act()
        self.shortcut = _shortcut(cin, planes, stride, act, norm, structure)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        if self.structure == "pre-add":
            return self.act2(self.branch(x)) + identity
        return self.act2(self.branch(x) + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels); ``act3`` placed as in :class:`BasicBlock`."""

    expansion = 4

    def __init__(
        self, cin: int, planes: int, stride: int, act: ActivationSpec, norm: NormFactory,
        structure: str = "post-add",
    ) -> None:  # fmt: skip
        super().__init__()
        cout = planes * self.expansion
        self.structure = structure
        self.conv1, self.bn1, self.act1 = conv1x1(cin, planes), norm(planes), act()
        self.conv2, self.bn2, self.act2 = conv3x3(planes, planes, stride), norm(planes), act()
        self.conv3, self.bn3, self.act3 = conv1x1(planes, cout), norm(cout), act()
        self.shortcut = _shortcut(cin, cout, stride, act, norm, structure)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        if self.structure == "pre-add":
            return self.act3(self.branch(x)) + identity
        return self.act3(self.branch(x) + identity)


def _stem(cin: int, cout: int, kind: str, pool: str, padding: int) -> tuple[nn.Conv2d, nn.Module]:
    """The stem convolution and the pooling after it (identity for the small-image stem)."""
    if kind not in STEMS or pool not in STEM_POOLS:
        raise ConfigError(
            f"unknown stem {kind!r} / stem pooling {pool!r}; expected {STEMS} and {STEM_POOLS}"
        )
    if kind == "3x3":
        return conv3x3(cin, cout, padding=padding), nn.Identity()
    conv = nn.Conv2d(cin, cout, 7, stride=2, padding=3, bias=False)
    pools = {"avg": nn.AvgPool2d(3, 2, 1), "max": nn.MaxPool2d(3, 2, 1), "none": nn.Identity()}
    return conv, pools[pool]


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
}


class ResNet(nn.Module):
    """Stages of residual blocks over a 3x3 stem (no max-pool: made for small images).

    Args:
        block: ``"basic"`` or ``"bottleneck"``.
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)`` (resnet18) or ``(3, 3, 3)`` (resnet20).
        widths: base channels per stage before the width multiplier.
        act: activation/neuron spec for every site.
        structure: ``post-add`` or ``pre-add``.
        stem_padding: 1 by default; 3 reproduces the IDSNN authors' quirk (a 32x32 image
            becomes 36x36).
        stem: ``3x3`` (stride 1, no pooling: CIFAR / Fashion-MNIST) or ``7x7`` (ImageNet style:
            7x7 stride-2 conv, then a 3x3 stride-2 pooling).
        stem_pool: pooling after a ``7x7`` stem: ``avg`` (default; spikes in, rates out, so it
            converts and stays event-driven), ``max`` (torchvision's ANN) or ``none``.
        zero_init_residual: start the last BN of every residual branch at ``γ = 0``.
        conv_init: ``default`` (PyTorch's, as the IDSNN authors) or ``kaiming`` (fan-out
            normal); see :data:`CONV_INITS`.
    """

    def __init__(
        self,
        block: str,
        layers: Sequence[int],
        widths: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        act: ActivationSpec | None = None,
        structure: str = "post-add",
        stem_padding: int = 1,
        stem: str = "3x3",
        stem_pool: str = "avg",
        zero_init_residual: bool = False,
        conv_init: str = "default",
    ) -> None:
        super().__init__()
        if conv_init not in CONV_INITS:
            raise ConfigError(f"unknown conv_init {conv_init!r}; expected one of {CONV_INITS}")
        if structure not in STRUCTURES:
            raise ConfigError(f"unknown block structure {structure!r}; expected {STRUCTURES}")
        if block not in BLOCKS:
            raise ConfigError(f"unknown block type {block!r}; expected one of {list(BLOCKS)}")
        self.act_spec = act or ActivationSpec()
        self.block_type, self.structure = block, structure
        norm = self._norm_factory()
        chans = [max(1, round(w * width)) for w in widths]
        self.conv1, self.stem_pool = _stem(in_channels, chans[0], stem, stem_pool, stem_padding)
        self.bn1, self.act1 = norm(chans[0]), self.act_spec()
        block_cls, cin = BLOCKS[block], chans[0]
        self.stages = nn.ModuleList()
        for i, (n, planes) in enumerate(zip(layers, chans, strict=True)):
            stage, cin = self._stage(block_cls, cin, planes, n, 1 if i == 0 else 2, norm)
            self.stages.append(stage)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self._init_weights(zero_init_residual, conv_init)

    def _norm_factory(self) -> NormFactory:
        if self.act_spec.spiking:
            th = self.act_spec.neuron_threshold
            return lambda c: threshold_dependent_bn(c, th)
        return nn.BatchNorm2d

    def _stage(self, block_cls, cin, planes, n, stride, norm) -> tuple[nn.Sequential, int]:  # type: ignore[no-untyped-def]
        blocks = []
        for j in range(n):
            blocks.append(
                block_cls(cin, planes, stride if j == 0 else 1, self.act_spec, norm, self.structure)
            )
            cin = planes * block_cls.expansion
        return nn.Sequential(*blocks), cin

    def _init_weights(self, zero_init_residual: bool, conv_init: str) -> None:
        if conv_init == "kaiming":
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:  # each block starts as its shortcut (Goyal et al. 2017)
            for block in self.modules():
                if isinstance(block, BasicBlock | Bottleneck):
                    last_bn = block.bn3 if isinstance(block, Bottleneck) else block.bn2
                    nn.init.zeros_(last_bn.weight)

    @property
    def spiking(self) -> bool:
        return self.act_spec.spiking

    @property
    def timesteps(self) -> int:
        return self.act_spec.timesteps if self.spiking else 1

    def set_timesteps(self, timesteps: int) -> None:
        """Simulate ``timesteps`` steps from now on (spiking models only)."""
        if not self.spiking:
            raise ConfigError("set_timesteps applies to spiking models; this one is an ANN")
        if int(timesteps) < 1:
            raise ConfigError(f"timesteps must be >= 1, got {timesteps}")
        self.act_spec.timesteps = int(timesteps)
        for m in self.modules():
            if isinstance(m, SpikingSite):
                m.timesteps = int(timesteps)
        config = getattr(self, "config", None)
        if is_dataclass(config) and hasattr(config, "timesteps"):  # keep the rebuild recipe in step
            self.config = replace(config, timesteps=int(timesteps))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features ``[T*B, C]`` (``T = 1`` for an ANN)."""
        x = self.stem_pool(self.act1(self.bn1(self.conv1(x))))
        for stage in self.stages:
            x = stage(x)
        return torch.flatten(self.pool(x), 1)

    def forward_steps(self, x: torch.Tensor) -> torch.Tensor:
        """Per-step logits ``[T, B, K]`` for an image batch ``[B, C, H, W]`` or a sequence ``[T, B, C, H, W]``."""
        T = self.timesteps
        if x.dim() == 4:
            x = x.unsqueeze(0).expand(T, *x.shape) if T > 1 else x.unsqueeze(0)
        elif x.shape[0] != T:
            raise ConfigError(f"input has {x.shape[0]} time-steps but the model simulates {T}")
        return unfold(self.fc(self.features(fold(x))), T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K]``: the mean over time of per-step logits (METHODS 1.1 output)."""
        return self.forward_steps(x).mean(0)

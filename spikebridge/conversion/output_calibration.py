"""Output calibration: threshold scales and input shifts fitted to the ANN's outputs by
surrogate gradients (METHODS 2.4 extension, our design).

The per-site search of METHODS 2.4 (``threshold_tuning``) is greedy: each site lowers its
own error, blind to what that error does downstream, and on a 100+ layer network most of
the error a site sees is quantization and deviation error that no scale of its own
removes. On one resnet110 QCFS ANN it recovered nothing over untuned QCFS at T >= 3
(docs/notes/results-history.md). This stage fits every site at once to what matters, the network's
output, on the calibration set at the target T:

    min_{s, δ}  E ‖ mean_t f_SNN(x; s, δ) − f_ref(x) ‖²

over a per-channel (or, with ``channelwise`` off, per-site) threshold scale ``s_c``
(``θ_c ← s_c·θ_c``) and a per-channel input
shift ``δ_c`` at every site, all other weights frozen. ``f_ref`` is the ANN's logits (or
its clip twin's, ``reference``, as for the grid search). The IF neuron with threshold
``s·θ`` on input ``x + δ`` is exactly ``s · IF_θ((x + δ)/s)`` (every potential scales by
``s``, φ unchanged), so the fit runs the existing neuron and its surrogate gradient on a
rescaled input and needs no gradient with respect to θ. Afterwards ``θ ← s·θ`` and ``δ``
is added to the bias of the conv that feeds the site: the model stays a plain conv + IF
network with per-channel thresholds.

Guard: a quarter of the calibration images (at least one) is held out; the held-out loss
is measured before the first epoch and after each, and the parameters of the best epoch
are kept, the starting point included, so the held-out output error never ends higher
than it began. It is a fit of ``2·C`` numbers per site on ~1k images, the usual scale of
post-conversion calibration (e.g. Li et al., ICML 2021, who calibrate biases layer by
layer rather than end to end).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from spikebridge.conversion.reference import clip_reference, resolve_reference
from spikebridge.conversion.sites import (
    CalibrationData,
    calibration_batches,
    eval_mode,
    model_device,
    snn_sites,
)
from spikebridge.conversion.tuning import feeding_conv
from spikebridge.errors import ConfigError
from spikebridge.nn.neurons import SpikingNeuron
from spikebridge.nn.temporal import SpikingSite

DEFAULT_EPOCHS = 6  # cosine over 6 epochs: docs/notes/results-history.md, "Output calibration"
DEFAULT_LR = 1e-2
HOLDOUT_FRACTION = 0.25


@dataclass
class CalibrationReport:
    """What :func:`calibrate_outputs` did: losses per epoch (index 0 = before any step)."""

    timesteps: int
    epochs: int
    lr: float
    reference: str
    fit_images: int
    holdout_images: int
    train_loss: list[float]  # mean loss over the fit images during each epoch
    holdout_loss: list[float]  # held-out loss before training, then after each epoch
    best_epoch: int  # the epoch whose parameters were kept (0 = the start)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        lines = ["| epoch | fit loss | held-out loss |", "|---|---|---|"]
        for e, held in enumerate(self.holdout_loss):
            fit = f"{self.train_loss[e - 1]:.4g}" if e else "-"
            mark = " (kept)" if e == self.best_epoch else ""
            lines.append(f"| {e} | {fit} | {held:.4g}{mark} |")
        return "\n".join(lines)


class _ScaledNeuron(nn.Module):
    """``s · neuron((x + δ)/s)`` with learnable per-channel ``log s`` and ``δ``: the same IF
    neuron with threshold ``s·θ`` on input ``x + δ`` (module docstring)."""

    def __init__(
        self, neuron: SpikingNeuron, channels: int, shift: bool, channelwise: bool = True
    ) -> None:
        super().__init__()
        self.neuron = neuron
        device = neuron.threshold.device
        self.log_scale = nn.Parameter(torch.zeros(channels if channelwise else (), device=device))
        self.shift = nn.Parameter(torch.zeros(channels, device=device)) if shift else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_channel = self.neuron._broadcast  # the neuron's own shaping of a [C] θ over x
        s = per_channel(self.log_scale.exp(), x)
        if self.shift is not None:
            x = x + per_channel(self.shift, x)
        return self.neuron(x / s) * s

    def fold(self, conv: nn.Module | None) -> SpikingNeuron:
        """Write ``θ·s`` into the neuron and ``δ`` into ``conv``'s bias; return the neuron."""
        scale = self.log_scale.detach().exp()
        self.neuron.threshold = (self.neuron.threshold * scale).clone()  # [C] if either is
        if self.shift is not None and conv is not None:
            conv.bias.data += self.shift.detach().to(conv.bias.dtype)
        return self.neuron


def _site_channels(snn: nn.Module, sites: list[SpikingSite], x: torch.Tensor) -> list[int]:
    """The channel count of every site's input, from one forward pass on ``x``."""
    seen: dict[nn.Module, int] = {}
    hooks = [
        s.register_forward_hook(lambda m, i, o: seen.__setitem__(m, i[0].shape[1])) for s in sites
    ]
    try:
        with torch.no_grad():
            snn(x)
    finally:
        for h in hooks:
            h.remove()
    return [seen[s] for s in sites]


def _loss(snn: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (snn(x) - target).square().mean()


def _holdout_loss(snn: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    with torch.no_grad():
        total = sum(_loss(snn, x, t).item() * len(x) for x, t in batches)
    return total / sum(len(x) for x, _ in batches)


def _split(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit images, held-out images): the last quarter (at least one image) is held out."""
    if len(images) < 2:
        raise ConfigError("output calibration needs at least 2 calibration images")
    held = max(1, int(round(len(images) * HOLDOUT_FRACTION)))
    return images[:-held], images[-held:]


def calibrate_outputs(
    ann: nn.Module,
    snn: nn.Module,
    calibration_images: CalibrationData,
    timesteps: int,
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    shift: bool = True,
    channelwise: bool = True,
    reference: str = "auto",
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> CalibrationReport:
    """Fit per-channel threshold scales (and input shifts) of ``snn`` to ``ann``'s outputs
    in place (module docstring); return the per-epoch losses.

    Args:
        ann: the source ANN (unchanged); its logits (or its clip twin's) are the target.
        snn: the converted spiking model (sites with IF neurons); left at ``timesteps``.
        calibration_images: normalized training images, or batches of them.
        timesteps: the T the output is simulated at.
        epochs: passes over the fit images (Adam, ``lr``, batches of ``batch_size``), the
            rate decayed to 0 by a cosine over all steps. Cosine over 6 epochs was ahead of
            a constant rate over 3 (the first default) by 0.7 points of T = 4 accuracy on
            three ANNs' validation splits (docs/notes/results-history.md); a constant rate
            did nothing measurable (p >= 0.14) and was removed (docs/CHANGELOG.md).
        shift: also fit the per-channel input shift (folded into the feeding conv's bias;
            sites without a biased feeding conv get none).
        channelwise: one threshold scale per channel (else one per site; the shift is
            per channel either way, as a conv bias is).
        reference: ``ann`` | ``clip`` | ``auto``, as for ``tune_thresholds``.
        seed: seeds the shuffling of the fit images.
    """
    if epochs < 1:
        raise ConfigError(f"output calibration epochs must be >= 1, got {epochs}")
    if lr <= 0:
        raise ConfigError(f"output calibration learning rate must be positive, got {lr}")
    reference = resolve_reference(reference, ann, timesteps)
    target_net = clip_reference(ann) if reference == "clip" else ann
    device = model_device(snn)
    images = torch.cat(calibration_batches(calibration_images, batch_size, device))
    fit, held = _split(images)
    snn.set_timesteps(timesteps)  # type: ignore[operator]
    named = snn_sites(snn)
    sites = [site for _, site in named]
    with eval_mode(ann, snn), torch.no_grad():
        targets = {k: torch.cat([target_net(x) for x in part.split(batch_size)])
                   for k, part in (("fit", fit), ("held", held))}  # fmt: skip
        channels = _site_channels(snn, sites, fit[:1])
    held_batches = list(zip(held.split(batch_size), targets["held"].split(batch_size), strict=True))
    convs = [feeding_conv(snn, name) if shift else None for name, _ in named]
    wrappers = [
        _ScaledNeuron(site.neuron, c, conv is not None, channelwise)
        for site, c, conv in zip(sites, channels, convs, strict=True)
    ]
    frozen = [(p, p.requires_grad) for p in snn.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    for site, w in zip(sites, wrappers, strict=True):
        site.neuron = w  # type: ignore[assignment]
    params = [p for w in wrappers for p in w.parameters()]
    try:
        train_loss, held_loss, best_epoch = _fit(
            snn, params, (fit, targets["fit"]), held_batches, (epochs, lr), batch_size,
            seed, progress,
        )  # fmt: skip
    finally:
        for site, w, conv in zip(sites, wrappers, convs, strict=True):
            site.neuron = w.fold(conv)
        for p, flag in frozen:
            p.requires_grad_(flag)
    return CalibrationReport(
        timesteps=timesteps, epochs=epochs, lr=lr, reference=reference,
        fit_images=len(fit), holdout_images=len(held), train_loss=train_loss,
        holdout_loss=held_loss, best_epoch=best_epoch,
    )  # fmt: skip


def _fit(
    snn: nn.Module,
    params: list[nn.Parameter],
    data: tuple[torch.Tensor, torch.Tensor],
    held: list[tuple[torch.Tensor, torch.Tensor]],
    steps: tuple[int, float],
    batch_size: int,
    seed: int,
    progress: bool,
) -> tuple[list[float], list[float], int]:
    """Adam over the fit images for ``steps`` = (epochs, lr), the rate decayed to 0 by a
    cosine over all steps; keeps (in ``params``)
    the epoch with the lowest held-out loss. Returns the fit loss per epoch, the held-out loss
    before and after each, the kept epoch."""
    x_fit, t_fit = data
    epochs, lr = steps
    opt = torch.optim.Adam(params, lr=lr)
    per_epoch = -(-len(x_fit) // batch_size)
    rate = _rate_schedule(opt, epochs * per_epoch)
    gen = torch.Generator().manual_seed(seed)
    snn.eval()
    held_loss = [_holdout_loss(snn, held)]
    best = (0, [p.detach().clone() for p in params])
    train_loss = []
    bar = range(epochs)
    if progress:
        from tqdm import tqdm

        bar = tqdm(bar, desc="output calibration", unit="epoch")  # type: ignore[assignment]
    for epoch in bar:
        order = torch.randperm(len(x_fit), generator=gen).to(x_fit.device)
        total = 0.0
        for idx in order.split(batch_size):
            loss = _loss(snn, x_fit[idx], t_fit[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            rate.step()
            total += loss.item() * len(idx)
        train_loss.append(total / len(x_fit))
        held_loss.append(_holdout_loss(snn, held))
        if held_loss[-1] < held_loss[best[0]]:
            best = (epoch + 1, [p.detach().clone() for p in params])
    with torch.no_grad():
        for p, kept in zip(params, best[1], strict=True):
            p.copy_(kept)
    return train_loss, held_loss, best[0]


def _rate_schedule(
    opt: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine decay of the rate to 0 over ``total_steps`` optimizer steps."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)

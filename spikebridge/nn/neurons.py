"""Multi-step spiking neurons: ``[T, B, ...]`` in, ``[T, B, ...]`` out, no state kept.

Every neuron is charge -> fire -> reset over T steps (one call simulates the whole
window, so nothing leaks between batches and nothing needs resetting):

- charge: ``h_t = decay · v_{t-1} + x_t``, with ``v_0 = φ·θ`` (initial potential)
- fire:   ``o_t = 1[h_t > θ]`` (strict) or ``1[h_t >= θ]``
- reset:  ``v_t = h_t · (1 - o_t)`` (hard, to 0) or ``v_t = h_t - θ·o_t`` (subtract)

IDSNN's LIF (METHODS 1.1) is ``decay=0.25, θ=0.5, strict, hard, φ=0, detached reset``;
the converted IF (METHODS 2.1) is ``decay=1, subtract, non-strict, φ=0.5`` and emits
``o_t·θ``. Two backends compute the same function:

- ``loop``: plain per-step autograd, the reference the tests compare against;
- ``fused``: one autograd node whose forward and hand-written BPTT backward each run the
  whole time loop, compiled with ``torch.compile`` on CPU and GPU (set
  ``SPIKEBRIDGE_COMPILE=0`` to run the same kernels eagerly). Only ``h`` is saved. A kernel
  covers at most ``CHUNK`` steps: a longer window loops over chunks with the state carried
  between them, so the compile cost does not grow with T and inductor's on-disk cache
  serves later processes.

There is no single-step mode. A tensor without the time dimension (e.g. one step
``[B, C, H, W]``) would be read as ``B`` time-steps of ``C`` samples and mix samples into
one membrane, so a neuron refuses it when it can tell (:meth:`SpikingNeuron.check_steps`):
when it was given ``timesteps`` (converted user networks set it) the first dimension must
equal T, and per-channel thresholds ``[C]`` need ``C`` channels in dimension 2. The checks
compare integers before the kernel runs; the kernels are unchanged.

Offset-spike calibration (COS, Hao et al. ICLR 2023; docs/METHODS.md 2.7): a neuron given
``offset_steps = ρ > 0`` first runs a dry pass over the first ρ steps of its window from
``v_0``, reads each element's residual potential, and starts the real pass over the whole
window from a per-element shifted ``v_0`` (:func:`offset_calibrated_v0`). The input and
output are still the whole window ``[T, B, ...]``; nothing is kept between calls.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from spikebridge.errors import ConfigError
from spikebridge.nn.surrogate import (
    DEFAULT_ALPHA,
    check_surrogate,
    heaviside,
    spike,
    surrogate_grad,
)

RESETS = ("hard", "subtract")
OFFSET_MARGIN = 1e-3
"""COS's shifts land a potential this fraction of θ below (shift down) or above (shift up)
the threshold, so the one step they aim at surely changes side (the authors' 0.999 / 1.001)."""
BACKENDS = ("fused", "loop")


def _forward_kernel(
    x: torch.Tensor, theta: torch.Tensor, v0: torch.Tensor, decay: float, hard: bool, strict: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the neuron over ``x[K, B, ...]`` from potential ``v0``; return spikes, pre-reset
    potentials ``h`` and the potential after the last step (the next chunk's ``v0``)."""
    v = v0.expand_as(x[0])
    spikes, potentials = [], []
    for t in range(x.shape[0]):
        h = decay * v + x[t]
        o = heaviside(h - theta, strict)
        v = h * (1 - o) if hard else h - theta * o
        spikes.append(o)
        potentials.append(h)
    return torch.stack(spikes), torch.stack(potentials), v


def _backward_kernel(
    grad: torch.Tensor,
    h: torch.Tensor,
    grad_v: torch.Tensor,
    theta: torch.Tensor,
    decay: float,
    hard: bool,
    strict: bool,
    detach_reset: bool,
    surrogate: str,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BPTT through the charge/fire/reset recursion of one chunk ``[K, B, ...]``, given
    ``grad_v = dL/dv`` after its last step; returns ``dL/dx`` and ``dL/dv0`` (the gradient
    flowing into the previous chunk)."""
    grads = []
    for t in range(grad.shape[0] - 1, -1, -1):
        v = h[t] - theta
        sg = surrogate_grad(v, surrogate, alpha)
        if hard:
            dv_dh = 1 - heaviside(v, strict)
            if not detach_reset:
                dv_dh = dv_dh - h[t] * sg
        else:
            dv_dh = torch.ones_like(v) if detach_reset else 1 - theta * sg
        grad_h = grad[t] * sg + grad_v * dv_dh
        grads.append(grad_h)
        grad_v = grad_h * decay
    grads.reverse()
    return torch.stack(grads), grad_v


_COMPILED: dict[str, Callable[..., Any]] = {}
RECOMPILE_LIMIT = 64
"""torch.compile variants allowed per kernel. A converted network meets many (scalar or
per-channel θ and φ, IF or LIF flags, size-1 dims); at torch's default of 8 a resnet110
conversion ran its later sites eagerly, several times slower. Raised, never lowered."""


def _compile_enabled() -> bool:
    return os.environ.get("SPIKEBRIDGE_COMPILE", "1") not in ("0", "false", "no")


def _kernel(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """The compiled version of a kernel (compiled once, shape-dynamic), or ``fn`` itself."""
    if not _compile_enabled():
        return fn
    if name not in _COMPILED:
        try:
            dynamo = torch._dynamo.config
            for key in ("recompile_limit", "cache_size_limit"):
                if getattr(dynamo, key, RECOMPILE_LIMIT) < RECOMPILE_LIMIT:
                    setattr(dynamo, key, RECOMPILE_LIMIT)
            _COMPILED[name] = torch.compile(fn, dynamic=True)
        except Exception as exc:  # pragma: no cover - depends on the platform's compiler
            warnings.warn(
                f"torch.compile unavailable ({exc}); running neuron kernels eagerly", stacklevel=2
            )
            _COMPILED[name] = fn
    return _COMPILED[name]


CHUNK = 8
"""Time-steps per compiled kernel call. The kernels unroll their time loop, so the graph
(and its compile time) grows with the steps it covers: a longer window runs as chunks of
``CHUNK`` steps through one kernel (state carried between calls, steps < CHUNK left over
run eagerly), so T = 500 compiles what T = 8 does and inductor's on-disk cache serves every
later process. A window of at most ``CHUNK`` steps is one call, as before."""


def _chunks(steps: int) -> list[tuple[int, int, bool]]:
    """``(start, stop, compiled?)`` per chunk: whole chunks compiled, a shorter tail eager."""
    size = min(steps, CHUNK)
    out = [(t, t + size, True) for t in range(0, steps - size + 1, size)]
    tail = out[-1][1]
    return out + ([(tail, steps, False)] if tail < steps else [])


def _chunked_forward(
    x: torch.Tensor, theta: torch.Tensor, v0: torch.Tensor, *config: Any
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Spikes of the whole window and the potentials ``h`` of each chunk (see ``CHUNK``).

    ``h`` stays in the chunks the kernel returned (saved for backward as they are): no
    ``[T, B, ...]`` buffer to copy them into, so the forward's peak is the spikes, ``h`` and
    one chunk's spikes."""
    chunks = _chunks(x.shape[0])
    if len(chunks) == 1:
        spikes, h, _ = _kernel("forward", _forward_kernel)(x, theta, v0, *config)
        return spikes, [h]
    # One contiguous state layout for every chunk, so the compiled kernel sees one signature.
    spikes, h, v = torch.empty_like(x), [], v0.expand_as(x[0]).contiguous()
    for start, stop, compiled in chunks:
        kernel = _kernel("forward", _forward_kernel) if compiled else _forward_kernel
        o, hc, v = kernel(x[start:stop], theta, v, *config)
        spikes[start:stop] = o
        h.append(hc)
    return spikes, h


def _chunked_backward(
    grad: torch.Tensor, h: list[torch.Tensor], theta: torch.Tensor, *config: Any
) -> torch.Tensor:
    """``dL/dx`` of the whole window, chunks in reverse order (see ``CHUNK``)."""
    chunks = _chunks(grad.shape[0])
    grad_v = torch.zeros_like(h[0][0])
    # An expanded gradient (of a sum, a mean) stays a view: no [T, B, ...] copy of it.
    grad = grad if 0 in grad.stride() else grad.contiguous()
    if len(chunks) == 1:
        return _kernel("backward", _backward_kernel)(grad, h[0], grad_v, theta, *config)[0]
    grad_x = torch.empty_like(grad, memory_format=torch.contiguous_format)
    for (start, stop, compiled), hc in zip(reversed(chunks), reversed(h), strict=True):
        kernel = _kernel("backward", _backward_kernel) if compiled else _backward_kernel
        gx, grad_v = kernel(grad[start:stop], hc, grad_v, theta, *config)
        grad_x[start:stop] = gx
    return grad_x


class _FusedNeuron(torch.autograd.Function):
    """One autograd node for the whole time loop; saves only the potentials ``h``."""

    @staticmethod
    def forward(ctx, x, theta, v0, decay, hard, strict, detach_reset, surrogate, alpha):  # type: ignore[override]
        spikes, h = _chunked_forward(x, theta, v0, decay, hard, strict)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(theta, *h)
            ctx.config = (decay, hard, strict, detach_reset, surrogate, alpha)
        return spikes

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        theta, *h = ctx.saved_tensors
        return (_chunked_backward(grad, h, theta, *ctx.config),) + (None,) * 8


def per_channel_view(p: torch.Tensor, step_rank: int) -> torch.Tensor:
    """A scalar, or a per-channel ``[C]`` tensor shaped to broadcast over one step
    ``[B, C, *spatial]`` of rank ``step_rank`` (thresholds, φ, tuning shifts)."""
    return p if p.dim() == 0 else p.view(-1, *([1] * (step_rank - 2)))


@torch.no_grad()
def offset_calibrated_v0(
    x: torch.Tensor, theta: torch.Tensor, v0: torch.Tensor, steps: int, rounds: int = 1
) -> torch.Tensor:
    """Per-element initial potential after COS offset-spike calibration (METHODS 2.7).

    For an IF neuron (no leak, subtract reset, ``h >= θ`` fires) run the first ``steps``
    (ρ) inputs of ``x[T, B, ...]`` from ``v0`` and compare the spike count ``n`` with the
    charge received, ``r = φθ + Σ x_t − nθ`` (the residual potential measured against the
    original ``v0``). ``r < 0`` after at least one spike: one spike too many, so ``v0`` is
    lowered by ``max(θ, min_fire h − (1−m)θ)`` (the weakest firing step falls just below θ);
    ``r >= θ`` with at least one silent step: one spike too few, so ``v0`` is raised by
    ``max(θ, (1+m)θ − max_silent h)`` (the strongest silent step reaches θ); ``m`` is
    :data:`OFFSET_MARGIN`. Each further round repeats the dry pass from the shifted
    potential and corrects one more spike. Returns ``v0`` broadcast to one step's shape.
    """
    start = v0.expand_as(x[0])
    v0 = start.clone()
    probe = x[: min(steps, x.shape[0])]
    for _ in range(rounds):
        spikes, h, v = _forward_kernel(probe, theta, v0, 1.0, False, False)
        fired = spikes.bool()
        residual = v - (v0 - start)
        weakest_fire = torch.where(fired, h, torch.full_like(h, float("inf"))).amin(0)
        strongest_silent = torch.where(fired, torch.full_like(h, -float("inf")), h).amax(0)
        down = (residual < 0) & fired.any(0)
        up = (residual >= theta) & ~fired.all(0)
        lower = torch.maximum(weakest_fire - (1 - OFFSET_MARGIN) * theta, theta.expand_as(v))
        raise_ = torch.maximum((1 + OFFSET_MARGIN) * theta - strongest_silent, theta.expand_as(v))
        v0 = v0 - torch.where(down, lower, 0.0) + torch.where(up, raise_, 0.0)
    return v0


class SpikingNeuron(nn.Module):
    """Multi-step neuron with charge/fire/reset dynamics (see module docstring).

    Args:
        threshold: θ; a float, or a per-channel tensor ``[C]`` (channel-wise thresholds).
        decay: fraction of the membrane potential kept per step (1.0 = IF, no leak; 0.25 =
            IDSNN's LIF).
        reset: ``hard`` (to 0) or ``subtract`` (by θ).
        strict: fire on ``u > θ`` (True) or ``u >= θ`` (False).
        phi: initial potential as a fraction of θ (``v_0 = φ·θ``).
        surrogate, alpha: surrogate gradient and its shape parameter.
        detach_reset: stop the gradient through the reset gate (METHODS 1.1).
        emit_threshold: output ``o·θ`` instead of ``o`` (converted networks, METHODS 2.1).
        backend: ``fused`` (default) or ``loop`` (reference).
        timesteps: the T every input must carry in dimension 0 (None: any T, unchecked);
            a wrong first dimension raises :class:`ConfigError` instead of being read as time.
    """

    def __init__(
        self,
        threshold: float | torch.Tensor = 0.5,
        decay: float = 0.25,
        reset: str = "hard",
        strict: bool = True,
        phi: float = 0.0,
        surrogate: str = "rect",
        alpha: float | None = None,
        detach_reset: bool = True,
        emit_threshold: bool = False,
        backend: str = "fused",
        timesteps: int | None = None,
    ) -> None:
        super().__init__()
        if reset not in RESETS:
            raise ConfigError(f"unknown reset {reset!r}; expected one of {', '.join(RESETS)}")
        if backend not in BACKENDS:
            raise ConfigError(f"unknown neuron backend {backend!r}; expected one of {BACKENDS}")
        self.register_buffer("threshold", torch.as_tensor(threshold, dtype=torch.float32).clone())
        self.register_buffer("phi", torch.as_tensor(phi, dtype=torch.float32).clone())
        self.decay, self.reset, self.strict = float(decay), reset, strict
        self.surrogate = check_surrogate(surrogate)
        self.alpha = float(DEFAULT_ALPHA[surrogate] if alpha is None else alpha)
        self.detach_reset, self.emit_threshold, self.backend = detach_reset, emit_threshold, backend
        if timesteps is not None and int(timesteps) < 1:
            raise ConfigError(f"timesteps must be >= 1, got {timesteps}")
        self.timesteps = None if timesteps is None else int(timesteps)

    @property
    def offset_steps(self) -> int:
        """ρ of offset-spike calibration (0 = off; :meth:`set_offset_calibration`)."""
        buf = getattr(self, "offset_calibration", None)
        return 0 if buf is None else int(buf[0])

    @property
    def offset_rounds(self) -> int:
        """Calibration rounds (each a dry pass of ``offset_steps`` steps)."""
        buf = getattr(self, "offset_calibration", None)
        return 0 if buf is None else int(buf[1])

    def set_offset_calibration(self, steps: int, rounds: int = 1) -> None:
        """Turn COS offset-spike calibration on (``steps = ρ >= 1``) or off (``0``).

        Stored as the buffer ``offset_calibration = [ρ, rounds]`` only while on, so the
        state dict of every other neuron is unchanged and a saved calibrated model reloads
        with it (:meth:`_load_from_state_dict`). Needs an IF neuron (no leak, subtract reset,
        ``h >= θ`` fires): ConfigError otherwise."""
        if steps < 0 or rounds < 1:
            raise ConfigError(f"offset calibration needs steps >= 0 and rounds >= 1, got "
                              f"{steps} and {rounds}")  # fmt: skip
        if steps and (self.decay != 1.0 or self.reset != "subtract" or self.strict):
            raise ConfigError("offset calibration needs an IF neuron (decay 1, subtract reset, "
                              "non-strict firing)")  # fmt: skip
        if steps == 0:
            self._buffers.pop("offset_calibration", None)
            return
        value = torch.tensor([steps, rounds], dtype=torch.int64, device=self.threshold.device)
        self.register_buffer("offset_calibration", value)

    def check_steps(self, x: torch.Tensor) -> None:
        """Refuse an input that lacks the time dimension (module docstring): ConfigError."""
        channels = self.threshold.numel() if self.threshold.dim() else None
        wrong_t = self.timesteps is not None and (x.dim() < 2 or x.shape[0] != self.timesteps)
        wrong_c = channels is not None and (x.dim() < 3 or x.shape[2] != channels)
        if x.dim() < 2 or wrong_t or wrong_c:
            expected = f"T={self.timesteps}" if self.timesteps is not None else "T"
            where = f" with {channels} channels in dim 2" if wrong_c else ""
            raise ConfigError(
                f"a multi-step neuron needs input [{expected}, B, ...]{where}, got shape "
                f"{tuple(x.shape)}; it has no single-step mode: add the time dimension "
                "(x.unsqueeze(0).expand(T, *x.shape)) or use it inside a SpikingSite"
            )

    def _broadcast(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Shape a scalar or per-channel ``[C]`` parameter for one step ``x[t]`` of ``[B, C, ...]``."""
        return per_channel_view(p.to(dtype=x.dtype, device=x.device), x.dim() - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Simulate ``x[T, B, ...]`` (input currents) and return spikes ``[T, B, ...]``."""
        self.check_steps(x)
        theta = self._broadcast(self.threshold, x)
        v0 = self._broadcast(self.phi, x) * theta
        if self.offset_steps:
            v0 = offset_calibrated_v0(x.detach(), theta, v0, self.offset_steps, self.offset_rounds)
        hard = self.reset == "hard"
        if self.backend == "fused":
            spikes = _FusedNeuron.apply(
                x, theta, v0, self.decay, hard, self.strict, self.detach_reset,
                self.surrogate, self.alpha,
            )  # fmt: skip
        else:
            spikes = self._loop(x, theta, v0, hard)
        return spikes * theta if self.emit_threshold else spikes

    def _loop(
        self, x: torch.Tensor, theta: torch.Tensor, v0: torch.Tensor, hard: bool
    ) -> torch.Tensor:
        """Reference implementation: per-step autograd with the surrogate spike function."""
        v = v0.expand_as(x[0])
        spikes = []
        for t in range(x.shape[0]):
            h = self.decay * v + x[t]
            o = spike(h - theta, self.surrogate, self.alpha, self.strict)
            gate = o.detach() if self.detach_reset else o
            v = h * (1 - gate) if hard else h - theta * gate
            spikes.append(o)
        return torch.stack(spikes)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # θ and φ may be scalars or per-channel: adopt the stored shape before loading.
        for name in ("threshold", "phi"):
            key = prefix + name
            if key in state_dict:
                current = getattr(self, name)
                setattr(self, name, current.new_empty(state_dict[key].shape))
        if prefix + "offset_calibration" in state_dict and self.offset_steps == 0:
            self.register_buffer("offset_calibration", torch.zeros(2, dtype=torch.int64))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        th = self.threshold.item() if self.threshold.dim() == 0 else f"[{self.threshold.numel()}]"
        steps = "" if self.timesteps is None else f", timesteps={self.timesteps}"
        if self.offset_steps:
            steps += f", offset_steps={self.offset_steps}x{self.offset_rounds}"
        return (
            f"threshold={th}, decay={self.decay}, reset={self.reset}, strict={self.strict}, "
            f"surrogate={self.surrogate}({self.alpha}), backend={self.backend}{steps}"
        )


def dry_steps(model: nn.Module, simulated: int) -> int:
    """Steps every neuron of ``model`` runs before its output window when it simulates
    ``simulated`` steps: ``rounds·min(ρ, simulated)`` of offset-spike calibration (the
    largest over its neurons; 0 without it). A reading at ``t`` costs ``t + dry_steps``
    time-steps (METHODS 2.7)."""
    return max(
        (m.offset_rounds * min(m.offset_steps, simulated) for m in model.modules()
         if isinstance(m, SpikingNeuron)),
        default=0,
    )  # fmt: skip


def LIF(threshold: float = 0.5, decay: float = 0.25, **kwargs: Any) -> SpikingNeuron:
    """IDSNN's leaky integrate-and-fire neuron (METHODS 1.1): strict, hard reset, detached."""
    kwargs.setdefault("reset", "hard")
    kwargs.setdefault("strict", True)
    return SpikingNeuron(threshold=threshold, decay=decay, **kwargs)


def IF(threshold: float = 1.0, phi: float = 0.5, **kwargs: Any) -> SpikingNeuron:
    """Integrate-and-fire neuron for conversion (METHODS 2.1): subtract reset, ``u >= θ``."""
    kwargs.setdefault("reset", "subtract")
    kwargs.setdefault("strict", False)
    kwargs.setdefault("emit_threshold", True)
    return SpikingNeuron(threshold=threshold, decay=1.0, phi=phi, **kwargs)

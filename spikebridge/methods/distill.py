"""Response-based knowledge distillation from a frozen teacher (IDSNN, METHODS 1.3).

Authors' code (default, ``form="additive"``)::

    L = CE(z_s, y) + w · τ² · KL( softmax(z_t/τ) || softmax(z_s/τ) )

with ``τ = 4``, ``w = 0.3`` (``w = 0.5`` in the KD-only ablation) and KL averaged over the
batch (``batchmean``). The paper's text writes a convex combination instead
(``form="convex"``): ``L = (1 - w) · CE + w · τ² · KL``. The ``τ²`` factor keeps the soft
term's gradient on the same scale as CE's whatever the temperature (Hinton et al. 2015).

For a spiking student ``z_s`` is its output, the mean over T of per-step logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spikebridge.errors import ConfigError, ModelError

DEFAULT_KD_WEIGHT = 0.3  # w of full IDSNN (init + KD), authors' code
KD_ONLY_WEIGHT = 0.5  # w of the KD-only ablation arm, authors' code
DEFAULT_TEMPERATURE = 4.0  # τ, authors' code
KD_FORMS = ("additive", "convex")


def _check_options(weight: float, temperature: float, form: str) -> None:
    if form not in KD_FORMS:
        raise ConfigError(f"unknown KD form {form!r}; expected one of {KD_FORMS}")
    if not temperature > 0:
        raise ConfigError(f"KD temperature must be > 0, got {temperature}")
    if form == "convex" and not 0.0 <= weight <= 1.0:
        raise ConfigError(f"convex KD weight must be in [0, 1], got {weight}")
    if weight < 0:
        raise ConfigError(f"KD weight must be >= 0, got {weight}")


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision (AMP) logits are upcast: softmax at temperature τ needs the range."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def soft_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``KL(softmax(z_t/τ) || softmax(z_s/τ))`` summed over classes, averaged over the batch.

    Logits are ``[B, K]``; computed in float32 at least; the teacher side is detached.
    """
    log_p_s = F.log_softmax(_at_least_fp32(student_logits) / temperature, dim=-1)
    p_t = F.softmax(_at_least_fp32(teacher_logits.detach()) / temperature, dim=-1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    weight: float = DEFAULT_KD_WEIGHT,
    temperature: float = DEFAULT_TEMPERATURE,
    form: str = "additive",
) -> dict[str, torch.Tensor]:
    """IDSNN distillation loss (METHODS 1.3).

    Args:
        student_logits: ``z_s`` ``[B, K]`` (with grad).
        teacher_logits: ``z_t`` ``[B, K]`` (detached here in any case).
        labels: ``y`` ``[B]`` class indices.
        weight: ``w``; in ``[0, 1]`` for the convex form.
        temperature: ``τ > 0``.
        form: ``additive`` ``CE + w·τ²·KL`` (authors' code) or ``convex``
            ``(1 - w)·CE + w·τ²·KL`` (paper's text).

    Returns:
        ``{"loss", "ce_loss", "kd_loss"}`` scalar tensors, where ``kd_loss`` is the
        unweighted soft term ``τ²·KL`` (so logs compare across weights and forms).
    """
    _check_options(weight, temperature, form)
    if student_logits.shape != teacher_logits.shape:
        raise ModelError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ; both models need the same class count"
        )
    ce = F.cross_entropy(_at_least_fp32(student_logits), labels)
    kd = temperature**2 * soft_kl(student_logits, teacher_logits, temperature)
    ce_weight = 1.0 - weight if form == "convex" else 1.0
    return {"loss": ce_weight * ce + weight * kd, "ce_loss": ce, "kd_loss": kd}


class DistillationTask:
    """Training task (DESIGN task contract) that distills a frozen teacher into the model.

    ``task(model, images, labels) -> {"loss", "output", "ce_loss", "kd_loss"}``: ``output``
    is the student's logits ``[B, K]``, ``loss`` the :func:`kd_loss` to back-propagate, and
    ``ce_loss`` / ``kd_loss`` detached extras for the logs. The teacher is frozen
    (``requires_grad=False``) at construction, switched to eval mode at every call (BN uses
    its running statistics, which it never updates) and run under ``torch.no_grad()``
    (no graph, no activation memory). It is moved to the images' device on first use. It is
    not an ``nn.Module`` on purpose: the teacher is never part of the trained parameters.
    """

    def __init__(
        self,
        teacher: nn.Module,
        weight: float = DEFAULT_KD_WEIGHT,
        temperature: float = DEFAULT_TEMPERATURE,
        form: str = "additive",
    ) -> None:
        _check_options(weight, temperature, form)
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight, self.temperature, self.form = float(weight), float(temperature), form

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's logits ``[B, K]`` for ``images`` (no graph)."""
        self.teacher.eval()
        param = next(self.teacher.parameters(), None)
        if param is not None and param.device != images.device:
            self.teacher.to(images.device)
        with torch.no_grad():
            return self.teacher(images).detach()

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        z_t = self.teacher_logits(images)
        z_s = model(images)
        out = kd_loss(z_s, z_t, labels, self.weight, self.temperature, self.form)
        return {
            "loss": out["loss"],
            "output": z_s,
            "ce_loss": out["ce_loss"].detach(),
            "kd_loss": out["kd_loss"].detach(),
        }

    def __repr__(self) -> str:
        return (
            f"DistillationTask(teacher={type(self.teacher).__name__}, weight={self.weight}, "
            f"temperature={self.temperature}, form={self.form!r})"
        )

"""IDSNN initialization: a (spiking) student ResNet takes its weights from an ANN teacher.

METHODS 1.2. Both networks are ResNets with the same number of stages; per stage, each
student block takes one teacher block (:func:`map_blocks`), and every conv / BatchNorm
tensor is resized by channel *loop interpolation* (:func:`loop_interpolate`)::

    W_s[o, i, kh, kw] = W_t[o mod C_out_t, i mod C_in_t, kh, kw]     (conv weights)
    v_s[c]            = v_t[c mod C_t]                              (BN γ, β, μ, σ², conv bias)

A wider student tiles the teacher's channels cyclically, a narrower one keeps the first
channels; nothing is rescaled. The stem conv + BN follow the same rules, projection shortcuts
too unless ``shortcuts=False`` (the authors' code never copies them: a name mismatch leaves
them random). The FC head, ANN activation parameters (clip / QCFS ``λ``) and neuron buffers
(thresholds ``θ``, ``φ``) are left as the student was built.

For a spiking student the BN layers are tdBN (``γ`` initialized to ``θ``); their ``γ`` is
overwritten by the teacher's BN weight, exactly as in the authors' code, which loads the
ANN's BN tensors into the SNN unchanged.

Every key and shape is checked before anything is written (nanoGPT ``from_pretrained``
style), so a mapping error leaves the student untouched. :class:`InitReport` lists what
happened to every student parameter and BN statistic.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from spikebridge.errors import ConfigError, ModelError
from spikebridge.models.resnet import ResNet

BLOCK_RULES = ("first", "spread")
RULE_COPY = "copy"  # same shape: the teacher's tensor as is
RULE_INTERP = "loop-interp"  # channel loop interpolation to another shape
RULE_RANDOM = "random (not copied)"  # keeps the student's own initialization
RULES = (RULE_COPY, RULE_INTERP, RULE_RANDOM)

_CHANNEL_DIMS = 2  # loop interpolation acts on dims 0 (C_out) and 1 (C_in); the rest must match


def map_blocks(n_teacher: int, n_student: int, rule: str = "first") -> list[int]:
    """Teacher block index for each of a stage's ``n_student`` student blocks (METHODS 1.2).

    - ``first`` (authors' code): ``j -> min(j, n_t - 1)``; a deeper student repeats the
      teacher's last block.
    - ``spread`` (our reading of "preserve the relative order"):
      ``j -> round(j * (n_t - 1) / (n_s - 1))`` (``0`` when ``n_s == 1``), rounding halves
      **up** (``floor(x + 1/2)``, computed in integers), not Python's round-half-to-even:
      e.g. 18 -> 3 blocks gives ``[0, 9, 17]``.
    """
    if rule not in BLOCK_RULES:
        raise ConfigError(f"unknown block mapping {rule!r}; expected one of {BLOCK_RULES}")
    if n_teacher < 1 or n_student < 1:
        raise ModelError(
            f"a stage needs at least one block; got {n_teacher} (teacher) and {n_student} (student)"
        )
    if rule == "first":
        return [min(j, n_teacher - 1) for j in range(n_student)]
    if n_student == 1:
        return [0]
    span, steps = n_teacher - 1, n_student - 1
    return [(2 * j * span + steps) // (2 * steps) for j in range(n_student)]


def loop_interpolate(source: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resize ``source`` to ``shape`` by channel loop interpolation (METHODS 1.2).

    ``out[o, i, ...] = source[o mod S_0, i mod S_1, ...]`` on the first two dims (only dim 0
    for a 1-D tensor such as a BN vector ``[C]``); trailing dims (conv kernels) must be equal.
    Vectorized with index tensors; returns a new tensor of ``shape`` on ``source``'s device.
    """
    shape = tuple(int(s) for s in shape)
    if source.dim() != len(shape) or source.shape[_CHANNEL_DIMS:] != shape[_CHANNEL_DIMS:]:
        raise ModelError(
            f"cannot loop-interpolate a tensor of shape {tuple(source.shape)} to {shape}: "
            "only the first two (channel) dimensions may differ"
        )
    out = source
    for dim in range(min(source.dim(), _CHANNEL_DIMS)):
        index = torch.arange(shape[dim], device=source.device) % source.shape[dim]
        out = out.index_select(dim, index)
    return out


@dataclass(frozen=True)
class InitRow:
    """What happened to one student tensor: ``student_param <- teacher_param`` by ``rule``."""

    student_param: str
    teacher_param: str | None
    student_shape: tuple[int, ...]
    teacher_shape: tuple[int, ...] | None
    rule: str


@dataclass
class InitReport:
    """Table of every student parameter / BN statistic and how it was initialized.

    ``block_map[i]`` is the teacher block taken by each student block of stage ``i``;
    ``notes`` explains tensors left random for a structural reason (shortcut mismatch).
    Print it (``str(report)`` is a markdown table) or store ``to_dict()`` as JSON.
    """

    rows: list[InitRow]
    blocks: str
    shortcuts: bool
    block_map: list[list[int]]
    notes: list[str] = field(default_factory=list)

    def count(self, rule: str) -> int:
        """Number of student tensors initialized by ``rule``."""
        return sum(row.rule == rule for row in self.rows)

    @property
    def num_copied(self) -> int:
        """Tensors taken from the teacher (``copy`` or ``loop-interp``)."""
        return self.count(RULE_COPY) + self.count(RULE_INTERP)

    @property
    def num_random(self) -> int:
        """Tensors left as the student was initialized."""
        return self.count(RULE_RANDOM)

    def counts(self) -> dict[str, int]:
        return {rule: self.count(rule) for rule in RULES}

    def summary(self) -> str:
        copied = "copied" if self.shortcuts else "left random (authors' behaviour)"
        return (
            f"IDSNN init from teacher (METHODS 1.2): blocks={self.blocks}, block map per stage "
            f"{self.block_map}, projection shortcuts {copied}; {self.num_copied} tensors taken "
            f"from the teacher ({self.count(RULE_INTERP)} by loop interpolation), "
            f"{self.num_random} left random."
        )

    def to_markdown(self) -> str:
        """Summary line, then ``| student | teacher | shapes | rule |`` table, then notes."""
        lines = [self.summary(), ""]
        lines.append(
            "| student parameter | teacher parameter | student shape | teacher shape | rule |"
        )
        lines.append("|---|---|---|---|---|")
        for r in self.rows:
            t_shape = "-" if r.teacher_shape is None else list(r.teacher_shape)
            lines.append(
                f"| {r.student_param} | {r.teacher_param or '-'} | {list(r.student_shape)} "
                f"| {t_shape} | {r.rule} |"
            )
        if self.notes:
            lines += [""] + [f"- note: {note}" for note in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (shapes as lists)."""
        rows = [
            {**asdict(r), "student_shape": list(r.student_shape),
             "teacher_shape": None if r.teacher_shape is None else list(r.teacher_shape)}
            for r in self.rows
        ]  # fmt: skip
        out = {"blocks": self.blocks, "shortcuts": self.shortcuts, "block_map": self.block_map}
        out.update(counts=self.counts(), notes=list(self.notes), rows=rows)
        return json.loads(json.dumps(out))


@dataclass(frozen=True)
class _Planned:
    teacher_param: str
    teacher_shape: tuple[int, ...]
    value: torch.Tensor  # already resized to the student's shape
    rule: str


def init_from_teacher(
    student: ResNet, teacher: ResNet, blocks: str = "first", shortcuts: bool = True
) -> InitReport:
    """Initialize ``student`` in place from ``teacher`` (IDSNN, METHODS 1.2); return the report.

    Args:
        student: the ResNet to initialize (ANN or spiking; any width, depth, class count).
        teacher: the ResNet to read (usually a trained, larger ANN); never modified.
        blocks: block mapping per stage, ``first`` (authors, default) or ``spread``
            (:func:`map_blocks`).
        shortcuts: copy projection shortcuts (conv 1x1 + BN) too; ``False`` leaves them
            random as the authors' code does.

    A student projection shortcut whose mapped teacher block has an identity shortcut is
    left random (there is nothing to copy); a teacher projection whose student block has an
    identity shortcut is unused. Both cases are recorded in ``report.notes``.

    Raises:
        ModelError: different stage counts, basic vs bottleneck blocks, kernel sizes that
            differ, or a tensor the rules cannot map; the student is then left unchanged.
    """
    _check_resnet(student, "student")
    _check_resnet(teacher, "teacher")
    if len(student.stages) != len(teacher.stages):
        raise ModelError(
            f"the teacher has {len(teacher.stages)} stages but the student has "
            f"{len(student.stages)}; both must have the same number of stages "
            "(e.g. resnet34 -> resnet18, resnet110 -> resnet20)"
        )
    block_map = [
        map_blocks(len(t_stage), len(s_stage), blocks)
        for s_stage, t_stage in zip(student.stages, teacher.stages, strict=True)
    ]
    notes: list[str] = []
    pairs = _module_pairs(student, teacher, block_map, shortcuts, notes)
    plan = _plan(student, teacher, pairs)
    rows = _apply(student, plan)
    return InitReport(rows, blocks, shortcuts, block_map, notes)


def _check_resnet(model: nn.Module, role: str) -> None:
    if not isinstance(model, ResNet):
        raise ModelError(
            f"the {role} must be a spikebridge ResNet (from spikebridge.models.build), "
            f"got {type(model).__name__}"
        )


def _is_mappable(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv2d, _BatchNorm))


def _module_pairs(
    student: ResNet, teacher: ResNet, block_map: list[list[int]], shortcuts: bool,
    notes: list[str],
) -> list[tuple[str, str]]:  # fmt: skip
    """``(student module, teacher module)`` names of every conv / BN to copy."""
    pairs = [("conv1", "conv1"), ("bn1", "bn1")]
    for i, mapping in enumerate(block_map):
        for j, m in enumerate(mapping):
            s_name, t_name = f"stages.{i}.{j}", f"stages.{i}.{m}"
            s_block, t_block = student.stages[i][j], teacher.stages[i][m]
            if type(s_block) is not type(t_block):
                raise ModelError(
                    f"student block {s_name} is a {type(s_block).__name__} but its teacher "
                    f"block {t_name} is a {type(t_block).__name__}; basic <-> bottleneck "
                    "mapping is not defined (METHODS 1.2): use teacher and student of the "
                    "same block type"
                )
            pairs += [
                (f"{s_name}.{c}", f"{t_name}.{c}")
                for c, child in s_block.named_children()
                if _is_mappable(child)
            ]
            pairs += _shortcut_pairs(s_block, t_block, s_name, t_name, shortcuts, notes)
    return pairs


def _shortcut_pairs(
    s_block: nn.Module, t_block: nn.Module, s_name: str, t_name: str, shortcuts: bool,
    notes: list[str],
) -> list[tuple[str, str]]:  # fmt: skip
    """Projection-shortcut pairs, or a note saying why the shortcut is not copied."""
    s_sc, t_sc = s_block.shortcut, t_block.shortcut
    if s_sc is None and t_sc is not None:
        notes.append(f"{t_name}.shortcut (projection) unused: student {s_name} has an identity")
    elif s_sc is not None and t_sc is None:
        notes.append(
            f"{s_name}.shortcut left random: teacher block {t_name} has an identity shortcut"
        )
    elif s_sc is not None and shortcuts:
        return [
            (f"{s_name}.shortcut.{c}", f"{t_name}.shortcut.{c}")
            for c, child in s_sc.named_children()
            if _is_mappable(child)
        ]
    return []


def _own_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's own parameters, plus its running statistics if it is a BatchNorm."""
    tensors = dict(module.named_parameters(recurse=False))
    if isinstance(module, _BatchNorm):
        tensors.update(module.named_buffers(recurse=False))
    return {name: t for name, t in tensors.items() if t is not None}


def _plan(student: ResNet, teacher: ResNet, pairs: list[tuple[str, str]]) -> dict[str, _Planned]:
    """Check every pair and compute every new value; nothing is written yet."""
    plan: dict[str, _Planned] = {}
    for s_name, t_name in pairs:
        s_mod, t_mod = student.get_submodule(s_name), teacher.get_submodule(t_name)
        _check_pair(s_mod, t_mod, s_name, t_name)
        t_tensors = _own_tensors(t_mod)
        for key, s_tensor in _own_tensors(s_mod).items():
            if key not in t_tensors:
                continue  # e.g. a conv bias the teacher lacks: stays random
            t_tensor = t_tensors[key].detach()
            value = _resize(t_tensor, s_tensor, f"{s_name}.{key}", f"{t_name}.{key}")
            same = value.shape == t_tensor.shape
            plan[f"{s_name}.{key}"] = _Planned(
                f"{t_name}.{key}", tuple(t_tensor.shape), value, RULE_COPY if same else RULE_INTERP
            )
    return plan


def _check_pair(s_mod: nn.Module, t_mod: nn.Module, s_name: str, t_name: str) -> None:
    if type(s_mod) is not type(t_mod):
        raise ModelError(
            f"student layer {s_name} is a {type(s_mod).__name__} but teacher layer {t_name} "
            f"is a {type(t_mod).__name__}; they must be the same kind of layer"
        )
    if isinstance(s_mod, nn.Conv2d) and s_mod.kernel_size != t_mod.kernel_size:
        raise ModelError(
            f"student layer {s_name} has kernel size {tuple(s_mod.kernel_size)} but teacher "
            f"layer {t_name} has {tuple(t_mod.kernel_size)}; loop interpolation needs equal "
            "kernel sizes (METHODS 1.2)"
        )


def _resize(t_tensor: torch.Tensor, s_tensor: torch.Tensor, s_key: str, t_key: str) -> torch.Tensor:
    """The teacher tensor resized to the student's shape (asserted)."""
    if t_tensor.dim() == 0:  # num_batches_tracked
        value = t_tensor.clone()
    else:
        try:
            value = loop_interpolate(t_tensor, s_tensor.shape)
        except ModelError as exc:
            raise ModelError(f"cannot map teacher {t_key} onto student {s_key}: {exc}") from None
    if value.shape != s_tensor.shape:
        raise ModelError(
            f"teacher {t_key} maps to shape {tuple(value.shape)} but student {s_key} "
            f"has shape {tuple(s_tensor.shape)}"
        )
    return value


def _apply(student: ResNet, plan: dict[str, _Planned]) -> list[InitRow]:
    """Write the planned values (no autograd) and build one row per student tensor."""
    rows = []
    with torch.no_grad():
        for mod_name, module in student.named_modules():
            for key, tensor in _own_tensors(module).items():
                name = f"{mod_name}.{key}" if mod_name else key
                shape = tuple(tensor.shape)
                planned = plan.get(name)
                if planned is None:
                    rows.append(InitRow(name, None, shape, None, RULE_RANDOM))
                    continue
                tensor.copy_(planned.value)
                rows.append(
                    InitRow(name, planned.teacher_param, shape, planned.teacher_shape, planned.rule)
                )
    return rows

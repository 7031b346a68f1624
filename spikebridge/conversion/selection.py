"""Choosing ttrbr's thresholds on held-out labelled images (``tune_reference="select"``;
our design, METHODS 2.4).

The per-site search and the output calibration aim the SNN at a reference network: the ANN as
trained, or its clip twin (QCFS sites as ``clip(z, 0, λ)``, what the IF rates approach as T
grows). Which one gives the more accurate SNN depends on the ANN, not only on T: on the
validation splits of four resnet110 QCFS ANNs (docs/notes/results-history.md,
"Tuning reference chosen per ANN") the ANN reference was ahead on three, by up to 1.2 points
at T = 5-8, and the clip twin on the fourth, by up to 0.6. ``select`` therefore tunes one
copy towards each.

Thresholds tuned at one T can also fall below the untuned baselines at larger T (issue 23:
on scikit-learn's digits, tuned at T = 4, below robust and qcfs at T = 8 and 16). So the
untuned ``qcfs`` / ``robust`` thresholds are candidates too, every candidate is scored at
the tuning T and at every T the caller reports, and :func:`choose` keeps the most accurate
at the tuning T of those not significantly below the best untuned candidate at any scored T
(exact McNemar test on the held-out images). The images are ones that neither the tuning nor
the test score uses.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from spikebridge.conversion.sites import eval_mode, model_device
from spikebridge.errors import DataError

Labelled = list[tuple[torch.Tensor, torch.Tensor]]
ALPHA = 0.05  # a candidate significantly below the best untuned one at a T is not kept


@dataclass
class SelectionReport:
    """Held-out accuracy (fraction) of each candidate SNN and the one kept.

    ``accuracy``: at the tuning T (``timesteps``); ``accuracy_by_timestep``: at every scored
    T (``{candidate: {"T": fraction}}``); ``untuned``: the candidates that are untuned
    baselines (their best per T is the bar the kept one is held to); ``trails``: the scored
    T where the kept candidate is below another one on these images, ``{"T": name}``.
    """

    accuracy: dict[str, float]
    chosen: str
    images: int
    timesteps: int
    accuracy_by_timestep: dict[str, dict[str, float]] = field(default_factory=dict)
    untuned: list[str] = field(default_factory=list)
    trails: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def labelled_batches(data: Iterable[Any]) -> Labelled:
    """``(images [b, C, H, W], labels [b])`` pairs, checked; DataError for anything else."""
    batches = []
    for item in data:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise DataError(
                "selection data must be (images, labels) batches; got an item of type "
                f"{type(item).__name__}"
            )
        x, y = item
        if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise DataError(
                f"selection batch shapes {tuple(x.shape)} / {tuple(y.shape)}; expected "
                "[b, C, H, W] images and [b] labels"
            )
        batches.append((x, y))
    if not batches:
        raise DataError("the selection data is empty; expected labelled image batches")
    return batches


def held_out_correct(snn: nn.Module, batches: Labelled) -> int:
    """Images classified right by ``snn``'s time-averaged logits at its own T."""
    device = model_device(snn)
    correct = 0
    with eval_mode(snn):
        for x, y in batches:
            logits = snn(x.to(device=device, dtype=torch.float32))
            correct += int((logits.argmax(-1).cpu() == y.cpu()).sum())
    return correct


def correct_by_timestep(
    snn: nn.Module, batches: Labelled, timesteps: Sequence[int]
) -> dict[int, torch.Tensor]:
    """Per image ``[N]`` (bool), whether it is classified right after ``t`` steps, for every
    ``t`` in ``timesteps``: the argmax of the running mean of the per-step logits (METHODS 3),
    one simulation at the largest ``t``; the model's own T is restored afterwards. A model
    without ``forward_steps`` answers the same at every ``t``."""
    device, horizon = model_device(snn), max(timesteps)
    spiking = hasattr(snn, "set_timesteps")
    parts = []
    with eval_mode(snn), _simulating(snn, horizon if spiking else None):
        for x, y in batches:
            x = x.to(device=device, dtype=torch.float32)
            if hasattr(snn, "forward_steps"):
                steps = snn.forward_steps(x).float()  # [T, B, K]
            else:
                steps = snn(x).float().unsqueeze(0).expand(horizon, -1, -1)
            counts = torch.arange(1, steps.shape[0] + 1, dtype=steps.dtype, device=steps.device)
            mean = steps.cumsum(0) / counts.view(-1, 1, 1)
            parts.append(mean.argmax(-1).cpu() == y.cpu())  # [T, B]
    right = torch.cat(parts, dim=1)
    return {t: right[t - 1] for t in timesteps}


@contextmanager
def _simulating(snn: nn.Module, timesteps: int | None) -> Iterator[None]:
    """``snn`` set to ``timesteps`` steps (None: untouched), its own T restored on exit."""
    if timesteps is None:
        yield
        return
    before = int(snn.timesteps)  # type: ignore[arg-type]
    snn.set_timesteps(timesteps)  # type: ignore[operator]
    try:
        yield
    finally:
        snn.set_timesteps(before)  # type: ignore[operator]


def significantly_worse(a: torch.Tensor, b: torch.Tensor, alpha: float = ALPHA) -> bool:
    """Whether ``a`` gets significantly fewer of the same images right than ``b`` (bool
    ``[N]`` each): one-sided exact McNemar test on the images only one of them gets right."""
    lost, won = int((b & ~a).sum()), int((a & ~b).sum())
    if lost <= won:
        return False
    n = lost + won
    return sum(math.comb(n, k) for k in range(lost, n + 1)) / 2**n < alpha


def choose(
    correct: dict[str, dict[int, torch.Tensor]],
    timesteps: int,
    untuned: Collection[str],
    alpha: float = ALPHA,
) -> str:
    """The candidate to keep, from per-image correctness on held-out images at every scored T.

    Per T the bar is the best untuned candidate (of all candidates when none is untuned). A
    candidate *holds* where it is not significantly below the bar (:func:`significantly_worse`
    at ``alpha``): a deficit of a few images is noise the held-out set cannot resolve, and on
    digits (issue 23) a strict rule gave up 6 points at T = 4 for 1 image of 300 at T = 16.
    Among the candidates that hold at every scored T, the most accurate at the tuning T
    ``timesteps`` is kept (then the first); if none holds everywhere, the one with the
    largest worst-case margin ``min_T (right_c(T) - right_bar(T))`` (METHODS 2.4).
    """
    scored = list(next(iter(correct.values())))
    right = {c: {t: int(v.sum()) for t, v in per_t.items()} for c, per_t in correct.items()}
    pool = [c for c in correct if c in untuned] or list(correct)
    bar = {t: max(pool, key=lambda c: right[c][t]) for t in scored}
    holds = [
        c for c in correct
        if not any(significantly_worse(correct[c][t], correct[bar[t]][t], alpha) for t in scored)
    ]  # fmt: skip
    if holds:
        return max(holds, key=lambda c: right[c][timesteps])  # max keeps the first on ties

    def worst(name: str) -> tuple[int, int]:
        return min(right[name][t] - right[bar[t]][t] for t in scored), right[name][timesteps]

    return max(correct, key=worst)


def select_reference(
    candidates: dict[str, nn.Module],
    batches: Labelled,
    timesteps: int,
    scored_at: Sequence[int] = (),
    untuned: Collection[str] = (),
) -> SelectionReport:
    """Score every candidate SNN on ``batches`` at the tuning T ``timesteps`` and at every T
    of ``scored_at``; keep the one :func:`choose` picks (scored at ``timesteps`` alone and
    with no untuned candidate, the first of the most accurate)."""
    n = sum(int(y.shape[0]) for _, y in batches)
    ts = sorted({int(timesteps), *(int(t) for t in scored_at)})
    per_image = {name: correct_by_timestep(snn, batches, ts) for name, snn in candidates.items()}
    chosen = choose(per_image, timesteps, untuned)
    correct = {k: {t: int(v.sum()) for t, v in c.items()} for k, c in per_image.items()}
    trails = {}
    for t in ts:
        best = max(correct, key=lambda name: correct[name][t])
        if correct[best][t] > correct[chosen][t]:
            trails[str(t)] = best
    by_t = {k: {str(t): v / n for t, v in c.items()} for k, c in correct.items()}
    at_tune = {k: c[timesteps] / n for k, c in correct.items()}
    return SelectionReport(
        at_tune, chosen, n, timesteps, by_t, [c for c in candidates if c in untuned], trails
    )


def trails_note(trails: dict[str, str]) -> str | None:
    """One line naming the reported T where the kept thresholds were below another candidate
    on the held-out images (``SelectionReport.trails``), or None when there is none."""
    if not trails:
        return None
    where = ", ".join(
        f"T = {t} ({name})" for t, name in sorted(trails.items(), key=lambda i: int(i[0]))
    )
    return (
        f"note: on the held-out images ttrbr's kept thresholds were below another candidate "
        f"at {where}; convert with --tune-at at the T you deploy"
    )


def selection_markdown(selection: dict[str, Any]) -> list[str]:
    """The markdown lines of a selection record (``SelectionReport.to_dict()`` plus its
    ``source``): held-out accuracy of every candidate at every scored T, and the kept one."""
    sel = selection
    lines = [f"## Tuning reference, chosen at T = {sel['timesteps']}", ""]
    lines += [f"{sel['images']} held-out images ({sel['source']}); kept: {sel['chosen']}", ""]
    by_t = sel.get("accuracy_by_timestep") or {
        k: {str(sel["timesteps"]): v} for k, v in sel["accuracy"].items()
    }
    ts = list(next(iter(by_t.values())))
    lines += ["| candidate | " + " | ".join(f"T = {t}" for t in ts) + " |"]
    lines += ["|---|" + "---|" * len(ts)]
    for k, row in by_t.items():
        name = f"{k} (untuned)" if k in sel.get("untuned", ()) else k
        lines += [f"| {name} | " + " | ".join(f"{100 * row[t]:.2f} %" for t in ts) + " |"]
    return lines

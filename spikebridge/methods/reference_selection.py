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
the tuning T and at every T the caller reports, and :func:`choose` keeps the one whose worst
shortfall against the best untuned candidate is smallest: whenever some candidate is at
least as good as the best untuned one at every scored T, the kept one is too. The images
are ones that neither the tuning nor the test score uses.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from spikebridge.errors import DataError
from spikebridge.methods.error_analysis import eval_mode, model_device

Labelled = list[tuple[torch.Tensor, torch.Tensor]]


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
) -> dict[int, int]:
    """Images classified right after ``t`` steps for every ``t`` in ``timesteps``: the argmax
    of the running mean of the per-step logits (METHODS 3), one simulation at the largest
    ``t``; the model's own T is restored afterwards. A model without ``forward_steps``
    answers the same at every ``t``."""
    device, horizon = model_device(snn), max(timesteps)
    spiking = hasattr(snn, "set_timesteps")
    hits = torch.zeros(horizon, dtype=torch.long)
    with eval_mode(snn), _simulating(snn, horizon if spiking else None):
        for x, y in batches:
            x = x.to(device=device, dtype=torch.float32)
            if hasattr(snn, "forward_steps"):
                steps = snn.forward_steps(x).float()  # [T, B, K]
            else:
                steps = snn(x).float().unsqueeze(0).expand(horizon, -1, -1)
            counts = torch.arange(1, steps.shape[0] + 1, dtype=steps.dtype, device=steps.device)
            mean = steps.cumsum(0) / counts.view(-1, 1, 1)
            hits += (mean.argmax(-1).cpu() == y.cpu()).sum(1)
    return {t: int(hits[t - 1]) for t in timesteps}


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


def choose(correct: dict[str, dict[int, int]], timesteps: int, untuned: Collection[str]) -> str:
    """The candidate with the smallest worst-case shortfall over the scored T.

    Per T the bar is the best untuned candidate's count (the best of all candidates when none
    is untuned); a candidate's worst case is ``min_T (correct[c][T] - bar[T])``. The largest
    worst case wins, then the most images right at the tuning T ``timesteps``, then the first
    candidate (METHODS 2.4: ttrbr may not report a T where an untuned method does better).
    """
    scored = next(iter(correct.values())).keys()
    pool = [c for c in correct if c in untuned] or list(correct)
    bar = {t: max(correct[c][t] for c in pool) for t in scored}

    def key(name: str) -> tuple[int, int]:
        worst = min(correct[name][t] - bar[t] for t in scored)
        return worst, correct[name][timesteps]

    return max(correct, key=key)  # max keeps the first on ties


def select_reference(
    candidates: dict[str, nn.Module],
    batches: Labelled,
    timesteps: int,
    scored_at: Sequence[int] = (),
    untuned: Collection[str] = (),
) -> SelectionReport:
    """Score every candidate SNN on ``batches`` at the tuning T ``timesteps`` and at every T
    of ``scored_at``; keep the one :func:`choose` picks (with nothing else to score, the first
    of the most accurate at ``timesteps``)."""
    n = sum(int(y.shape[0]) for _, y in batches)
    ts = sorted({int(timesteps), *(int(t) for t in scored_at)})
    correct = {name: correct_by_timestep(snn, batches, ts) for name, snn in candidates.items()}
    chosen = choose(correct, timesteps, untuned)
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

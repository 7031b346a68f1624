"""Choosing ttrbr's tuning reference on held-out labelled images (``tune_reference="select"``;
our design, METHODS 2.4).

The per-site search and the output calibration aim the SNN at a reference network: the ANN as
trained, or its clip twin (QCFS sites as ``clip(z, 0, λ)``, what the IF rates approach as T
grows). Which one gives the more accurate SNN depends on the ANN, not only on T: on the
validation splits of four resnet110 QCFS ANNs (docs/notes/results-history.md,
"Tuning reference chosen per ANN") the ANN reference was ahead on three, by up to 1.2 points
at T = 5-8, and the clip twin on the fourth, by up to 0.6. ``select`` therefore tunes one
copy towards each and keeps the one that classifies more held-out labelled images right at the target T (ties: the ANN
reference), so the choice is measured per ANN on images that neither the tuning nor the test
score uses.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from spikebridge.errors import DataError
from spikebridge.methods.error_analysis import eval_mode, model_device

Labelled = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class SelectionReport:
    """Held-out accuracy (fraction) of each reference's tuned SNN and the one kept."""

    accuracy: dict[str, float]
    chosen: str
    images: int
    timesteps: int

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


def select_reference(
    candidates: dict[str, nn.Module], batches: Labelled, timesteps: int
) -> SelectionReport:
    """Score every candidate SNN (simulating ``timesteps``) on ``batches``; keep the first of
    the most accurate."""
    n = sum(int(y.shape[0]) for _, y in batches)
    scores = {name: held_out_correct(snn, batches) for name, snn in candidates.items()}
    chosen = max(scores, key=lambda name: scores[name])  # max keeps the first on ties
    return SelectionReport({k: v / n for k, v in scores.items()}, chosen, n, timesteps)

"""The reference network threshold tuning aims at (METHODS 2.4, our design).

The ``a_l`` the sites aim at come from the ANN as trained (``"ann"``) or from its continuous twin (``"clip"``): the same weights with every QCFS
site replaced by ``clip(z, 0, λ)``. An IF site's rate tends to ``clip(z̄, 0, θ)`` as T grows
(METHODS 2.1: ``Q_T → clip``), so an SNN simulated for more steps than the ANN has QCFS
levels (``T > L``) approaches the clip network, of which the QCFS ANN is only an ``L``-level
approximation; tuning it towards the ANN's coarser staircase pulls it away from the network it
converges to. ``"auto"`` picks ``"clip"`` when ``T`` exceeds the ANN's QCFS levels and
``"ann"`` otherwise (ReLU and clip ANNs: the two are the same network). Which reference
is better depends on the ANN, not only on T (docs/notes/results-history.md, "Tuning reference"), so
ttrbr's default with held-out labelled images (``tune_reference="select"``,
:mod:`~spikebridge.conversion.ttrbr`) tunes towards both and keeps the one more accurate on
those images; the functions here take one fixed reference.
"""

from __future__ import annotations

import copy

from torch import nn

from spikebridge.errors import ConfigError
from spikebridge.nn.activations import QCFS, Clip

REFERENCES = ("ann", "clip", "auto")


def clip_reference(ann: nn.Module) -> nn.Module:
    """A copy of ``ann`` whose QCFS sites are ``clip(z, 0, λ)`` with the same λ: the network an
    IF conversion's rates approach as T grows (the QCFS ANN is its L-level staircase)."""
    ref = copy.deepcopy(ann)
    for parent in list(ref.modules()):
        for name, child in parent.named_children():
            if isinstance(child, QCFS):
                clip = Clip(float(child.lam.detach()))
                setattr(parent, name, clip.to(child.lam.device))
    return ref


def qcfs_levels(ann: nn.Module) -> int | None:
    """The smallest QCFS level count of ``ann``'s sites (None: no QCFS site)."""
    levels = [m.levels for m in ann.modules() if isinstance(m, QCFS)]
    return min(levels) if levels else None


def resolve_reference(reference: str, ann: nn.Module, timesteps: int) -> str:
    """``"auto"`` -> ``"clip"`` when ``timesteps`` exceeds the ANN's QCFS levels, else
    ``"ann"``; ``"ann"`` / ``"clip"`` are kept. ConfigError for anything else."""
    if reference not in REFERENCES:
        raise ConfigError(f"unknown tuning reference {reference!r}; expected one of {REFERENCES}")
    if reference != "auto":
        return reference
    levels = qcfs_levels(ann)
    return "clip" if levels is not None and timesteps > levels else "ann"

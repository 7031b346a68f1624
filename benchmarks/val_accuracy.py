"""Accuracy of an ANN, its clip twin and conversions of it on the ANN run's VALIDATION split.

For choosing conversion settings without touching the test file: the validation images come
from the training file and were held out of the ANN's training (the run's ``val_size``). Each
conversion is simulated once, at the largest T asked for; with two or more conversions, each
is also compared, paired, with the first (difference and exact McNemar p per T).

    python benchmarks/val_accuracy.py --ann runs/seed3/anns/resnet110-pre-add-qcfs \\
        runs/seed3/conversions/resnet110-pre-add-qcfs-qcfs runs/seed3/check-h/ttrbr-t8 \\
        --timesteps 4,8
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from spikebridge.analysis.paired import paired_rows
from spikebridge.conversion.reference import clip_reference
from spikebridge.data.loader import DeviceLoader
from spikebridge.engine import rundir
from spikebridge.engine.evaluate import per_image_correct
from spikebridge.runs.conversion import run_data


def load_with_validation(ann_run: str) -> tuple[torch.nn.Module, Any, int, list]:
    """The ANN of ``ann_run`` (on the CPU), its splits, seed and validation batches of 500."""
    cpu = torch.device("cpu")
    ann, config = rundir.load_run(ann_run, cpu)
    splits, _, seed = run_data(config)
    val = list(DeviceLoader(splits.val_x, splits.val_y, 500, splits.info, cpu,
                            shuffle=False, augment=False, seed=seed))  # fmt: skip
    return ann, splits, seed, val


def accuracy(model: torch.nn.Module, batches: list, timesteps: int | None = None) -> float:
    """Top-1 accuracy (%) after ``timesteps`` steps (an ANN: its one output)."""
    return 100 * per_image_correct(model, batches, timesteps)[-1].double().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ann", required=True, help="the ANN run folder (its split is used)")
    parser.add_argument("runs", nargs="*", help="conversion run folders of that ANN")
    parser.add_argument("--timesteps", default="4,8", help="T to simulate the conversions at")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ann, splits, _, val = load_with_validation(args.ann)
    print(f"{len(splits.val_y)} validation images of {args.ann}")
    print(f"ANN: {accuracy(ann, val):.2f} %, clip twin: {accuracy(clip_reference(ann), val):.2f} %")
    steps = [int(t) for t in args.timesteps.split(",")]
    first = None
    for run in args.runs:
        snn, _ = rundir.load_run(run, torch.device("cpu"))
        correct = per_image_correct(snn, val, max(steps))
        first = correct if first is None else first
        rows = paired_rows(first, correct, steps)
        cells = ", ".join(
            f"T = {r.t}: {100 * r.acc_b:.2f} %"
            + ("" if correct is first else f" ({100 * r.diff:+.2f}, p {r.p_value:.2g})")
            for r in rows
        )
        print(f"{run}: {cells}", flush=True)


if __name__ == "__main__":
    main()

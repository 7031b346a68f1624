"""Output-calibration settings compared on an ANN run's VALIDATION split (never the test file).

How the calibration default (epochs, rate schedule, image count; docs/notes/results-history.md,
"Calibration schedule") was chosen: the per-site search of ttrbr runs once at T, then each variant
calibrates its own copy of that model, and every copy is scored on the run's validation
images (held out of the ANN's training). Prints accuracy per variant and the paired
difference to the first one (exact McNemar p); ``--json`` writes per-image correctness.

    python benchmarks/calibration_variants.py --ann runs/seed1/anns/resnet110-pre-add-qcfs \\
        --timesteps 4 --json out.json

About 5 minutes for a resnet110 of the cpu profile at T = 4 (one thread, two variants).
The constant-rate variants of the published table (constant3, constant6, constant3-2048)
went with the constant schedule (measured to do nothing, docs/CHANGELOG.md); commit 88c2d3d
of the repository still runs them.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from val_accuracy import load_with_validation  # this folder (run as a script)

from spikebridge.analysis.paired import paired_rows
from spikebridge.conversion import TtrbrConfig, convert
from spikebridge.conversion.output_calibration import calibrate_outputs
from spikebridge.engine.evaluate import per_image_correct
from spikebridge.runs.conversion import calibration_images

# name -> (calibration images, epochs); learning rate 0.01, cosine decay throughout
VARIANTS = {
    "cosine6": (1024, 6),  # the default since the seventh session
    "cosine6-2048": (2048, 6),  # the per-site search still on 1024 images
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ann", required=True, help="a QCFS / clip / ReLU ANN run folder")
    parser.add_argument("--timesteps", type=int, default=4, help="T of the conversion")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names")
    parser.add_argument("--json", help="write per-image correctness per variant here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ann, splits, seed, val = load_with_validation(args.ann)
    images = {n: calibration_images(splits, n, seed, torch.device("cpu")) for n in (1024, 2048)}
    t = args.timesteps
    start = time.perf_counter()
    searched, _ = convert(ann, TtrbrConfig(timesteps=t, tune_epochs=0), images[1024])
    print(f"per-site search: {time.perf_counter() - start:.0f} s")
    results = {"ann": per_image_correct(ann, val), "search": per_image_correct(searched, val, t)}
    chosen = args.variants.split(",")
    for name in chosen:
        count, epochs = VARIANTS[name]
        snn = copy.deepcopy(searched)
        start = time.perf_counter()
        report = calibrate_outputs(ann, snn, images[count], t, epochs, 0.01)
        results[name] = per_image_correct(snn, val, t)
        print(f"{name}: {time.perf_counter() - start:.0f} s, held-out loss "
              f"{[round(v, 3) for v in report.holdout_loss]}, kept epoch {report.best_epoch}")  # fmt: skip
    base = results[chosen[0]]
    print(f"\n| variant | val accuracy | - {chosen[0]} | p |")
    print("|---|---|---|---|")
    for name, got in results.items():
        row = paired_rows(base, got, [t])[0]
        print(f"| {name} | {100 * row.acc_b:.2f} | {100 * row.diff:+.2f} | {row.p_value:.2g} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({name: got[-1].tolist() for name, got in results.items()}, f)


if __name__ == "__main__":
    main()

"""Output-calibration settings compared on an ANN run's VALIDATION split (never the test file).

How the calibration default (epochs, rate schedule, image count; docs/RESULTS.md, "Calibration
schedule") was chosen: the per-site search of ttrbr runs once at T, then each variant
calibrates its own copy of that model, and every copy is scored on the run's validation
images (held out of the ANN's training). Prints accuracy per variant and the paired
difference to the first one (exact McNemar p); ``--json`` writes per-image correctness.

    python benchmarks/calibration_variants.py --ann runs/seed1/anns/resnet110-pre-add-qcfs \\
        --timesteps 4 --json out.json

About 12 minutes for a resnet110 of the cpu profile at T = 4 (one thread, five variants).
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from val_accuracy import correct, load_with_validation  # this folder (run as a script)

from spikebridge.analysis.paired import mcnemar_exact
from spikebridge.methods.convert import convert
from spikebridge.methods.output_calibration import calibrate_outputs
from spikebridge.recipes.conversion import calibration_images

# name -> (calibration images, epochs, schedule); learning rate 0.01 throughout
VARIANTS = {
    "constant3": (1024, 3, "constant"),  # the first default (2026-12-01)
    "constant6": (1024, 6, "constant"),
    "cosine6": (1024, 6, "cosine"),  # the default since the seventh session
    "constant3-2048": (2048, 3, "constant"),  # the per-site search still on 1024 images
    "cosine6-2048": (2048, 6, "cosine"),
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
    start = time.perf_counter()
    searched = convert(ann, "ttrbr", images[1024], args.timesteps, tune_epochs=0)
    print(f"per-site search: {time.perf_counter() - start:.0f} s")
    results = {"ann": correct(ann, val, None), "search": correct(searched, val, args.timesteps)}
    for name in args.variants.split(","):
        count, epochs, schedule = VARIANTS[name]
        snn = copy.deepcopy(searched)
        start = time.perf_counter()
        report = calibrate_outputs(ann, snn, images[count], args.timesteps, epochs, 0.01, schedule)
        results[name] = correct(snn, val, args.timesteps)
        print(f"{name}: {time.perf_counter() - start:.0f} s, held-out loss "
              f"{[round(v, 3) for v in report.holdout_loss]}, kept epoch {report.best_epoch}")  # fmt: skip
    names = list(results)
    base = results[names[2]] if len(names) > 2 else results["search"]
    print(f"\n| variant | val accuracy | - {names[2] if len(names) > 2 else 'search'} | p |")
    print("|---|---|---|---|")
    for name in names:
        got = results[name]
        a_only = sum(a and not b for a, b in zip(base, got, strict=True))
        b_only = sum(b and not a for a, b in zip(base, got, strict=True))
        diff = 100 * (b_only - a_only) / len(got)
        print(f"| {name} | {100 * sum(got) / len(got):.2f} | {diff:+.2f} | "
              f"{mcnemar_exact(a_only, b_only):.2g} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main()

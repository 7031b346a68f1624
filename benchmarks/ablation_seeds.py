"""Mean ± sample standard deviation of the IDSNN ablation arms over several seeds.

Each seed is one run of ``spikebridge experiment experiments/idsnn_ablation.yaml --profile cpu
--set settings.seed=N --out DIR``; this reads every finished arm run ``DIR/arms/*/`` (its
``summary.json`` and ``config.json``, so an experiment stopped after some arms still counts)
and prints one markdown row per arm, in the order the arms ran: test accuracy of the model
selected on validation, mean ± sample sd over the seeds that ran the arm, and per seed. Run by
hand; figures go to docs/RESULTS.md.

    python benchmarks/ablation_seeds.py runs/ablation/seed0 runs/ablation/seed1 runs/ablation/seed2
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def arm_accuracies(folders: list[Path]) -> dict[str, dict[int, float]]:
    """``{arm: {seed: test accuracy in %}}`` over the finished arms of the given folders."""
    table: dict[str, dict[int, float]] = {}
    for folder in folders:
        summaries = sorted(folder.glob("arms/*/summary.json"), key=lambda p: p.stat().st_mtime)
        for summary in summaries:
            config = json.loads((summary.parent / "config.json").read_text())
            arm, seed = config["distill"]["arm"], int(config["train"]["seed"])
            accuracy = json.loads(summary.read_text())["test_accuracy"]
            table.setdefault(arm, {})[seed] = 100 * accuracy
    return table


def mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f} (one seed)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="experiment output folders")
    args = parser.parse_args()
    table = arm_accuracies(args.folders)
    seeds = sorted({s for per_seed in table.values() for s in per_seed})
    print("| arm | mean ± sd (%) | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    print("|---|---|" + "---|" * len(seeds))
    for arm, per_seed in table.items():
        cells = [f"{per_seed[s]:.2f}" if s in per_seed else "-" for s in seeds]
        print(f"| {arm} | {mean_sd(list(per_seed.values()))} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

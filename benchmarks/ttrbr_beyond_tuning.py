"""ttrbr against the untuned qcfs / robust thresholds at every reported T, on an ANN run
(issue 23, item 4; docs/RESULTS.md, "ttrbr beyond its tuning T").

    python benchmarks/ttrbr_beyond_tuning.py --ann runs/ann-digits12 --out runs/beyond-digits \\
        --calibration-size 256 --json benchmarks/results/ttrbr_beyond_tuning_digits.json

Converts the ANN with ``qcfs``, ``robust`` and ``ttrbr`` (all defaults: ttrbr tuned at the
smallest reported T >= 4) at ``--timesteps`` (default 1,2,4,8,16), each into a folder of
``--out`` (a finished one is reused), and writes test accuracy per method and T, the best
untuned method per T, ttrbr's margin over it, and ttrbr's held-out selection record, as
JSON. The ANN for the digits row comes from ``benchmarks/digits_idx.py`` and the train
command in docs/RESULTS.md. Wall time: docs/RESULTS.md (ttrbr dominates it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from spikebridge.runs.conversion import convert_run, parse_timestep_list
from spikebridge.runs.conversion_config import DEFAULT_CALIBRATION, DEFAULT_SELECTION

METHODS = ("qcfs", "robust", "ttrbr")
UNTUNED = ("qcfs", "robust")


def converted(
    ann: Path, method: str, timesteps: list[int], out: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """The summary of ``ann`` converted with ``method`` in ``out`` (reused when finished);
    ``--calibration-size`` and ``--selection-size`` apply to ttrbr, the baselines keep the
    CLI defaults (as a user runs them)."""
    summary = out / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())
    options: dict[str, Any] = {"ann_run": ann, "method": method, "report_at": timesteps,
                               "out": out, "device": "cpu", "test_images": args.test_images}  # fmt: skip
    if method == "ttrbr":
        options |= {"calibration_size": args.calibration_size,
                    "selection_size": args.selection_size}  # fmt: skip
    return convert_run(options)


def table(summaries: dict[str, dict[str, Any]], timesteps: list[int]) -> dict[str, Any]:
    """Accuracy per method and T, the best untuned method per T and ttrbr's margin over it."""
    acc = {m: {str(t): s["accuracy_by_timestep"][str(t)] for t in timesteps}
           for m, s in summaries.items()}  # fmt: skip
    best = {str(t): max(UNTUNED, key=lambda m: acc[m][str(t)]) for t in timesteps}
    margin = {t: acc["ttrbr"][t] - acc[m][t] for t, m in best.items()}
    ttrbr = summaries["ttrbr"]
    return {
        "ann_accuracy": ttrbr["ann_accuracy"], "test_images": ttrbr["test_samples"],
        "accuracy_by_timestep": acc, "best_untuned": best, "ttrbr_margin": margin,
        "tune_timesteps": ttrbr["tune_timesteps"], "kept": ttrbr.get("tune_reference"),
        "reference_selection": ttrbr.get("reference_selection"),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ann", type=Path, required=True, help="finished QCFS ANN run folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for the conversions")
    parser.add_argument("--timesteps", default="1,2,4,8,16", help="reported T")
    parser.add_argument("--calibration-size", type=int, default=DEFAULT_CALIBRATION,
                        help="ttrbr's calibration images (default: 1024)")  # fmt: skip
    parser.add_argument("--selection-size", type=int, default=DEFAULT_SELECTION,
                        help="ttrbr's held-out selection images (default: 2000)")  # fmt: skip
    parser.add_argument("--test-images", type=int, help="first N test images (default: all)")
    parser.add_argument("--json", type=Path, help="write the table here")
    args = parser.parse_args()
    ts = sorted(set(parse_timestep_list(args.timesteps)))
    summaries = {m: converted(args.ann, m, ts, args.out / m, args) for m in METHODS}
    result = {"ann_run": str(args.ann), "timesteps": ts, **table(summaries, ts)}
    for m in METHODS:
        print(f"{m:<7} " + " ".join(f"{100 * result['accuracy_by_timestep'][m][str(t)]:6.2f}"
                                    for t in ts))  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

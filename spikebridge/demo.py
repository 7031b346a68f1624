"""``spikebridge demo``: the whole story on Fashion-MNIST in one command, sized for 2 CPU cores.

1. a teacher ANN (a larger ResNet),
2. a directly trained spiking ResNet (LIF, T=4): the baseline,
3. an IDSNN student (same architecture, T, epochs and seed as the baseline), initialized
   from the teacher and trained with knowledge distillation (METHODS 1),
4. a conversion-aware ANN (QCFS activations, pre-add blocks) converted to an IF spiking
   network with QCFS thresholds and with our threshold tuning (METHODS 2), accuracy at every
   t <= 16,
then one comparison table (accuracy, firing rate, SOPs, energy estimate) in
``OUT/demo.md`` and ``OUT/demo.json``. Finished steps are reused when the demo is re-run.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spikebridge.engine.checkpoint import read_json
from spikebridge.engine.rundir import validate_run_dir
from spikebridge.engine.runs import train_run
from spikebridge.errors import SpikebridgeError
from spikebridge.recipes.conversion import convert_run
from spikebridge.recipes.idsnn import distill_run

# The demo budget, sized for about 15 minutes on 2 quiet CPU cores (docs/RESULTS.md has the
# measured time). Few epochs on a 16,000-image subset: lr 0.1 (SGD, cosine with warm-up) and
# no crop/flip augmentation, which in this under-fitting regime only slows learning (3-epoch
# Spiking ResNet-20 screen on 5000 images: 62.4 % at lr 0.05, 70.1 % at 0.1, 60.1 % with
# augmentation). The plain ReLU teacher is not converted here: `spikebridge convert` does it.
DEMO_DATA = {"dataset": "fashion-mnist", "subset": 16000, "val_size": 1000, "batch_size": 64,
             "augment": False, "lr": 0.1}  # fmt: skip
TEACHER = {"model": "resnet32", "width": 0.5, "epochs": 3}
STUDENT = {"model": "resnet20", "width": 0.5, "neuron": "lif", "timesteps": 4, "epochs": 3}
# A conversion-aware ANN (QCFS, pre-add blocks; METHODS 2.2, 2.5) beside the teacher.
QCFS_ANN = {"model": "resnet20", "width": 0.5, "epochs": 3, "activation": "qcfs",
            "qcfs_levels": 4, "block": "pre-add", "threshold": 2.0}  # fmt: skip
CONVERT_TIMESTEPS = list(range(1, 17))
QCFS_METHODS = ("qcfs", "ttrbr")
CALIBRATION_IMAGES = 512
CONVERT_TEST_IMAGES = 2000


def _finished(run_dir: Path) -> dict[str, Any] | None:
    """The summary of a COMPLETE run folder (config, weights, summary.json written last:
    ``validate_run_dir``), else None so the step runs (a folder cut before its summary, e.g.
    a killed conversion, is never taken as finished)."""
    try:
        validate_run_dir(run_dir)
    except SpikebridgeError:
        return None
    return read_json(run_dir / "summary.json")


def _step(name: str, run_dir: Path, make: Callable[[], dict[str, Any]], log: Callable) -> dict:
    done = _finished(run_dir)
    if done is not None:
        log(f"[demo] {name}: reusing {run_dir}")
        return done
    log(f"[demo] {name} -> {run_dir}")
    return make()


MEASURED_KEYS = ("firing_rate", "sops_per_image", "energy_estimate_uj")


def _row(name: str, s: dict[str, Any], t: int) -> dict[str, Any]:
    by_t = s.get("accuracy_by_timestep") or {}
    acc = by_t.get(str(t), s.get("test_accuracy")) if by_t else s.get("test_accuracy")
    measured_t = s.get("measured_timesteps")
    if measured_t is not None and measured_t != t:  # operations were measured at another T
        s = {k: v for k, v in s.items() if k not in MEASURED_KEYS}
    return {
        "network": name,
        "T": t if by_t else "-",
        "test_accuracy": acc,
        "firing_rate": s.get("firing_rate"),
        "sops_per_image": s.get("sops_per_image"),
        "macs_per_image": s.get("macs_per_image"),
        "energy_uj": s.get("energy_estimate_uj") if by_t else s.get("ann_energy_estimate_uj"),
        "train_time_s": s.get("train_time_s"),
    }


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{100 * value:.2f} %"
    if kind == "M":
        return f"{value / 1e6:.2f} M"
    if kind == "s":
        return f"{value:.0f} s"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The final comparison as a markdown table."""
    head = "| network | T | test acc. | firing rate | SOPs/img | MACs/img (ANN) | energy est. (µJ) | train time |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['network']} | {r['T']} | {_fmt(r['test_accuracy'], 'pct')} | "
            f"{_fmt(r['firing_rate'], 'f')} | {_fmt(r['sops_per_image'], 'M')} | "
            f"{_fmt(r['macs_per_image'], 'M')} | {_fmt(r['energy_uj'], 'f')} | "
            f"{_fmt(r['train_time_s'], 's')} |"
        )
    return "\n".join(lines)


def run_demo(out: str | Path = "demo_runs", threads: int | None = None, log=print) -> dict:
    """Run (or reuse) every demo step under ``out``; returns the comparison rows."""
    out = Path(out)
    # resume: a demo killed mid-training continues the interrupted run when re-run
    common = {**DEMO_DATA, "threads": threads, "progress": True, "resume": True}
    teacher_dir, base_dir, idsnn_dir = out / "teacher", out / "snn-baseline", out / "idsnn"
    teacher = _step("teacher ANN", teacher_dir, lambda: train_run(
        {**common, **TEACHER, "out": str(teacher_dir)}, log=log), log)  # fmt: skip
    student = {**common, **STUDENT}
    baseline = _step("directly trained SNN", base_dir, lambda: train_run(
        {**student, "out": str(base_dir)}, log=log), log)  # fmt: skip
    idsnn = _step("IDSNN student", idsnn_dir, lambda: distill_run(
        {**student, "teacher": str(teacher_dir), "init": "first", "kd_weight": 0.3,
         "out": str(idsnn_dir)}, log=log), log)  # fmt: skip
    T = STUDENT["timesteps"]
    rows = [_row(f"teacher ANN ({TEACHER['model']} x{TEACHER['width']})", teacher, 1)]
    rows += [_row("SNN trained directly", baseline, T), _row("IDSNN student", idsnn, T)]
    qcfs_dir = out / "qcfs-ann"
    qcfs_ann = _step("conversion-aware ANN (QCFS, pre-add)", qcfs_dir, lambda: train_run(
        {**common, **QCFS_ANN, "out": str(qcfs_dir)}, log=log), log)  # fmt: skip
    rows.append(_row(f"QCFS pre-add ANN ({QCFS_ANN['model']} x{QCFS_ANN['width']})", qcfs_ann, 1))
    converted = {}
    plans = [("QCFS ANN", qcfs_dir, m) for m in QCFS_METHODS]
    for label, ann_dir, method in plans:
        conv_dir = out / f"converted-{ann_dir.name}-{method}"
        key = f"{label} converted ({method})"
        converted[key] = _step(key, conv_dir, lambda a=ann_dir, m=method, d=conv_dir: convert_run(
            a, m, CONVERT_TIMESTEPS, CALIBRATION_IMAGES, out=d,
            max_test_images=CONVERT_TEST_IMAGES, log=log), log)  # fmt: skip
        rows += [_row(key, converted[key], t) for t in (4, 8, 16)]
    result = {"rows": rows, "conversion_accuracy_by_timestep": {
        m: s.get("accuracy_by_timestep") for m, s in converted.items()}}  # fmt: skip
    table = format_table(rows)
    (out / "demo.md").write_text(table + "\n")
    (out / "demo.json").write_text(json.dumps(result, indent=2))
    log("\n" + table)
    log(f"\n(energy: estimate, E_MAC=4.6 pJ, E_AC=0.9 pJ; converted rows on the first "
        f"{CONVERT_TEST_IMAGES} test images; tables in {out}/demo.md)")  # fmt: skip
    return result


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_runs", help="folder of the demo's runs")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")


def run_demo_command(args: argparse.Namespace) -> int:
    run_demo(args.out, args.threads)
    return 0

"""IDSNN ablation (METHODS 1.5) at the demo's budget: run the arms, then the paired report.

``run``: the teacher once (seed 0, shared by every seed), then the four arms of
``experiments/idsnn_ablation_demo.yaml`` (profile ``demo``) for each seed, in two one-thread
worker lanes (``spikebridge.demo.run_steps``), a whole seed before the next; finished runs are
reused and interrupted ones resume, so the same command finishes an interrupted ablation.
``report``: reads the finished arms and writes ``benchmarks/results/idsnn_ablation.json``
(``spikebridge.analysis.ablation`` does the statistics) and prints the markdown table.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/idsnn_ablation.py run --out runs/idsnn-ablation
    OMP_NUM_THREADS=1 python benchmarks/idsnn_ablation.py report --out runs/idsnn-ablation
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from spikebridge.analysis import ablation as stats
from spikebridge.analysis.firing import FiringMonitor
from spikebridge.demo import Step, _finished, run_steps
from spikebridge.engine import checkpoint as ckpt
from spikebridge.engine import rundir
from spikebridge.engine.evaluate import evaluate, per_image_correct
from spikebridge.experiments import load_experiment, merge, parse_overrides
from spikebridge.experiments.idsnn import _slug, arm_config, check_spec, run_arm, run_teacher
from spikebridge.methods import init_from_teacher
from spikebridge.runs.conversion import eval_loader, run_data
from spikebridge.runs.idsnn import load_teacher
from spikebridge.runs.setup import setup_data, setup_model

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = ROOT / "experiments" / "idsnn_ablation_demo.yaml"
PROFILE = "demo"
SEEDS = (0, 1, 2)
RESULT = ROOT / "benchmarks" / "results" / "idsnn_ablation.json"
# Within a seed the arms start in this order, so that on a loaded machine the pair the
# ablation is about (init only against init + KD, and the baseline) finishes first.
RUN_ORDER = ("baseline", "init-only", "init+kd", "kd-only")


def seed_spec(seed: int, teacher_run: Path, overrides: dict[str, Any] | None = None) -> dict:
    """The experiment spec of one seed, its students pointed at the shared teacher."""
    spec = load_experiment(EXPERIMENT, PROFILE, overrides)
    return merge(spec, {"settings": {"seed": seed}, "teacher_run": str(teacher_run)})


def ablation_steps(
    out: Path,
    seeds: tuple[int, ...] = SEEDS,
    overrides: dict[str, Any] | None = None,
    teacher_run: Path | None = None,
) -> list[Step]:
    """The teacher (unless ``teacher_run``, a finished one, is given), then seed by seed its
    arms (each arm with init or KD after the teacher)."""
    teacher = teacher_run or out / "teacher"
    base = load_experiment(EXPERIMENT, PROFILE, overrides)
    steps = [] if teacher_run else [Step("teacher", teacher, run_teacher,
                                         (merge(base, {"teacher_run": None}), teacher))]  # fmt: skip
    for seed in seeds:
        spec = seed_spec(seed, teacher, overrides)
        arms = check_spec(spec)
        order = {name: i for i, name in enumerate(RUN_ORDER)}
        for arm in sorted(arms, key=lambda a: order.get(str(a["name"]), len(order))):
            name = str(arm["name"])
            run_dir = out / f"seed{seed}" / "arms" / _slug(name)
            # an arm without init or KD does not wait for (nor load) the teacher
            needs = arm.get("init", "none") != "none" or bool(arm.get("kd_weight"))
            after = ("teacher",) if needs and not teacher_run else ()
            steps.append(Step(f"seed {seed} {name}", run_dir, run_arm,
                              (spec, arm, str(teacher) if needs else None, run_dir),
                              after=after))  # fmt: skip
    return steps


def run(args: argparse.Namespace) -> int:
    seeds = tuple(args.seeds)
    try:
        steps = ablation_steps(args.out, seeds, parse_overrides(args.set), args.teacher)
        run_steps(steps, jobs=args.jobs, threads=1)
    except KeyboardInterrupt:
        print("interrupted; run the same command again: finished arms are reused, "
              "interrupted ones resume", file=sys.stderr)  # fmt: skip
        return 130
    return 0


def initial_accuracy(spec: dict, arm: dict, teacher: Path, max_images: int) -> dict[str, Any]:
    """Before any training step, on the first ``max_images`` validation images: accuracy by t
    and firing of ``arm``'s student right after its init from the teacher, of the same
    student left at its random init, and the teacher's accuracy. How much of the teacher the
    spiking student keeps at epoch 0 (the epoch-1 dip question)."""
    config = arm_config(spec, arm, str(teacher), Path("unused"))
    cpu = torch.device("cpu")
    loaders, info = setup_data(config.data, config.train.seed, cpu)
    config = config.replace("model", num_classes=info.num_classes, in_channels=info.in_channels)
    batches, n = [], 0
    for x, y in loaders.val:
        if n >= max_images:
            break
        batches.append((x, y))
        n += len(y)
    teacher_model, _ = load_teacher(config.distill, cpu)
    out: dict[str, Any] = {"teacher": evaluate(teacher_model, batches)["accuracy"]}
    for name in ("initialized", "random"):
        student = setup_model(config.model, config.train.seed, cpu)
        if name == "initialized":
            init_from_teacher(student, teacher_model, config.distill.init, config.distill.shortcuts)
        with FiringMonitor(student) as monitor:
            scores = evaluate(student, batches)
        firing = monitor.summary()
        out[name] = {"accuracy_by_t": scores["accuracy_by_timestep"],
                     "firing_rate": firing["firing_rate"],
                     "silent_fraction": firing["silent_fraction"],
                     "firing_rate_by_layer": firing["firing_rate_by_layer"]}  # fmt: skip
    return {**out, "images": n}


def cached_json(cache: Path, source: Path, make: Callable[..., Any], *args: Any) -> Any:
    """``make(*args)``, kept in ``cache`` and reused while it is newer than ``source``."""
    if cache.is_file() and cache.stat().st_mtime >= source.stat().st_mtime:
        return ckpt.read_json(cache)
    value = make(*args)
    cache.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_json(cache, value)
    return value


def json_key(arm: str) -> str:
    """The arm's key in the JSON: ``init+kd`` -> ``init_kd``, ``kd-only`` -> ``kd_only``."""
    return arm.replace("+", "_").replace("-", "_")


def per_image(run_dir: Path, cache: Path, whole_test_set: bool) -> torch.Tensor:
    """Per-image correctness ``[N]`` (bool, at the run's T) of a finished run's val-selected
    model on the test images; kept in ``cache`` (recomputed when the weights are newer)."""
    weights = run_dir / ckpt.BEST_WEIGHTS
    if cache.is_file() and cache.stat().st_mtime >= weights.stat().st_mtime:
        return torch.load(cache)
    model, config = rundir.load_run(run_dir)
    splits, data, seed = run_data(config, whole_test_set=whole_test_set)
    loader = eval_loader(splits, data, seed, torch.device("cpu"), None)
    correct = per_image_correct(model, loader)[-1]
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(correct, cache)
    return correct


def collect(out: Path, seeds: list[int], arms: list[str]) -> dict[str, dict[int, dict]]:
    """``{arm: {seed: {"finished", "summary", "metrics", "dir"}}}`` of every arm run that has
    begun (an unfinished one: its epochs so far, no summary)."""
    found: dict[str, dict[int, dict]] = {arm: {} for arm in arms}
    for seed in seeds:
        for arm in arms:
            run_dir = out / f"seed{seed}" / "arms" / _slug(arm)
            metrics_file = run_dir / ckpt.METRICS_FILE
            summary = _finished(run_dir)
            if summary is not None or metrics_file.is_file():
                metrics = ckpt.read_jsonl(metrics_file) if metrics_file.is_file() else []
                found[arm][seed] = {"finished": summary is not None, "summary": summary,
                                    "metrics": metrics, "dir": run_dir}  # fmt: skip
    return found


def done(found: dict, arm: str, seed: int) -> bool:
    return found[arm].get(seed, {}).get("finished", False)


def curve(found: dict, arm: str, seed: int, key: str) -> list[float | None]:
    """The per-epoch ``key`` (``val_accuracy``, ``test_accuracy``) so far; [] if not begun."""
    return [r.get(key) for r in found[arm].get(seed, {}).get("metrics", [])]


def paired(acc: dict, correct: dict, found: dict, arms: list[str], seeds: list[int]) -> list[dict]:
    """Every pair of arms over the seeds both finished: per-seed differences with a
    t-interval, and McNemar on the per-image pairs pooled over those seeds."""
    rows = []
    for a, b in stats.pairwise(arms):
        common = [s for s in seeds if done(found, a, s) and done(found, b, s)]
        row: dict[str, Any] = {"a": json_key(a), "b": json_key(b), "seeds_used": common}
        if common:
            row["seeds"] = stats.paired_seed_difference(
                [acc[a][s] for s in common], [acc[b][s] for s in common]
            )
            row["pooled_per_image"] = stats.pooled_per_image(
                [correct[a][s] for s in common], [correct[b][s] for s in common]
            )
        rows.append(row)
    return rows


def reach_table(found: dict, arms: list[str], seeds: list[int]) -> dict[str, dict]:
    """Epochs to reach the baseline's final accuracy, per split, arm and seed (None where the
    seed's baseline has not finished, or the arm has not reached it in the epochs run)."""
    out: dict[str, dict] = {}
    for split in ("val", "test"):
        table = {json_key(a): [] for a in arms}
        for s in seeds:
            if not done(found, arms[0], s):
                for a in arms:
                    table[json_key(a)].append(None)
                continue
            curves = {a: [curve(found, a, s, f"{split}_accuracy")] for a in arms}
            for a, (epochs,) in stats.epochs_to_baseline_final(curves, arms[0]).items():
                table[json_key(a)].append(epochs)
        out[split] = table
    return out


def build_result(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the JSON holds, from the arm runs under ``args.out`` (finished ones for the
    accuracies and tests; unfinished ones' epochs so far for the curves)."""
    overrides = parse_overrides(args.set)
    spec = load_experiment(EXPERIMENT, PROFILE, overrides)
    arms = [str(a["name"]) for a in check_spec(spec)]
    seeds = list(args.seeds)
    found = collect(args.out, seeds, arms)
    if not any(done(found, a, s) for a in arms for s in seeds):
        raise SystemExit(f"no arm run has finished under {args.out}; nothing to report.")
    whole = not args.sample
    where = "per_image_whole_test" if whole else "per_image_sample"
    correct = {a: {s: per_image(found[a][s]["dir"], args.out / f"seed{s}" / where /
                                f"{_slug(a)}.pt", whole)
                   for s in seeds if done(found, a, s)} for a in arms}  # fmt: skip
    acc = {a: {s: c.double().mean().item() for s, c in correct[a].items()} for a in arms}
    teacher_dir = args.teacher or args.out / "teacher"
    init_arm = next(a for a in check_spec(spec) if a.get("init", "none") != "none")
    begun = [s for s in seeds if any(s in found[a] for a in arms)]
    start = {s: cached_json(args.out / f"seed{s}" / f"before_training_{args.initial_images}.json",
                            teacher_dir / ckpt.SUMMARY_FILE, initial_accuracy,
                            seed_spec(s, teacher_dir, overrides), init_arm, teacher_dir,
                            args.initial_images) for s in begun}  # fmt: skip
    n_test = next(len(c) for per in correct.values() for c in per.values())

    def per_seed(value: Callable[[str, int], Any], finished_only: bool = True) -> dict:
        return {json_key(a): [value(a, s) if done(found, a, s) or not finished_only else None
                              for s in seeds] for a in arms}  # fmt: skip

    return {
        "teacher_accuracy": ckpt.read_json(teacher_dir / ckpt.SUMMARY_FILE)["test_accuracy"],
        "seeds": seeds,
        "test_images": f"{n_test} ("
        + ("the whole test file" if whole else "the runs' balanced sample") + ")",
        "arms": per_seed(lambda a, s: acc[a][s]),
        "arms_run_test_sample": per_seed(lambda a, s: found[a][s]["summary"]["test_accuracy"]),
        "mean_sd": {json_key(a): stats.mean_sd(list(acc[a].values())) for a in arms if acc[a]},
        "paired_differences": paired(acc, correct, found, arms, seeds),
        "epochs_to_baseline_final": reach_table(found, arms, seeds),
        "epochs_to_baseline_final_definition": EPOCHS_TO_REACH,
        "accuracy_by_epoch": {k: per_seed(lambda a, s, k=k: curve(found, a, s, f"{k}_accuracy"),
                                          finished_only=False) for k in ("val", "test")},
        "before_training": {
            "definition": f"before any training step, on the first validation images: the "
            f"{init_arm['name']} student right after its init from the teacher and the same "
            "student at its random init (accuracy by t, spikes per neuron per step, fraction "
            "of neurons that never fired), and the teacher's accuracy",
            "per_seed": {str(s): start[s] for s in begun},
        },
        "best_epoch": per_seed(lambda a, s: found[a][s]["summary"].get("best_epoch")),
        "train_time_s": per_seed(lambda a, s: found[a][s]["summary"].get("train_time_s")),
        "unfinished": [f"seed {s} {a}" for s in seeds for a in arms if not done(found, a, s)],
        "budget": {k: spec.get(k) for k in ("settings", "teacher", "student", "distill", "arms")},
        "teacher_shared": "one teacher (seed 0) for every seed; students vary by seed",
        "machine": args.machine or machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
        "commands": [COMMANDS[0], COMMANDS[1] + (" --sample" if args.sample else "")],
    }  # fmt: skip


EPOCHS_TO_REACH = (
    "per seed: the first epoch (1-based) whose accuracy reaches that seed's baseline "
    "final-epoch accuracy, on the per-epoch validation ('val', 3000 images of the "
    "training file) or test ('test', the runs' balanced 3200-image sample) figures of "
    "metrics.jsonl; null: never within the budget"
)
COMMANDS = [
    "OMP_NUM_THREADS=1 nice -n 5 python benchmarks/idsnn_ablation.py run --out runs/idsnn-ablation",
    "OMP_NUM_THREADS=1 python benchmarks/idsnn_ablation.py report --out runs/idsnn-ablation",
]


def machine() -> str:
    """CPU count and model, and the torch build."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
                 if ln.startswith("model name")]  # fmt: skip
        model = names[0] if names else model
    return f"{torch.get_num_threads()} thread(s) of {model}, torch {torch.__version__}"


def markdown(result: dict[str, Any]) -> str:
    """The tables for docs/RESULTS.md: per arm mean ± sd and per seed (``-``: not finished),
    epochs to the baseline's final accuracy, and one row per pair of arms."""
    seeds, reach = result["seeds"], result["epochs_to_baseline_final"]
    lines = ["| arm | test acc. mean ± sd (%) | " + " | ".join(f"seed {s}" for s in seeds)
             + " | epochs to baseline final, val (test) |",
             "|---|---|" + "---|" * len(seeds) + "---|"]  # fmt: skip
    for arm, values in result["arms"].items():
        ms = result["mean_sd"].get(arm)
        mean = "-" if ms is None else f"{100 * ms['mean']:.2f}"
        mean += f" ± {100 * ms['sd']:.2f}" if ms and ms["sd"] is not None else ""
        cells = " | ".join("-" if v is None else f"{100 * v:.2f}" for v in values)
        epochs = ", ".join(
            f"{_epochs(v, values[i])} ({_epochs(t, values[i])})"
            for i, (v, t) in enumerate(zip(reach["val"][arm], reach["test"][arm], strict=True))
        )
        lines.append(f"| {arm} | {mean} | {cells} | {epochs} |")
    if not any("seeds" in row for row in result["paired_differences"]):
        return "\n".join(lines + epoch_rows(result))  # no pair of arms finished on a seed
    lines += ["", "| B - A | seeds | per seed (points) | mean [95 % t-interval] | pooled per "
              "image [95 % Wald] | A only / B only | McNemar p |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in result["paired_differences"]:
        if "seeds" not in row:
            continue
        s, p = row["seeds"], row["pooled_per_image"]
        ci = s["t_interval_95"]
        ci_text = f" [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]" if ci else ""
        lines.append(
            f"| {row['b']} - {row['a']} | {', '.join(map(str, row['seeds_used']))} | "
            + ", ".join(f"{100 * d:+.2f}" for d in s["per_seed"])
            + f" | {100 * s['mean']:+.2f}{ci_text} | {100 * p['diff']:+.2f} "
            f"[{100 * p['ci_low']:+.2f}, {100 * p['ci_high']:+.2f}] | {p['a_only']} / "
            f"{p['b_only']} | {p['p_value']:.3g} |"
        )
    return "\n".join(lines + epoch_rows(result))


def epoch_rows(result: dict[str, Any]) -> list[str]:
    """Per seed with any epoch run: validation (test) accuracy per epoch of every arm, the
    epochs an unfinished run has done so far included."""
    val, test = result["accuracy_by_epoch"]["val"], result["accuracy_by_epoch"]["test"]
    width = max(len(c) for per_seed in val.values() for c in per_seed)
    lines = []
    for i, seed in enumerate(result["seeds"]):
        if not any(val[arm][i] for arm in val):
            continue
        lines += ["", f"Seed {seed}, validation (test) accuracy per epoch, %:", "",
                  "| arm | " + " | ".join(f"epoch {e}" for e in range(1, width + 1)) + " |",
                  "|---|" + "---|" * width]  # fmt: skip
        for arm in val:
            cells = [
                f"{100 * v:.2f} ({100 * t:.2f})"
                for v, t in zip(val[arm][i], test[arm][i], strict=True)
            ]
            cells += ["-"] * (width - len(cells))
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def _epochs(value: int | None, accuracy: float | None) -> str:
    """An epoch count; ``never`` for a finished run that did not reach it, ``-`` unknown."""
    if value is not None:
        return str(value)
    return "never" if accuracy is not None else "-"


def report(args: argparse.Namespace) -> int:
    result = build_result(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_json(args.json, result)
    print(markdown(result))
    if result["unfinished"]:
        print(f"\nunfinished (not in the table): {', '.join(result['unfinished'])}")
    print(f"\nwritten: {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "report"):
        p = sub.add_parser(name)
        p.add_argument("--out", type=Path, default=Path("runs/idsnn-ablation"))
        p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a setting of the experiment file, as in `spikebridge "
                       "experiment --set` (e.g. distill.kd_temperature=2); repeatable")  # fmt: skip
    sub.choices["run"].add_argument("--jobs", type=int, default=2)
    sub.choices["run"].add_argument("--teacher", type=Path, help="a finished teacher run "
                                    "to share instead of training OUT/teacher")  # fmt: skip
    sub.choices["report"].add_argument("--teacher", type=Path, help="the teacher run, if "
                                       "not OUT/teacher")  # fmt: skip
    rep = sub.choices["report"]
    rep.add_argument("--json", type=Path, default=RESULT, help="where the JSON goes")
    rep.add_argument("--sample", action="store_true", help="per-image tests on the runs' "
                     "balanced test sample instead of the whole test file")  # fmt: skip
    rep.add_argument("--initial-images", type=int, default=1000, help="validation images "
                     "scoring the students before training (default 1000)")  # fmt: skip
    rep.add_argument("--machine", help="machine description for the JSON (default: detected)")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args)
    return report(args)


if __name__ == "__main__":
    sys.exit(main())

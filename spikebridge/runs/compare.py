"""``spikebridge compare A B``: two run folders on the same test images, paired statistics.

A difference of a few tenths of a point between two conversions is a handful of images; this
says whether it is more than chance (exact McNemar test, 95 % interval of the paired
difference; :mod:`spikebridge.analysis.paired`). Both runs must score the same images: the
same dataset, data folder, subset and seed (checked), and the same first ``test_images``.
With ``whole_test_set`` both are scored on every image of the dataset's test file (a run
trained with ``--subset`` keeps only a sample of it, e.g. 4000 of Fashion-MNIST's 10,000), and
only the dataset and data folder must match.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spikebridge.analysis import measurement_at
from spikebridge.analysis.paired import format_paired, paired_rows
from spikebridge.config import check_count
from spikebridge.data.registry import stored_normalization
from spikebridge.engine import rundir
from spikebridge.engine.evaluate import model_timesteps, per_image_correct
from spikebridge.engine.memory import check_simulation_fits
from spikebridge.errors import ConfigError
from spikebridge.runs.conversion import eval_loader, run_data
from spikebridge.runs.measure import measure_run
from spikebridge.runs.setup import resolve_device

SAME_DATA_KEYS = ("dataset", "data_dir", "subset", "val_size")


SAME_FILE_KEYS = ("dataset", "data_dir")


def _data_identity(config: Mapping[str, Any], whole_test_set: bool = False) -> dict[str, Any]:
    """What must match for two runs to score the same test images."""
    data = config.get("data", {})
    normalization = {"normalization": stored_normalization(data)}  # the same inputs
    if whole_test_set:  # every image of the test file: the split settings no longer matter
        return {**{k: data.get(k) for k in SAME_FILE_KEYS}, **normalization}
    seed = config.get("train", {}).get("seed", 0)
    return {**{k: data.get(k) for k in SAME_DATA_KEYS}, "seed": seed, **normalization}


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    timesteps: Sequence[int] | None = None,
    test_images: int | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    data_dir: str | None = None,
    whole_test_set: bool = False,
) -> dict[str, Any]:
    """Score both runs' models on the same test images; per t: both accuracies, B − A with
    its 95 % interval, the disagreement counts and the exact McNemar p-value.

    ``timesteps``: the t to report (default: every t up to the larger model T).
    ``whole_test_set``: every image of the dataset's test file instead of the runs' split.
    ConfigError when the runs were not made on the same test split (same test file with
    ``whole_test_set``).
    """
    return compare_against(
        run_a, [run_b], timesteps, test_images, device, batch_size, data_dir, whole_test_set
    )[0]


def compare_against(
    run_a: str | Path,
    runs_b: Sequence[str | Path],
    timesteps: Sequence[int] | None = None,
    test_images: int | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    data_dir: str | None = None,
    whole_test_set: bool = False,
) -> list[dict[str, Any]]:
    """:func:`compare_runs` of one baseline ``run_a`` against each of ``runs_b``; the
    baseline is simulated once."""
    if timesteps is not None and (not timesteps or min(timesteps) < 1):
        raise ConfigError(f"timesteps are {list(timesteps)}; expected integers >= 1.")
    if not runs_b:
        raise ConfigError("nothing to compare: give at least one run B.")
    check_count("--test-images", test_images)
    check_count("--batch-size", batch_size)
    dev = resolve_device(device)
    model_a, config_a = rundir.load_run(run_a, dev)
    others = [rundir.load_run(run, dev) for run in runs_b]
    id_a = _data_identity(config_a, whole_test_set)
    for run, (_, config_b) in zip(runs_b, others, strict=True):
        if (id_b := _data_identity(config_b, whole_test_set)) != id_a:
            keys = "dataset, data folder, normalization" + (
                "" if whole_test_set else ", subset, val_size, seed"
            )
            raise ConfigError(
                f"{run_a} and {run} do not share a test split ({keys}): {id_a} vs {id_b}"
            )
    splits, data, seed = run_data(config_a, data_dir, whole_test_set)
    loader = eval_loader(splits, data, seed, dev, batch_size, test_images)
    # Simulate only as far as asked: a conversion run keeps the largest T it was evaluated at.
    models = [model_a, *(m for m, _ in others)]
    t_max = max(timesteps) if timesteps else max(map(model_timesteps, models))
    wanted = sorted(set(timesteps)) if timesteps else list(range(1, t_max + 1))
    for model in models:
        check_simulation_fits(model.config, loader.info.image_size, loader.batch_size, t_max,
                              dev.type)  # fmt: skip
    correct_a = per_image_correct(model_a, loader, t_max)  # an ANN ignores t_max
    ops_a = operations_by_t(measure_run(model_a, loader, timesteps=_sim(model_a, t_max)), wanted)
    results = []
    for run_b, (model_b, _) in zip(runs_b, others, strict=True):
        rows = paired_rows(correct_a, per_image_correct(model_b, loader, t_max), wanted)
        measured = measure_run(model_b, loader, timesteps=_sim(model_b, t_max))
        ops_b = operations_by_t(measured, wanted)
        text = format_paired(rows, str(run_a), str(run_b))
        results.append({
            "run_a": str(run_a), "run_b": str(run_b), "test_images": int(correct_a.shape[-1]),
            "rows": [r.to_dict() for r in rows],
            "operations": {"a": ops_a, "b": ops_b, "images": measured["measured_images"]},
            "text": text + "\n" + format_operations(ops_a, ops_b, measured["measured_images"]),
        })  # fmt: skip
    return results


def _sim(model: Any, t_max: int) -> int | None:
    return t_max if getattr(model, "spiking", False) else None


def operations_by_t(m: dict[str, Any], wanted: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Per t: firing rate, operations (SOPs of an SNN over its first t steps, MACs of an ANN)
    and the energy estimate per image, from a :func:`measure_run` result (METHODS 3)."""
    out = {}
    for t in wanted:
        at = measurement_at(m, t)
        out[str(t)] = (
            {"firing_rate": None, "ops_per_image": m["macs_per_image"], "ops": "MACs",
             "energy_uj": m["ann_energy_estimate_uj"]}
            if at is None else
            {"firing_rate": at["firing_rate"], "ops_per_image": at["sops_per_image"],
             "ops": "SOPs", "energy_uj": at["energy_estimate_uj"]}
        )  # fmt: skip
    return out


def format_operations(ops_a: dict[str, dict], ops_b: dict[str, dict], images: int) -> str:
    """Firing rate, operations and energy of A and B at each t, beside the accuracy table."""

    def cell(v: float | None, scale: float = 1.0) -> str:
        return "-" if v is None else f"{v * scale:.4g}"

    lines = [f"per image over the first t steps ({images} test images; ops: SOPs of an SNN, "
             "MACs of an ANN; energy: estimate, E_MAC 4.6 pJ, E_AC 0.9 pJ)",
             f"{'t':>4} {'A rate':>8} {'B rate':>8} {'A ops M':>9} {'B ops M':>9} "
             f"{'A µJ':>8} {'B µJ':>8}"]  # fmt: skip
    for t, a in ops_a.items():
        b = ops_b[t]
        lines.append(
            f"{t:>4} {cell(a['firing_rate']):>8} {cell(b['firing_rate']):>8} "
            f"{cell(a['ops_per_image'], 1e-6):>9} {cell(b['ops_per_image'], 1e-6):>9} "
            f"{cell(a['energy_uj']):>8} {cell(b['energy_uj']):>8}"
        )
    return "\n".join(lines)

"""benchmarks/framework_bench.py: its own logic on a tiny size (JSON shape, spike agreement,
bad input), spikebridge only; peers are skipped here, and nothing is timed against a bound."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "framework_bench.py"


@pytest.fixture(scope="module")
def bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("framework_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(bench, *argv: str):  # type: ignore[no-untyped-def]
    args = bench.get_args_parser().parse_args(list(argv))
    assert bench.check_args(args) is None
    return args


def test_json_shape_on_a_tiny_size(bench, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "bench.json"
    args = _args(
        bench, "--frameworks", "spikebridge", "--timesteps", "3", "--batch", "2",
        "--neurons", "32", "--rounds", "1", "--lif-rounds", "1", "--json", str(out),
    )  # fmt: skip
    bench.main(args)
    data = json.loads(out.read_text())
    assert data["settings"]["timesteps"] == 3 and data["settings"]["neurons"] == 32
    assert data["total_elements"] == 3 * 2 * 32
    assert set(data["linear_only"]) == {"ms", "peak_mib"}
    (row,) = data["results"]
    assert row["framework"] == "spikebridge" and row["device"] == "cpu"
    for key in ("ms", "peak_mib", "lif_ms", "lif_peak_mib", "first_call_s"):
        assert isinstance(row[key], float) and row[key] >= 0
    assert row["mismatches"] == 0 and 0 < row["spikes"] < 3 * 2 * 32


def test_spike_agreement_counts_mismatches(bench) -> None:  # type: ignore[no-untyped-def]
    currents = torch.tensor([[[0.5, 1.5]], [[0.9, 0.2]]])  # [T=2, B=1, n=2]
    ours = bench.spikebridge_lif()
    # h: [0.5, 1.5] -> spike at n=1; then 0.375+0.9 = 1.275 -> spike at n=0, 0.2 at n=1.
    flipped = lambda x: 1 - ours(x)  # noqa: E731 - a framework that gets every spike wrong
    report = bench.spike_agreement({"spikebridge": ours, "other": flipped}, currents)
    assert report["spikebridge"] == {"spikes": 2, "mismatches": 0}
    assert report["other"] == {"spikes": 2, "mismatches": 4}


def test_bad_input_exits_2_with_one_sentence(bench, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "never.json"
    assert bench.run_cli(["--timesteps", "0", "--json", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "--timesteps must be a positive integer, got 0"
    assert bench.run_cli(["--device", "tpu"]) == 2
    assert "--device must be cpu or cuda" in capsys.readouterr().err
    assert not out.exists()


def test_quick_sets_the_small_configuration(bench) -> None:  # type: ignore[no-untyped-def]
    args = _args(bench, "--quick")
    assert (args.timesteps, args.rounds, args.lif_rounds) == (4, 3, 7)
    assert args.neurons == 16384 and args.batch == 16

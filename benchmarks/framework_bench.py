"""Open Neuromorphic's SNN framework benchmark on CPU: spikebridge against SpikingJelly,
snnTorch and Norse, side by side in one process; and the compile cost of our neuron.

Part ``frameworks`` (default), the benchmark of Open Neuromorphic's "SNN library benchmarks"
post: one ``nn.Linear(n, n)`` and a LIF layer, input ``randn(T, B, n)`` (16k neurons, batch
16, T = 500 there), forward, ``output.sum()``, backward. On an RTX 4090 it reports Spyx fp16
47 ms, Norse + torch.compile 110 ms, SpikingJelly CuPy 118 ms, SpikingJelly torch 1341 ms,
snnTorch 3078 ms. Here, on CPU, T is scaled down (``--timesteps``, the same for all):

- every framework gets the *same* ``nn.Linear`` object (same weights) and the same input;
  the Linear runs on the whole ``[T·B, n]`` block for all of them, then each framework's LIF;
- the same neuron: ``h_t = β·v_{t-1} + x_t``, spike ``h_t ≥ θ``, hard reset to 0, reset
  detached where the framework allows, β = 0.75, θ = 1, sigmoid surrogate (α = 4) where
  available. Mapped per framework: spikebridge ``SpikingNeuron(θ, β, strict=False)``;
  SpikingJelly ``LIFNode(tau=1/(1-β), decay_input=False, v_reset=0)``, multi-step (2.0
  picks its implementation by device: the Torch reference on CPU, its kernels on CUDA); snnTorch ``Leaky(beta=β, reset_mechanism="zero")`` looped over T; Norse
  ``LIFBoxCell`` (the LIF without a current term; its default ``LIF`` adds a synaptic
  current and so computes another neuron) with ``dt = 1``, ``τ_mem⁻¹ = 1-β``, which charges
  ``v' = β·v' + (1-β)·x``, i.e. ``v' = (1-β)·h``, so ``v_th = (1-β)·θ``; its own SuperSpike
  surrogate (no sigmoid); the time loop under ``torch.compile``. snnTorch and Norse fire on
  ``>``, the others on ``≥``: an exact tie is the only way spikes may differ, besides float
  rounding in Norse's rescaled charge;
- the spikes of each framework are compared with spikebridge's, element by element.

Reported per framework: the median over interleaved rounds (one call of each framework per
round, so a load on the machine slows them alike) of Linear + LIF forward + backward (``ms``)
and, apart, of the LIF alone on the same currents (``lif_ms``, the part that differs between
frameworks: the Linear's matrix products are the same calls for all and dominate on a CPU);
the first call (compilation included) is timed apart and excluded; a row ``(Linear only)``
times the Linear with no LIF (the part every row shares). Peak memory (``peak_mib``,
``lif_peak_mib``): on CPU the highest resident set size sampled every 0.2 ms during one call,
minus the resident size just before it (model, input and, for ``lif``, the currents already
in place; gradients set to None), with glibc's mmap threshold fixed so freed blocks leave the
RSS (the script re-executes itself with ``MALLOC_MMAP_THRESHOLD_`` set): it counts every
byte the step makes live, in whatever allocator, the same way for all. It includes the
Linear's weight gradient (n² floats: 1024 MiB at n = 16384), the same in every row. On CUDA:
``max_memory_allocated`` above the allocation before the call.

Part ``compile``: our compiled neuron's first call (compilation) and its steady forward +
backward at T = 4, 32, 100, 500 (``--compile-timesteps``) on a Linear (512 -> 4096) + LIF
layer's currents, batch 16, each T in fresh processes: ``cold`` with an empty inductor cache
(a fresh machine), ``warm`` in a second process on that cache (every later process), and the
same kernels eager; plus, for T <= 32, the window compiled in one unrolled piece (the code
before chunking) as the comparison.

Run from the repository root (peers from the environment tools/peer-env.sh builds)::

    PYTHONPATH=. .peer-venv/bin/python benchmarks/framework_bench.py --quick --json out.json
    PYTHONPATH=. .peer-venv/bin/python benchmarks/framework_bench.py --part compile
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_time import RssPeak, _rss_bytes, timed_rounds  # noqa: E402

from spikebridge.nn import SpikingNeuron  # noqa: E402

BETA, THETA, ALPHA = 0.75, 1.0, 4.0
FRAMEWORKS = ("spikebridge", "spikingjelly", "snntorch", "norse")
MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"
LINEAR_ONLY = "(Linear only)"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["frameworks", "compile"], default="frameworks")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--timesteps", type=int, default=16, help="T (the benchmark's is 500)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--neurons", type=int, default=16384)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds of Linear + LIF")
    p.add_argument("--lif-rounds", type=int, default=15, help="timed rounds of the LIF alone")
    p.add_argument("--quick", action="store_true", help="T = 4, 3 + 7 rounds (< 5 min)")
    p.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS))
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--compile-timesteps", type=int, nargs="+", default=[4, 32, 100, 500])
    p.add_argument("--json", help="also write the results and settings to this JSON file")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one compile measurement
    return p


def check_args(args: argparse.Namespace) -> str | None:
    """One sentence naming a bad input, or None."""
    if args.quick:
        args.timesteps, args.rounds, args.lif_rounds = 4, 3, 7
    sizes = ("timesteps", "batch", "neurons", "rounds", "lif_rounds", "threads")
    for name in sizes:
        if getattr(args, name) < 1:
            return (
                f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}"
            )
    if min(args.compile_timesteps) < 1:
        return f"--compile-timesteps must be positive integers, got {args.compile_timesteps}"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return f"--device {args.device} needs a CUDA device, and none is visible; use --device cpu"
    if args.device != "cpu" and not args.device.startswith("cuda"):
        return f"--device must be cpu or cuda[:N], got {args.device!r}"
    return None


# --- the four LIF layers -----------------------------------------------------------------


def spikebridge_lif(device: str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    return SpikingNeuron(
        THETA, BETA, reset="hard", strict=False, surrogate="sigmoid", alpha=ALPHA,
        detach_reset=True,
    ).to(device)  # fmt: skip


def spikingjelly_lif(device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    from spikingjelly.activation_based import functional, neuron, surrogate

    node = neuron.LIFNode(
        tau=1 / (1 - BETA), decay_input=False, v_threshold=THETA, v_reset=0.0,
        detach_reset=True, surrogate_function=surrogate.Sigmoid(alpha=ALPHA), step_mode="m",
    ).to(device)  # fmt: skip

    def run(x: torch.Tensor) -> torch.Tensor:
        functional.reset_net(node)  # every call simulates the window from v = 0, like ours
        return node(x)

    return run


def snntorch_lif(device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    import snntorch
    from snntorch import surrogate

    leaky = snntorch.Leaky(
        beta=BETA, threshold=THETA, spike_grad=surrogate.sigmoid(slope=ALPHA),
        reset_mechanism="zero",
    ).to(device)  # fmt: skip

    def run(x: torch.Tensor) -> torch.Tensor:
        mem, out = torch.zeros_like(x[0]), []
        for x_t in x:
            spk, mem = leaky(x_t, mem)
            out.append(spk)
        return torch.stack(out)

    return run


def norse_lif(device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    from norse.torch import LIFBoxCell
    from norse.torch.functional.lif_box import LIFBoxParameters

    def const(value: float) -> torch.Tensor:
        return torch.tensor(value, device=device)

    params = LIFBoxParameters(
        tau_mem_inv=const(1 - BETA), v_th=const((1 - BETA) * THETA), v_reset=const(0.0),
        v_leak=const(0.0),
    )  # fmt: skip
    cell = LIFBoxCell(params, dt=1.0).to(device)

    def run(x: torch.Tensor) -> torch.Tensor:
        state, out = None, []
        for x_t in x:
            z, state = cell(x_t, state)
            out.append(z)
        return torch.stack(out)

    return torch.compile(run)


def version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as meta_version

    if package == "spikebridge":  # run from the checkout (PYTHONPATH=.), maybe not installed
        import spikebridge

        return getattr(spikebridge, "__version__", None)
    try:
        return meta_version(package)
    except PackageNotFoundError:
        return None


def build_lifs(args: argparse.Namespace) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """name -> LIF layer ``[T, B, n] -> [T, B, n]``, for each requested framework installed."""
    makers = {
        "spikebridge": lambda: spikebridge_lif(args.device),
        "spikingjelly": lambda: spikingjelly_lif(args.device),
        "snntorch": lambda: snntorch_lif(args.device),
        "norse": lambda: norse_lif(args.device),
    }
    lifs = {}
    for name in args.frameworks:
        if name != "spikebridge" and version(name) is None:
            print(f"[skip] {name} is not installed in this Python (see tools/peer-env.sh)")
            continue
        lifs[name] = makers[name]()
    return lifs


# --- measurement -------------------------------------------------------------------------


def _sync(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def full_step(linear: nn.Linear, lif: Callable, x: torch.Tensor) -> Callable[[], None]:
    """The benchmark's call: Linear + LIF forward, ``sum``, backward (weight grads freed)."""

    def run() -> None:
        linear.weight.grad = linear.bias.grad = None
        lif(linear(x)).sum().backward()

    return run


def lif_step(lif: Callable, currents: torch.Tensor) -> Callable[[], None]:
    """The LIF alone, forward + backward on fixed currents (a leaf that needs a gradient)."""

    def run() -> None:
        currents.grad = None
        lif(currents).sum().backward()

    return run


def peak_mib(fn: Callable[[], None], device: str, *leaves: torch.Tensor) -> float:
    """Memory the call makes live at its peak, above what was live before (module doc);
    the gradients of ``leaves`` are freed first, so the ones the call makes are counted."""
    for leaf in leaves:
        leaf.grad = None
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    before = _rss_bytes()
    with RssPeak() as rss:
        fn()
    return (rss.peak - before) / 2**20


def spike_agreement(
    lifs: dict[str, Callable], currents: torch.Tensor
) -> dict[str, dict[str, float | int]]:
    """Each framework's spikes against spikebridge's on the same currents."""
    with torch.no_grad():
        spikes = {name: lif(currents).detach().float() for name, lif in lifs.items()}
    ref = spikes.get("spikebridge")
    out = {}
    for name, s in spikes.items():
        mismatches = int((s != ref).sum()) if ref is not None else -1
        out[name] = {"spikes": int(s.sum()), "mismatches": mismatches}
    return out


def timed_medians(fns: dict[str, Callable[[], None]], rounds: int, sync: Callable) -> dict:
    times = timed_rounds(fns, rounds, sync)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def bench_frameworks(args: argparse.Namespace) -> dict[str, Any]:
    """Part ``frameworks``: time, peak memory and spike agreement of each LIF layer."""
    torch.manual_seed(0)
    sync = _sync(args.device)
    linear = nn.Linear(args.neurons, args.neurons).to(args.device)
    x = torch.randn(args.timesteps, args.batch, args.neurons).to(args.device)
    with torch.no_grad():
        currents = linear(x)
    currents.requires_grad_(True)
    lifs = build_lifs(args)
    full = {name: full_step(linear, lif, x) for name, lif in lifs.items()}
    full[LINEAR_ONLY] = full_step(linear, lambda currents: currents, x)  # the shared part
    alone = {name: lif_step(lif, currents) for name, lif in lifs.items()}
    first = {}
    for name in full:  # compilation happens here, timed apart
        start = time.perf_counter()
        alone.get(name, lambda: None)()
        full[name]()
        sync()
        first[name] = time.perf_counter() - start
    lif_ms = timed_medians(alone, args.lif_rounds, sync)
    full_ms = timed_medians(full, args.rounds, sync)
    agreement = spike_agreement(lifs, currents)
    params = (linear.weight, linear.bias)
    results = []
    for name in lifs:
        results.append({
            "framework": name, "device": args.device, "version": version(name),
            "ms": full_ms[name], "peak_mib": peak_mib(full[name], args.device, *params),
            "lif_ms": lif_ms[name], "lif_peak_mib": peak_mib(alone[name], args.device, currents),
            "first_call_s": first[name], **agreement[name],
        })  # fmt: skip
    reference = {
        "ms": full_ms[LINEAR_ONLY],
        "peak_mib": peak_mib(full[LINEAR_ONLY], args.device, *params),
    }
    return {"results": results, "linear_only": reference, "total_elements": currents.numel()}


# --- part compile ------------------------------------------------------------------------


def compile_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One process: our neuron's first call and steady time at one T (see module doc)."""
    import spikebridge.nn.neurons as neurons

    if spec["unrolled"]:
        neurons.CHUNK = spec["timesteps"]  # the whole window in one compiled kernel
    gen = torch.Generator().manual_seed(0)
    shape = (spec["timesteps"], spec["batch"], spec["features"])
    currents = torch.randn(shape, generator=gen).mul_(0.6).requires_grad_(True)
    step = lif_step(spikebridge_lif(), currents)

    def with_compile(flag: str) -> Callable[[], None]:
        def run() -> None:
            os.environ["SPIKEBRIDGE_COMPILE"] = flag
            step()

        return run

    fns = {"compiled": with_compile("1"), "eager": with_compile("0")}
    start = time.perf_counter()
    fns["compiled"]()
    first = time.perf_counter() - start
    fns["eager"]()
    ms = timed_medians(fns, spec["rounds"], lambda: None)
    return {"first_call_s": first, "compiled_ms": ms["compiled"], "eager_ms": ms["eager"]}


def _spawn_compile(spec: dict[str, Any], cache_dir: str) -> dict[str, Any]:
    argv = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache_dir, OMP_NUM_THREADS="1")
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"compile worker {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_compile(args: argparse.Namespace) -> dict[str, Any]:
    """Part ``compile``: cold and warm first calls, steady times, per T (fresh processes)."""
    rows = []
    for steps in args.compile_timesteps:
        variants = [("chunked", False)] + ([("unrolled", True)] if steps <= 32 else [])
        for label, unrolled in variants:
            spec = {"timesteps": steps, "batch": args.batch, "features": 4096,
                    "rounds": 3 if steps >= 100 else 7, "unrolled": unrolled}  # fmt: skip
            with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
                cold = _spawn_compile(spec, cache)
                warm = _spawn_compile(spec, cache)
            rows.append({"timesteps": steps, "kernel": label, "cold": cold, "warm": warm})
            print(f"  T={steps} {label}: {json.dumps(rows[-1])}", flush=True)
    return {"rows": rows, "shape": f"[T, {args.batch}, 4096]"}


# --- reporting ---------------------------------------------------------------------------


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(), "torch": torch.__version__,
        "cpu_count": os.cpu_count(), "threads": args.threads, "device": args.device,
        "load_average_1min": os.getloadavg()[0],
    }  # fmt: skip


def frameworks_table(result: dict[str, Any]) -> str:
    lines = [
        "| framework | Linear+LIF ms | peak MiB | LIF alone ms | LIF peak MiB | first call s "
        "| spikes | mismatches |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["results"]:
        lines.append(
            f"| {r['framework']} {r['version'] or ''} | {r['ms']:.0f} | {r['peak_mib']:.0f} "
            f"| {r['lif_ms']:.1f} | {r['lif_peak_mib']:.0f} | {r['first_call_s']:.1f} "
            f"| {r['spikes']} | {r['mismatches']} |"
        )
    ref = result["linear_only"]
    lines.append(f"| {LINEAR_ONLY} | {ref['ms']:.0f} | {ref['peak_mib']:.0f} | | | | | |")
    return "\n".join(lines)


def compile_table(result: dict[str, Any]) -> str:
    lines = [
        "| T | kernel | first call cold s | first call warm s | compiled ms | eager ms |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        c, w = r["cold"], r["warm"]
        lines.append(
            f"| {r['timesteps']} | {r['kernel']} | {c['first_call_s']:.1f} "
            f"| {w['first_call_s']:.1f} | {w['compiled_ms']:.1f} | {w['eager_ms']:.1f} |"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    settings = {k: getattr(args, k) for k in ("part", "timesteps", "batch", "neurons")}
    settings.update(rounds=args.rounds, lif_rounds=args.lif_rounds, quick=args.quick)
    settings.update(beta=BETA, theta=THETA, sigmoid_alpha=ALPHA)
    out: dict[str, Any] = {"settings": settings, "machine": machine_info(args)}
    if args.part == "frameworks":
        out.update(bench_frameworks(args))
        print(frameworks_table(out))
    else:
        out.update(bench_compile(args))
        print(compile_table(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


def _reexec_with_fixed_mmap_threshold() -> None:
    """Make freed activations leave the RSS (module doc), for honest CPU peak memory."""
    if os.environ.get(MMAP_ENV) is None:
        env = dict(os.environ, **{MMAP_ENV: "131072"})
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def run_cli(argv: list[str]) -> int:
    """The command line: exit status 0, 2 on bad input (one sentence on stderr), 130."""
    cli = get_args_parser().parse_args(argv)
    if cli.worker:
        torch.set_num_threads(1)
        print(json.dumps(compile_worker(json.loads(cli.worker))))
        return 0
    problem = check_args(cli)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    _reexec_with_fixed_mmap_threshold()
    try:
        main(cli)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(sys.argv[1:]))

"""Step time and peak memory of spikebridge's spiking layers, next to ReLU and SpikingJelly.

Two measurements (docs/RESULTS.md holds the headline tables, docs/notes/results-history.md
all of them, with the exact commands):

(a) ``neuron``: one spiking layer forward + backward on ``x[T, B, C, H, W]`` against
    ``torch.relu`` forward + backward on the same tensor; variants: our fused neuron with
    compiled kernels, the same kernels run eagerly, our per-step reference loop, and
    SpikingJelly's multi-step ``LIFNode`` when importable.
(b) ``train``: one SGD training step (forward, cross-entropy, backward, step) of a CIFAR-style
    ResNet as an SNN at each T, against T times the ANN step of the same network, plus the
    peak memory of the step; the SNN is built with our neurons, and again with SpikingJelly's
    ``LIFNode`` swapped into every neuron site.

Settings that make the two libraries compute the same neuron (IDSNN's LIF, METHODS 1.1,
decay 0.25, θ = 0.5, hard reset to 0, detached reset): SpikingJelly charges
``h = v - (v - v_reset)/τ + x`` with ``decay_input=False``, so ``τ = 4/3`` gives
``h = 0.25·v + x``. Its fused CPU op supports the sigmoid surrogate (α = 4) but not the
rectangle, and it fires on ``h >= θ``: so every row uses the sigmoid surrogate with α = 4,
and the neuron benchmark uses our ``strict=False``; the outputs are checked to agree.

Timing: warm-up calls are excluded (the first call's time, compilation included, is
reported apart); the variants are timed interleaved, one call each per round, so a machine
shared with other jobs slows them alike; the median over rounds is reported. Peak memory
of a training step is measured in a fresh subprocess per configuration, above everything
in place before the first full-size step (model, gradients, momentum buffers, compiled
kernels): on CUDA with ``max_memory_allocated``; on CPU as the highest resident set size
sampled during two steps, minus the resident size just before them.

Run from the repository root::

    .venv/bin/python benchmarks/step_time.py --json bench.json
    PYTHONPATH=. .peer-venv/bin/python benchmarks/step_time.py   # with SpikingJelly rows
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
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch._inductor.config
import torch.nn.functional as F
from torch import nn

from spikebridge.models import build
from spikebridge.nn import SpikingNeuron, SpikingSite

RELU = "ReLU (torch.relu)"
SJ_TAU = 4.0 / 3.0  # 1 - 1/τ = 0.25 = IDSNN's decay (decay_input=False)
THRESHOLD, DECAY, ALPHA = 0.5, 0.25, 4.0
IMAGE_SHAPE = (3, 32, 32)  # CIFAR
NUM_CLASSES = 10


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["neuron", "train", "all"], default="all")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=32, help="training-step batch size (b)")
    p.add_argument("--timesteps", type=int, nargs="+", default=[1, 2, 4, 6], help="T values (b)")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds per (b) configuration")
    p.add_argument("--neuron-repeats", type=int, default=50, help="timed rounds in (a)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier of the model")
    p.add_argument(
        "--neuron-shape", type=int, nargs=5, default=[4, 32, 64, 16, 16],
        metavar=("T", "B", "C", "H", "W"), help="input of the neuron benchmark (a)",
    )  # fmt: skip
    p.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (1 by default: on a machine shared with other jobs, an "
        "oversubscribed OpenMP pool spin-waits and is many times slower)",
    )  # fmt: skip
    p.add_argument("--no-peer", action="store_true", help="skip SpikingJelly even if importable")
    p.add_argument("--json", help="also write all results to this JSON file")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one (b) configuration
    return p


# --- environment -------------------------------------------------------------------------


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    """What the numbers were measured on (for docs/RESULTS.md)."""
    info: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": args.threads,
        "device": args.device,
        "spikingjelly": _spikingjelly_version(args),
    }
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        info["cpu"] = next(
            line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    if os.path.exists("/proc/meminfo"):
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
        info["ram_gib"] = round(kib / 2**20, 1)
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(args.device)
    return info


def _spikingjelly_version(args: argparse.Namespace) -> str | None:
    if args.no_peer:
        return None
    try:
        import spikingjelly  # optional peer: benchmarks only
    except ImportError:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("spikingjelly")
    except PackageNotFoundError:
        return getattr(spikingjelly, "__version__", "unknown")


def _sync(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def set_compile(enabled: bool) -> None:
    """Switch our neuron kernels between compiled and eager (read at every call)."""
    os.environ["SPIKEBRIDGE_COMPILE"] = "1" if enabled else "0"


# --- neurons -----------------------------------------------------------------------------


class SpikingJellyLIF(nn.Module):
    """SpikingJelly's multi-step LIF set to IDSNN's dynamics; reset before every call so
    that, like our neurons, each call simulates the whole window from ``v = 0``."""

    def __init__(self) -> None:
        super().__init__()
        from spikingjelly.activation_based import neuron, surrogate

        self.node = neuron.LIFNode(
            tau=SJ_TAU, decay_input=False, v_threshold=THRESHOLD, v_reset=0.0,
            detach_reset=True, surrogate_function=surrogate.Sigmoid(alpha=ALPHA), step_mode="m",
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.node.reset()
        return self.node(x)


def our_lif(backend: str = "fused", strict: bool = False) -> SpikingNeuron:
    """IDSNN's LIF with the surrogate SpikingJelly's fused op supports (see module doc)."""
    return SpikingNeuron(
        THRESHOLD, DECAY, reset="hard", strict=strict, surrogate="sigmoid", alpha=ALPHA,
        detach_reset=True, backend=backend,
    )  # fmt: skip


def timed_rounds(
    fns: dict[str, Callable[[], None]], repeats: int, sync: Callable[[], None]
) -> dict[str, list[float]]:
    """Time each function once per round, interleaved; returns seconds per call."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def _first_call(fn: Callable[[], None], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def _fwd_bwd(layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, g: torch.Tensor):  # type: ignore[no-untyped-def]
    def run() -> None:
        x.grad = None
        layer(x).backward(g)

    return run


def neuron_variants(args: argparse.Namespace) -> dict[str, tuple[Callable[..., Any], bool]]:
    """name -> (layer, compiled kernels?)."""
    variants: dict[str, tuple[Callable[..., Any], bool]] = {
        RELU: (torch.relu, False),
        "spikebridge fused, compiled": (our_lif().to(args.device), True),
        "spikebridge fused, eager": (our_lif().to(args.device), False),
        "spikebridge reference loop": (our_lif("loop").to(args.device), False),
    }
    if _spikingjelly_version(args):
        variants["SpikingJelly LIFNode (m)"] = (SpikingJellyLIF().to(args.device), False)
    return variants


def check_same_neuron(args: argparse.Namespace, x: torch.Tensor, g: torch.Tensor) -> dict:
    """Max difference of spikes and input gradients: ours (eager) vs SpikingJelly."""
    if not _spikingjelly_version(args):
        return {}
    out = {}
    for name, layer in (("ours", our_lif().to(x.device)), ("sj", SpikingJellyLIF())):
        xi = x.detach().clone().requires_grad_(True)
        spikes = layer(xi)
        spikes.backward(g)
        out[name] = (spikes.detach(), xi.grad)
    return {
        "spike_mismatch_fraction": (out["ours"][0] != out["sj"][0]).float().mean().item(),
        "max_abs_grad_diff": (out["ours"][1] - out["sj"][1]).abs().max().item(),
    }


def bench_neuron(args: argparse.Namespace) -> dict[str, Any]:
    """(a) one layer forward + backward on ``x[T, B, C, H, W]``, compared with ReLU."""
    sync = _sync(args.device)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(args.neuron_shape, generator=gen) * 1.2).to(args.device).requires_grad_()
    g = torch.randn(args.neuron_shape, generator=gen).to(args.device)
    variants = neuron_variants(args)
    # Report the compile time a fresh machine pays, not a hit in inductor's on-disk cache.
    torch._inductor.config.force_disable_caches = True
    fns, first = {}, {}
    for name, (layer, compiled) in variants.items():
        run = _fwd_bwd(layer, x, g)
        fns[name] = _with_compile(run, compiled)
        first[name] = _first_call(fns[name], sync)
        for _ in range(args.warmup):
            fns[name]()
    times = timed_rounds(fns, args.neuron_repeats, sync)
    rows = _neuron_rows(times, first)
    return {"shape": args.neuron_shape, "rows": rows, "check": check_same_neuron(args, x, g)}


def _neuron_rows(times: dict[str, list[float]], first: dict[str, float]) -> list[dict]:
    """Per variant: median / min time, and the ratio to ReLU two ways: the median over
    rounds of (variant / ReLU in the same round), robust to load that changes between
    rounds, and min / min, the ratio on the least disturbed calls."""
    relu = times[RELU]
    rows = []
    for name, t in times.items():
        per_round = [a / b for a, b in zip(t, relu, strict=True)]
        rows.append({
            "variant": name,
            "median_ms": 1e3 * statistics.median(t),
            "min_ms": 1e3 * min(t),
            "ratio_to_relu": statistics.median(per_round),
            "ratio_min_to_min": min(t) / min(relu),
            "first_call_ms": 1e3 * first[name],
        })  # fmt: skip
    return rows


def _with_compile(fn: Callable[[], None], compiled: bool) -> Callable[[], None]:
    def run() -> None:
        set_compile(compiled)
        fn()

    return run


# --- training step (one configuration per subprocess) --------------------------------------


def swap_in_spikingjelly(model: nn.Module) -> nn.Module:
    """Replace the neuron of every SpikingSite with SpikingJelly's LIFNode (multi-step)."""
    for site in model.modules():
        if isinstance(site, SpikingSite):
            site.neuron = SpikingJellyLIF()  # type: ignore[assignment]
    return model


def build_variant(variant: str, timesteps: int, args: argparse.Namespace) -> nn.Module:
    """``ann`` | ``ours`` (compiled kernels) | ``ours-eager`` | ``sj``; same weights (seed 0)."""
    torch.manual_seed(0)
    kw: dict[str, Any] = dict(num_classes=NUM_CLASSES, in_channels=IMAGE_SHAPE[0], width=args.width)
    if variant == "ann":
        return build(args.model, **kw).to(args.device)
    model = build(args.model, neuron="lif", timesteps=timesteps, surrogate="sigmoid", **kw)
    if variant == "sj":
        swap_in_spikingjelly(model)
    return model.to(args.device)


def _batch(batch: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *IMAGE_SHAPE, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)
    return x.to(device), y.to(device)


def _trainer(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One SGD step (lr 0.05, momentum 0.9, wd 1e-4: METHODS 1.4) on a given batch."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    model.train()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssPeak:
    """Highest resident set size seen while the block runs (sampled every 0.2 ms).

    Not ``ru_maxrss``: that is the peak over the process's life, which for the compiled
    variant includes the compiler's own memory, not only the training step's.
    """

    def __enter__(self) -> RssPeak:
        self.peak, self._stop = _rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(2e-4)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def worker_memory(spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Peak memory of full-size training steps above everything in place before them."""
    set_compile(spec["variant"] != "ours-eager")
    model = build_variant(spec["variant"], spec["timesteps"], args)
    step = _trainer(model)
    step(*_batch(2, args.device))  # momentum buffers, gradients, compiled kernels
    x, y = _batch(args.batch, args.device)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(args.device)
        before = torch.cuda.memory_allocated(args.device)
        for _ in range(2):
            step(x, y)
        torch.cuda.synchronize()
        return {"peak_mib": (torch.cuda.max_memory_allocated(args.device) - before) / 2**20}
    before = _rss_bytes()
    with RssPeak() as rss:
        for _ in range(2):
            step(x, y)
    return {"peak_mib": (rss.peak - before) / 2**20}


def worker_time(spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """SNN step and ANN step timed interleaved in one process (same load on both)."""
    set_compile(spec["variant"] != "ours-eager")
    x, y = _batch(args.batch, args.device)
    ann = _trainer(build_variant("ann", 1, args))
    snn = _trainer(build_variant(spec["variant"], spec["timesteps"], args))
    steps = {"ann": lambda: ann(x, y), "snn": lambda: snn(x, y)}
    sync = _sync(args.device)
    first = _first_call(steps["snn"], sync)
    for _ in range(args.warmup):
        for fn in steps.values():
            fn()
    times = timed_rounds(steps, args.repeats, sync)
    ratios = [s / (spec["timesteps"] * a) for s, a in zip(times["snn"], times["ann"], strict=True)]
    return {
        "ann_ms": 1e3 * statistics.median(times["ann"]),
        "snn_ms": 1e3 * statistics.median(times["snn"]),
        "ratio": statistics.median(ratios),
        "snn_first_call_ms": 1e3 * first,
    }


def run_worker(args: argparse.Namespace) -> None:
    spec = json.loads(args.worker)
    torch.set_num_threads(args.threads)
    result = worker_time(spec, args) if spec["kind"] == "time" else worker_memory(spec, args)
    print(json.dumps(result))


def _spawn(spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Run one configuration in a fresh Python process and return its JSON result."""
    argv = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    for flag in ("device", "batch", "repeats", "warmup", "model", "width", "threads"):
        argv += [f"--{flag}", str(getattr(args, flag))]
    argv += ["--no-peer"] if args.no_peer else []
    # A fixed mmap threshold makes freed activations leave the RSS (glibc would otherwise
    # raise the threshold and keep them on the heap), so peak RSS tracks live memory.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark worker {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_train(args: argparse.Namespace) -> dict[str, Any]:
    """(b) SNN step vs T x ANN step, and peak memory, per T and per neuron implementation."""
    snn_variants = ["ours"] + (["sj"] if _spikingjelly_version(args) else [])
    rows = []
    ann_memory = _spawn({"kind": "memory", "variant": "ann", "timesteps": 1}, args)["peak_mib"]
    for T in args.timesteps:
        for variant in snn_variants:
            spec = {"variant": variant, "timesteps": T}
            row = {"variant": variant, "T": T, **_spawn({"kind": "time", **spec}, args)}
            row.update(_spawn({"kind": "memory", **spec}, args))
            print(f"  [train] {variant} T={T}: {row}", file=sys.stderr)
            rows.append(row)
    return {"ann_peak_mib": ann_memory, "rows": rows}


# --- report --------------------------------------------------------------------------------


def neuron_table(result: dict[str, Any]) -> str:
    lines = [
        f"Neuron layer forward + backward, x = {list(result['shape'])} [T, B, C, H, W]",
        "",
        "| variant | median ms | min ms | x ReLU (median of rounds) | x ReLU (min / min) "
        "| first call ms (incl. compile) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['variant']} | {r['median_ms']:.2f} | {r['min_ms']:.2f} | "
            f"{r['ratio_to_relu']:.2f} | {r['ratio_min_to_min']:.2f} | {r['first_call_ms']:.0f} |"
        )
    if result["check"]:
        c = result["check"]
        lines += ["", f"ours vs SpikingJelly: spike mismatch {c['spike_mismatch_fraction']:.2e}, "
                  f"max |grad diff| {c['max_abs_grad_diff']:.2e}"]  # fmt: skip
    return "\n".join(lines)


def train_table(result: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"Training step, {args.model} width {args.width}, batch {args.batch}, 3x32x32, "
        f"ANN peak step memory {result['ann_peak_mib']:.0f} MiB",
        "",
        "| neurons | T | ANN step ms | SNN step ms | SNN / (T x ANN) | peak MiB | MiB / T |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        name = "spikebridge" if r["variant"] == "ours" else "SpikingJelly LIFNode"
        lines.append(
            f"| {name} | {r['T']} | {r['ann_ms']:.1f} | {r['snn_ms']:.1f} | {r['ratio']:.2f} | "
            f"{r['peak_mib']:.0f} | {r['peak_mib'] / r['T']:.0f} |"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    if args.worker:
        run_worker(args)
        return
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"machine": machine_info(args), "args": vars(args)}
    print(json.dumps(results["machine"]))
    if args.part in ("neuron", "all"):
        results["neuron"] = bench_neuron(args)
        print("\n" + neuron_table(results["neuron"]))
    if args.part in ("train", "all"):
        results["train"] = bench_train(args)
        print("\n" + train_table(results["train"], args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main(get_args_parser().parse_args())

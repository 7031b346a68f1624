"""User CNNs converted by spikebridge and by SpikingJelly 2.0, T = 1..32 (issue 21, item 7).

Trains three user CNNs briefly on a Fashion-MNIST subset (one torch thread), then converts
each with the SAME weights, calibration images and test images on both sides:

- spikebridge: ``spikebridge.conversion.convert`` through the Python API (torch.fx graph
  conversion of a user model; METHODS 2.6 ``robust`` / ``maxnorm``, 2.4 ``ttrbr``).
  ``robust`` and ``maxnorm`` thresholds do not depend on T, so one run at the largest T
  gives the accuracy at every t (the first t steps of an IF network do not depend on how
  many follow; max pooling is rate-gated on past steps only); ``ttrbr`` tunes for its T,
  so it is converted and scored once per T.
- SpikingJelly: ``ann2snn.Converter`` with each ``RateCodingRecipe`` setup of
  ``user_cnn_spikingjelly_side.py``, run in the peer environment (``bash
  tools/peer-env.sh`` builds ``.peer-venv``), in parallel with our side.

The networks (``tests/conversion/user_cnns.py``, plain torch): (a) ``sequential``, an
``nn.Sequential`` with two MaxPools; (b) ``residual``, ``FashionCNN``, a custom forward
with a residual add and two MaxPools; (c) ``deep``, ``DeepResidualCNN``, nine convs with
three residual adds and two MaxPools. QCFS is left out: these ANNs have ReLU sites.

Usage (repository root; 45 minutes on a loaded 2-core machine, most of it ttrbr at T = 16
and 32; ``--ttrbr-timesteps 1,2,4,8`` halves it)::

    bash tools/peer-env.sh                      # once: .peer-venv with SpikingJelly 2.0
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/user_cnn_vs_spikingjelly.py

Writes every cell to ``--json`` (default ``benchmarks/results/user_cnn_vs_spikingjelly.json``)
and prints the markdown table (best SpikingJelly setup per T; all setups in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "conversion"))  # user_cnns: plain torch, both venvs

DEFAULT_JSON = ROOT / "benchmarks" / "results" / "user_cnn_vs_spikingjelly.json"
TIMESTEPS = (1, 2, 4, 8, 16, 32)
NETWORK_LABELS = {
    "sequential": "(a) Sequential, 2 MaxPool",
    "residual": "(b) custom forward, residual add, 2 MaxPool",
    "deep": "(c) 9 conv, 3 residual adds, 2 MaxPool",
}
MEAN, STD = 0.286, 0.353  # Fashion-MNIST pixel mean / std


class BenchmarkInputError(ValueError):
    """A bad option or a missing prerequisite: one sentence, exit 2."""


# --------------------------------------------------------------------------- table / JSON


def best_per_t(setups: dict[str, dict[str, float]], timesteps: list[int]) -> dict[str, tuple]:
    """``{"t": (accuracy, setup)}``: the most accurate SpikingJelly setup at each t (the
    first listed wins a tie)."""
    best: dict[str, tuple] = {}
    for t in map(str, timesteps):
        name = max(setups, key=lambda s: setups[s][t])
        best[t] = (setups[name][t], name)
    return best


def _rows(net: dict, timesteps: list[int]) -> list[tuple[str, list[float | None], list[str]]]:
    """``(row label, accuracies per t (None: not run), note per t)`` for one network."""
    rows = [(f"spikebridge `{m}`", [by_t.get(str(t)) for t in timesteps], [""] * len(timesteps))
            for m, by_t in net["spikebridge"].items()]  # fmt: skip
    best = best_per_t(net["spikingjelly"], timesteps)
    rows.append(("SpikingJelly, best setup at each T", [best[str(t)][0] for t in timesteps],
                 [f" ({best[str(t)][1]})" for t in timesteps]))  # fmt: skip
    return rows


def markdown_table(record: dict) -> str:
    """One markdown table: per network, each of our methods and SpikingJelly's best setup
    per T (its name beside the figure); the best spiking figure of each column in bold, a
    cell not run (``--ttrbr-timesteps``) as a dash."""
    timesteps = record["setup"]["timesteps"]
    lines = ["| network (ANN accuracy) | conversion | " + " | ".join(f"T = {t}" for t in timesteps)
             + " |", "|---|---|" + "---|" * len(timesteps)]  # fmt: skip
    for name, net in record["networks"].items():
        rows = _rows(net, timesteps)
        tops = [max(round(100 * row[1][i], 2) for row in rows if row[1][i] is not None)
                for i in range(len(timesteps))]  # fmt: skip
        label = f"{NETWORK_LABELS.get(name, name)} ({100 * net['ann_accuracy']:.2f} %)"
        for row_name, accs, notes in rows:
            cells = [_cell(a, top) for a, top in zip(accs, tops, strict=True)]
            cells = [c + n for c, n in zip(cells, notes, strict=True)]
            lines.append(f"| {label} | {row_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def setups_table(record: dict) -> str:
    """Every SpikingJelly setup of every network at every T (the detail behind the best)."""
    timesteps = record["setup"]["timesteps"]
    lines = ["| network | SpikingJelly setup | " + " | ".join(f"T = {t}" for t in timesteps)
             + " |", "|---|---|" + "---|" * len(timesteps)]  # fmt: skip
    for name, net in record["networks"].items():
        for setup, by_t in net["spikingjelly"].items():
            cells = [f"{100 * by_t[str(t)]:.2f}" for t in timesteps]
            lines.append(f"| {NETWORK_LABELS.get(name, name)} | `{setup}` | "
                         + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(lines)


def read_record(path: Path) -> dict:
    """A record this benchmark wrote (BenchmarkInputError when it is not one)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        record = None
    ok = isinstance(record, dict) and isinstance(record.get("networks"), dict)
    if not ok or "timesteps" not in (record.get("setup") or {}):
        raise BenchmarkInputError(f"--report {path}: expected a JSON file this benchmark wrote")
    return record


def _cell(accuracy: float | None, top: float) -> str:
    """A percentage with two decimals, bold when it is the column's best; a dash if not run."""
    if accuracy is None:
        return "—"
    text = f"{100 * accuracy:.2f}"
    return f"**{text}**" if round(100 * accuracy, 2) == top else text


def write_json(record: dict, path: Path) -> None:
    """Write ``record`` to ``path`` through a temporary file in the same folder (a reader
    never sees half a file; an interrupted run leaves the previous result as it was)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- data, ANNs


def load_data(args: argparse.Namespace) -> dict:
    """Normalized training subset, disjoint calibration images and the first test images."""
    import torch

    from spikebridge.data.fashion_mnist import load_fashion_mnist

    train_x, train_y, test_x, test_y = load_fashion_mnist(args.data_dir)
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(args.seed))
    fit = order[: args.train_images]
    calib = order[args.train_images : args.train_images + args.calibration_images]
    norm = lambda x: (x.float() / 255 - MEAN) / STD  # noqa: E731
    return {"x": norm(train_x[fit]), "y": train_y[fit], "calib": norm(train_x[calib]),
            "test_x": norm(test_x[: args.test_images]), "test_y": test_y[: args.test_images]}  # fmt: skip


def train_ann(name: str, data: dict, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Adam with a one-cycle rate, ``args.epochs`` epochs of ``args.batch_size``."""
    import torch
    import torch.nn.functional as F
    import user_cnns

    torch.manual_seed(args.seed)
    ann = {"sequential": user_cnns.fashion_sequential_cnn, "residual": user_cnns.FashionCNN,
           "deep": user_cnns.DeepResidualCNN}[name]()  # fmt: skip
    x, y, bs = data["x"], data["y"], args.batch_size
    steps = len(x) // bs
    opt = torch.optim.Adam(ann.parameters(), args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.epochs * steps)
    gen = torch.Generator().manual_seed(args.seed)
    for _ in range(args.epochs):
        for idx in torch.randperm(len(x), generator=gen)[: steps * bs].split(bs):
            loss = F.cross_entropy(ann(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return ann.eval()


# --------------------------------------------------------------------------- both sides


def ours(ann, data: dict, method: str, timesteps: list[int], bs: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """spikebridge's accuracy at every t in ``timesteps`` for one method (see the docstring)."""
    from spikebridge.conversion import convert, get_method, method_config
    from spikebridge.engine.evaluate import evaluate

    loader = list(zip(data["test_x"].split(bs), data["test_y"].split(bs), strict=True))
    if not get_method(method).tunes:  # one conversion, one pass, every t
        snn, _ = convert(ann, method_config(method, timesteps=max(timesteps)), data["calib"])
        by_t = evaluate(snn, loader)["accuracy_by_timestep"]
        return {str(t): by_t[str(t)] for t in timesteps}
    tuned = {
        t: convert(ann, method_config(method, timesteps=t), data["calib"])[0] for t in timesteps
    }
    return {str(t): evaluate(snn, loader)["accuracy"] for t, snn in tuned.items()}


def start_peer(anns: dict, data: dict, args: argparse.Namespace, work: Path) -> subprocess.Popen:
    """Start SpikingJelly's side in the peer venv on the same weights and images."""
    import torch

    payload = work / "payload.pt"
    torch.save({"models": {n: a.state_dict() for n, a in anns.items()}, "calib": data["calib"],
                "test_x": data["test_x"], "test_y": data["test_y"],
                "timesteps": max(args.timesteps), "batch_size": args.batch_size}, payload)  # fmt: skip
    script = ROOT / "benchmarks" / "user_cnn_spikingjelly_side.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "methods"), str(script.parent)])}  # fmt: skip
    log = (work / "peer.log").open("w")
    return subprocess.Popen([str(args.peer_python), str(script), str(payload),
                             str(work / "peer.json")], env=env, stdout=log, stderr=log)  # fmt: skip


def run(args: argparse.Namespace) -> dict:
    """Train, convert on both sides, and return the record (every cell)."""
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    data = load_data(args)
    anns, networks = {}, {}
    for name in args.networks:
        t0 = time.perf_counter()
        anns[name] = train_ann(name, data, args)
        with torch.no_grad():
            acc = (anns[name](data["test_x"]).argmax(1) == data["test_y"]).float().mean().item()
        networks[name] = {"ann_accuracy": acc, "train_s": round(time.perf_counter() - t0, 1),
                          "spikebridge": {}, "seconds": {}}  # fmt: skip
        print(f"ANN {name}: {100 * acc:.2f} %, {networks[name]['train_s']} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        peer = start_peer(anns, data, args, Path(tmp))
        try:
            for name, method in ((n, m) for n in args.networks for m in args.methods):
                t0 = time.perf_counter()
                ts = args.ttrbr_timesteps if method == "ttrbr" else args.timesteps
                by_t = ours(anns[name], data, method, ts, args.batch_size)
                networks[name]["spikebridge"][method] = by_t
                networks[name]["seconds"][method] = round(time.perf_counter() - t0, 1)
                print(f"spikebridge {name} {method}: "
                      + ", ".join(f"T={t} {100 * a:.2f}" for t, a in by_t.items())
                      + f" ({networks[name]['seconds'][method]} s)", flush=True)  # fmt: skip
            code = peer.wait()
        finally:
            peer.kill()  # no-op once it has exited; stops it on an error or Ctrl-C here
        log = (Path(tmp) / "peer.log").read_text()
        print(log, end="", flush=True)
        if code != 0:
            raise RuntimeError(f"SpikingJelly's side exited {code}: {log[-2000:]}")
        peer_record = json.loads((Path(tmp) / "peer.json").read_text())
    for name, net in networks.items():
        net["spikingjelly"] = {c: {str(t): by_t[str(t)] for t in args.timesteps}
                               for c, by_t in peer_record["accuracy"][name].items()}  # fmt: skip
        net["spikingjelly_seconds"] = peer_record["seconds"][name]
    setup = {"train_images": args.train_images, "epochs": args.epochs, "lr": args.lr,
             "batch_size": args.batch_size, "test_images": len(data["test_y"]),
             "calibration_images": len(data["calib"]), "seed": args.seed,
             "timesteps": args.timesteps, "methods": args.methods,
             "ttrbr_timesteps": args.ttrbr_timesteps,
             "torch": torch.__version__, "spikingjelly": peer_record["spikingjelly"],
             "peer_torch": peer_record["torch"], "threads": 1,
             "machine": f"{platform.machine()}, {os.cpu_count()} cores",
             "date": time.strftime("%Y-%m-%d", time.gmtime()),
             "wall_s": round(time.perf_counter() - start, 1)}  # fmt: skip
    return {"command": "benchmarks/user_cnn_vs_spikingjelly.py " + " ".join(args.argv),
            "setup": setup, "networks": networks}  # fmt: skip


# --------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one sentence (BenchmarkInputError), not usage + error."""

    def error(self, message: str) -> NoReturn:
        raise BenchmarkInputError(message)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = _Parser(description=__doc__.split("\n")[0])
    p.add_argument("--networks", default="sequential,residual,deep",
                   help="comma-separated: sequential, residual, deep")  # fmt: skip
    p.add_argument("--methods", default="robust,ttrbr", help="ours: robust, ttrbr, maxnorm")
    p.add_argument("--timesteps", default=",".join(map(str, TIMESTEPS)))
    p.add_argument("--ttrbr-timesteps", help="the T at which ttrbr is tuned and scored, a "
                   "subset of --timesteps (default: all; each costs a tuning run)")  # fmt: skip
    p.add_argument("--train-images", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--calibration-images", type=int, default=128)
    p.add_argument("--test-images", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (package default)")
    p.add_argument("--peer-python", default=os.environ.get(
        "SPIKEBRIDGE_PEER_PYTHON", str(ROOT / ".peer-venv" / "bin" / "python")))  # fmt: skip
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    p.add_argument("--report", type=Path, help="print the tables of a JSON this benchmark "
                   "wrote (its best-per-T table and every SpikingJelly setup); runs nothing")  # fmt: skip
    args = p.parse_args(argv)
    args.argv = argv
    return args if args.report else validate(args)


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise BenchmarkInputError(f"{option} {text!r}: expected positive integers, e.g. 1,2,4")
    return sorted(set(values))


def validate(args: argparse.Namespace) -> argparse.Namespace:
    """Check the options up front (BenchmarkInputError names the option and what is valid)."""
    args.networks = [n.strip() for n in args.networks.split(",")]
    args.methods = [m.strip() for m in args.methods.split(",")]
    args.timesteps = _int_list(args.timesteps, "--timesteps")
    if args.ttrbr_timesteps is None:
        args.ttrbr_timesteps = args.timesteps
    else:
        args.ttrbr_timesteps = _int_list(args.ttrbr_timesteps, "--ttrbr-timesteps")
    if not set(args.ttrbr_timesteps) <= set(args.timesteps):
        raise BenchmarkInputError("--ttrbr-timesteps must be a subset of --timesteps")
    if bad := [n for n in args.networks if n not in NETWORK_LABELS]:
        raise BenchmarkInputError(f"--networks {bad[0]!r}: expected some of {list(NETWORK_LABELS)}")
    if bad := [m for m in args.methods if m not in ("robust", "ttrbr", "maxnorm")]:
        raise BenchmarkInputError(f"--methods {bad[0]!r}: expected robust, ttrbr or maxnorm")
    for option in ("train_images", "epochs", "batch_size", "calibration_images", "test_images"):
        if getattr(args, option) < 1:
            raise BenchmarkInputError(f"--{option.replace('_', '-')} must be a positive integer")
    if args.train_images + args.calibration_images > 60000:
        raise BenchmarkInputError("--train-images plus --calibration-images must be <= 60000")
    if not Path(args.peer_python).exists():
        raise BenchmarkInputError(f"no peer Python at {args.peer_python}: build it with "
                                  "'bash tools/peer-env.sh' or pass --peer-python")  # fmt: skip
    if args.data_dir is None:
        from spikebridge.data.fashion_mnist import DEFAULT_FASHION_MNIST_DIR

        args.data_dir = DEFAULT_FASHION_MNIST_DIR
    if not Path(args.data_dir).is_dir():
        raise BenchmarkInputError(f"--data-dir {args.data_dir}: no such Fashion-MNIST folder")
    return args


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C: the peer process is stopped and the temporary folder removed."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        if args.report:
            record = read_record(args.report)
            print(markdown_table(record) + "\n\n" + setups_table(record))
            return 0
        record = run(args)
    except BenchmarkInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing written", file=sys.stderr)
        return 130
    write_json(record, args.json)
    print(markdown_table(record))
    print(f"wrote {args.json} ({record['setup']['wall_s']} s)")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main())

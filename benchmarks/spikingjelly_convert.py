"""SpikingJelly's ``ann2snn`` converter on the same trained ANN run, side by side (METHODS 2.6).

Loads a spikebridge ANN run folder (``load_run``), wraps the ResNet in a plain module whose
``forward`` is ``fc(features(x))`` written out layer by layer (``torch.fx`` cannot trace
spikebridge's ``forward_steps``: it branches on ``x.dim()`` and folds time into the batch),
converts it with SpikingJelly's ``FXConverter(RateCodingRecipe(dataloader, mode))`` on the
SAME calibration images and evaluates on the SAME test images as ``spikebridge convert``
(``spikebridge.runs.conversion.calibration_images`` / ``eval_loader``), stepping the
converted network ``T`` times per batch (direct encoding, ``reset_net`` before each batch)
and reporting the accuracy of the running sum of outputs at every t <= T.

Only ``nn.ReLU`` sites are converted by SpikingJelly's rate-coding recipe, so a clip / qcfs
ANN is refused unless ``--swap-to-relu`` is given: then every clip / qcfs site becomes an
``nn.ReLU`` (the same trained weights, what a SpikingJelly user holding that network would
convert) and the record keeps the original ANN's accuracy as the reference, next to the
swapped ANN's. Run it in the peer environment (``bash tools/peer-env.sh`` builds
``.peer-venv``), never a dependency of the package::

    PYTHONPATH=. .peer-venv/bin/python benchmarks/spikingjelly_convert.py --ann RUN \\
        --mode 99.9% --mode max --timesteps 32 --calibration-size 512 --json out.json

spikebridge needs ``safetensors`` / ``yaml``; when the peer venv lacks them, the main venv's
site-packages is appended to ``sys.path`` (after the peer's own, so its torch wins).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path


def _ensure_deps() -> None:
    """Append the main venv's site-packages when safetensors / yaml are missing."""
    try:
        import safetensors  # noqa: F401
        import yaml  # noqa: F401
    except ImportError:
        root = Path(__file__).resolve().parents[1]
        sys.path.extend(glob.glob(str(root / ".venv/lib/python3*/site-packages")))


_ensure_deps()

import torch  # noqa: E402
from torch import nn  # noqa: E402


class PlainResNet(nn.Module):
    """A spikebridge ANN ResNet as a straight-line ``forward`` that ``torch.fx`` can trace."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1, self.act1 = net.conv1, net.bn1, net.act1
        self.stem_pool, self.stages, self.pool, self.fc = (
            net.stem_pool,
            net.stages,
            net.pool,
            net.fc,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_pool(self.act1(self.bn1(self.conv1(x))))
        for stage in self.stages:
            x = stage(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def swap_to_relu(net: nn.Module) -> None:
    """Replace every clip / qcfs activation (modules with a ``lam``) by ``nn.ReLU``, in place."""
    for module in list(net.modules()):
        for child_name, child in list(module.named_children()):
            if hasattr(child, "lam"):
                setattr(module, child_name, nn.ReLU())


@torch.no_grad()
def evaluate_steps(snn: nn.Module, loader, T: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Accuracy of the running sum of per-step outputs at every t <= T."""
    from spikingjelly.activation_based import functional

    correct, n = torch.zeros(T), 0
    for images, labels in loader:
        functional.reset_net(snn)
        total = None
        for t in range(T):
            out = snn(images)
            total = out if total is None else total + out
            correct[t] += (total.argmax(1) == labels).sum().item()
        n += len(labels)
    return {str(t + 1): (correct[t] / n).item() for t in range(T)}


def run(args: argparse.Namespace) -> dict:
    """Convert the ANN with every ``--mode`` and evaluate; returns the JSON record."""
    from spikingjelly.activation_based import ann2snn, neuron

    from spikebridge.engine import rundir
    from spikebridge.engine.evaluate import evaluate
    from spikebridge.runs.conversion import calibration_images, eval_loader, run_data

    torch.set_num_threads(args.threads)
    dev = torch.device("cpu")
    ann, config = rundir.load_run(args.ann, dev)
    activation = config["model"].get("activation", "relu")
    if activation != "relu" and not args.swap_to_relu:
        raise SystemExit("SpikingJelly's rate-coding recipe converts nn.ReLU only; use a relu "
                         "ANN, or --swap-to-relu to hand it the same weights with ReLU sites")  # fmt: skip
    splits, data, seed = run_data(config)
    calib = calibration_images(splits, args.calibration_size, seed, dev)
    if args.whole_test_set:  # same calibration draw; every image of the test file
        splits = run_data(config, whole_test_set=True)[0]
    loader = list(eval_loader(splits, data, seed, dev, args.batch_size, args.test_images))
    record = {"ann_run": args.ann, "ann_accuracy": evaluate(ann, loader)["accuracy"],
              "ann_activation": activation, "timesteps": args.timesteps,
              "test_samples": sum(len(y) for _, y in loader),
              "whole_test_set": args.whole_test_set,
              "calibration_size": args.calibration_size, "modes": {}}  # fmt: skip
    if activation != "relu":
        swap_to_relu(ann)
        record["swapped_relu_ann_accuracy"] = evaluate(ann, loader)["accuracy"]
    for mode in args.mode:
        start = time.perf_counter()
        plain = PlainResNet(ann).eval()
        recipe = ann2snn.RateCodingRecipe(dataloader=calib, mode=mode)
        snn = ann2snn.FXConverter(recipe=recipe, device=dev).convert(plain).eval()
        record["modes"][mode] = evaluate_steps(snn, loader, args.timesteps)
        record["if_neurons"] = sum(isinstance(m, neuron.BaseNode) for m in snn.modules())
        print(f"mode {mode}: {record['if_neurons']} IF neurons, "
              f"{time.perf_counter() - start:.1f}s", flush=True)  # fmt: skip
    return record


def table(record: dict, shown: list[int]) -> str:
    head = "| ANN run | SpikingJelly mode | ANN acc | " + " | ".join(f"T={t}" for t in shown)
    lines = [head + " |", "|" + "---|" * (3 + len(shown))]
    for mode, by_t in record["modes"].items():
        cells = [record["ann_run"], mode, f"{100 * record['ann_accuracy']:.2f}"]
        cells += [f"{100 * by_t[str(t)]:.2f}" for t in shown]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ann", required=True, help="spikebridge relu ANN run folder")
    parser.add_argument("--mode", action="append", help="RateCodingRecipe mode: max, 99.9%%, "
                        "99.99%%, or a float in (0, 1] (repeatable; default: 99.9%% and max)")  # fmt: skip
    parser.add_argument("--timesteps", type=int, default=32, help="simulate T steps (default 32)")
    parser.add_argument("--calibration-size", type=int, default=1024)
    parser.add_argument("--test-images", type=int, help="first N test images (default: all)")
    parser.add_argument("--whole-test-set", action="store_true",
                        help="every image of the test file, as 'spikebridge compare --whole-test-set'")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--swap-to-relu", action="store_true",
                        help="convert a clip / qcfs ANN with its sites swapped for nn.ReLU")  # fmt: skip
    parser.add_argument("--json", help="write the record here")
    args = parser.parse_args()
    args.mode = args.mode or ["99.9%", "max"]
    record = run(args)
    shown = [t for t in (1, 2, 4, 8, 16, 32, 64) if t <= args.timesteps]
    print(table(record, shown))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

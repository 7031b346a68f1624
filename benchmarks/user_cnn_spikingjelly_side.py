"""SpikingJelly's side of ``user_cnn_vs_spikingjelly.py`` (peer environment only).

Run by that benchmark with the peer venv's Python (``bash tools/peer-env.sh`` builds it),
``tests/conversion`` and ``benchmarks`` on ``PYTHONPATH``::

    .peer-venv/bin/python benchmarks/user_cnn_spikingjelly_side.py PAYLOAD.pt OUT.json

The payload (``torch.save``) holds ``models`` (network name -> ANN state dict, the names of
``NETWORKS`` below), ``calib`` (calibration images), ``test_x`` / ``test_y``, ``timesteps``
(the largest T) and ``batch_size``. Every configuration in ``CONFIGS`` of
``spikingjelly.activation_based.ann2snn.Converter`` with a ``RateCodingRecipe`` converts the
same ANN on the same calibration images; the SNN is stepped ``T`` times per batch (direct
encoding, ``reset_net`` first) and classified by the running sum of its outputs, so one run
gives the accuracy at every t <= T (a rate-coded IF network's first t steps do not depend
on how many follow). Writes ``{"spikingjelly": version, "accuracy": {network: {config:
{"t": fraction}}}, "seconds": {...}}``. Needs only torch and SpikingJelly.
"""

from __future__ import annotations

import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch
from spikingjelly.activation_based import ann2snn
from spikingjelly_convert import evaluate_steps
from user_cnns import DeepResidualCNN, FashionCNN, fashion_sequential_cnn

NETWORKS = {"sequential": fashion_sequential_cnn, "residual": FashionCNN, "deep": DeepResidualCNN}

# SpikingJelly 2.0's rate-coding setups: layer-wise max / 99.9th percentile / half the max
# (a float mode scales the max), and its channel-wise 99.9 % with MaxPool moved before the
# neuron, without and with its half-threshold initial membrane potential.
CONFIGS: dict[str, dict] = {
    "max": {"mode": "max"},
    "99.9%": {"mode": "99.9%"},
    "0.5 max": {"mode": 0.5},
    "99.9% cw pool-first": {"mode": "99.9%", "channel_wise": True, "pre_spike_maxpool": True},
    "99.9% cw pool-first half-v0": {
        "mode": "99.9%", "channel_wise": True, "pre_spike_maxpool": True, "half_threshold": True,
    },
}  # fmt: skip


def convert_and_score(name: str, state: dict, payload: dict, options: dict) -> dict[str, float]:
    """Convert network ``name`` (weights ``state``) with one recipe; accuracy at every t."""
    bs = int(payload["batch_size"])
    ann = NETWORKS[name]()
    ann.load_state_dict(state)
    recipe = ann2snn.RateCodingRecipe(dataloader=list(payload["calib"].split(bs)), **options)
    snn = ann2snn.Converter(recipe=recipe, device="cpu").convert(ann.eval()).eval()
    loader = list(zip(payload["test_x"].split(bs), payload["test_y"].split(bs), strict=True))
    return evaluate_steps(snn, loader, int(payload["timesteps"]))


def main(payload_path: str, out_path: str) -> None:
    torch.set_num_threads(1)
    payload = torch.load(payload_path)
    accuracy: dict[str, dict] = {}
    seconds: dict[str, dict] = {}
    for name, state in payload["models"].items():
        accuracy[name], seconds[name] = {}, {}
        for config, options in CONFIGS.items():
            start = time.perf_counter()
            accuracy[name][config] = convert_and_score(name, state, payload, options)
            seconds[name][config] = round(time.perf_counter() - start, 1)
            last = accuracy[name][config][str(payload["timesteps"])]
            print(f"spikingjelly {name} {config}: {100 * last:.2f} % at T = "
                  f"{payload['timesteps']}, {seconds[name][config]} s", flush=True)  # fmt: skip
    record = {"spikingjelly": version("spikingjelly"), "torch": torch.__version__,
              "accuracy": accuracy, "seconds": seconds}  # fmt: skip
    Path(out_path).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

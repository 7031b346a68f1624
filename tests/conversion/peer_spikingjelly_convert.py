"""SpikingJelly's converter on a user CNN, for the peer test (peer environment only).

Not collected by pytest (no ``test_`` prefix). ``test_convert_user_model.py`` trains the
network, writes a payload and runs this script with the peer venv's Python::

    .peer-venv/bin/python tests/conversion/peer_spikingjelly_convert.py PAYLOAD.pt

The payload (``torch.save``) holds ``state`` (the ``FashionCNN`` state dict), ``calib``
(calibration images), ``test_x`` / ``test_y``, ``timesteps`` and ``batch_size``. Each
configuration of ``spikingjelly.activation_based.ann2snn.Converter`` with a
``RateCodingRecipe`` (the mode, layer- or channel-wise, MaxPool after the neuron as shipped
or moved before it) converts the same ANN on the same calibration images; the SNN is
stepped ``T`` times per batch (direct encoding, ``reset_net`` first) and classified by the
sum of its outputs. Prints one JSON line: ``{"spikingjelly": version, "accuracy": {config:
fraction}}``. Needs only torch and SpikingJelly (``user_cnns`` is plain torch).
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version

import torch
from spikingjelly.activation_based import ann2snn, functional
from user_cnns import FashionCNN

CONFIGS = {
    "max": {"mode": "max"},
    "99.9%": {"mode": "99.9%"},
    "99.9% channel-wise, MaxPool before the neuron": {
        "mode": "99.9%", "channel_wise": True, "pre_spike_maxpool": True,
    },
}  # fmt: skip


@torch.no_grad()
def accuracy(
    snn: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, T: int, bs: int
) -> float:
    """Fraction classified right by the sum of ``T`` per-step outputs."""
    correct = 0
    for x, y in zip(images.split(bs), labels.split(bs), strict=True):
        functional.reset_net(snn)
        total = sum(snn(x) for _ in range(T))
        correct += int((total.argmax(1) == y).sum())
    return correct / len(labels)


def main(path: str) -> None:
    torch.set_num_threads(1)
    payload = torch.load(path)
    T, bs = int(payload["timesteps"]), int(payload["batch_size"])
    calib = list(payload["calib"].split(bs))
    results = {}
    for name, options in CONFIGS.items():
        ann = FashionCNN()
        ann.load_state_dict(payload["state"])
        recipe = ann2snn.RateCodingRecipe(dataloader=calib, **options)
        snn = ann2snn.Converter(recipe=recipe, device="cpu").convert(ann.eval()).eval()
        results[name] = accuracy(snn, payload["test_x"], payload["test_y"], T, bs)
    print(json.dumps({"spikingjelly": version("spikingjelly"), "accuracy": results}))


if __name__ == "__main__":
    main(sys.argv[1])

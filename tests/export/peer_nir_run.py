"""Run one NIR file in SpikingJelly 2.0 and snnTorch 1.0 as a user would (peer env only).

Imports nothing from spikebridge: only the file, the peers' own ``import_from_nir`` and
nirtorch (their executor). Called by ``test_peer_nir.py`` in the peer environment::

    .peer-venv/bin/python tests/export/peer_nir_run.py MODEL.nir IMAGES.npy OUT.npz

``IMAGES.npy`` holds float32 ``[N, C, H, W]`` inputs as the graph expects them (raw pixels
in ``[0, 1]`` when the graph has a ``normalize`` node). Each peer runs the graph for
``T = metadata["timesteps"]`` steps with the image as a constant input at every step
(direct encoding), starting from its initial state, and the logits are averaged over the
steps (the graph's readout). ``OUT.npz`` gets ``spikingjelly`` and ``snntorch`` logits
``[N, K]``, or ``<peer>_error`` with the peer's exception when it cannot import or run.

- SpikingJelly: ``import_from_nir(path, dt=metadata["dt"])``; the returned module maps
  ``(x, state)`` to ``(y, state)``, so the state is passed back each step (batched).
- snnTorch: ``import_from_nir(graph)``; its neurons keep their state in the modules
  (``init_hidden=True``) and nirtorch keeps the recurrent edges' values in the returned
  state. Run one image at a time: snnTorch maps NIR's ``Flatten(start_dim=0)`` (unbatched
  dims) to ``torch.nn.Flatten(0, -1)``, which would merge a batch into one vector.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Callable
from pathlib import Path

import nir
import numpy as np
import torch

BATCH = 64


def spikingjelly_logits(path: Path, images: torch.Tensor, steps: int, dt: float) -> np.ndarray:
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    net = import_from_nir(path, dt=dt).eval()
    out = []
    with torch.no_grad():
        for x in images.split(BATCH):
            out.append(_run(lambda x, s: net(x, s), x, steps))
    return torch.cat(out).numpy()


def snntorch_logits(path: Path, images: torch.Tensor, steps: int) -> np.ndarray:
    import snntorch as snn
    from snntorch.import_nir import import_from_nir

    with contextlib.redirect_stdout(io.StringIO()):  # the importer prints progress lines
        net = import_from_nir(nir.read(path)).eval()
    neurons = [m for m in net.modules() if isinstance(m, snn.SpikingNeuron)]
    out = []
    with torch.no_grad():
        for x in images.split(1):
            for m in neurons:  # a fresh start: empty state is re-created at the input's shape
                for name in ("syn", "mem"):
                    if hasattr(m, name):
                        setattr(m, name, torch.zeros(0))
            out.append(_run(lambda x, s: net(x, s), x, steps).reshape(1, -1))
    return torch.cat(out).numpy()


def _run(step: Callable, x: torch.Tensor, steps: int) -> torch.Tensor:
    """Mean over ``steps`` of the per-step output, the image held constant."""
    state, total = None, 0.0
    for _ in range(steps):
        y, state = step(x, state)
        total = total + y
    return total / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graph", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    meta = nir.read(args.graph).metadata
    steps, dt = int(meta["timesteps"]), float(meta["dt"])
    images = torch.from_numpy(np.load(args.images)).float()
    results: dict[str, np.ndarray] = {}
    runners = {
        "spikingjelly": lambda: spikingjelly_logits(args.graph, images, steps, dt),
        "snntorch": lambda: snntorch_logits(args.graph, images, steps),
    }
    for peer, run in runners.items():
        try:
            results[peer] = run()
        except Exception as exc:  # report what the peer does with the file
            results[f"{peer}_error"] = np.array(f"{type(exc).__name__}: {exc}"[:300])
    np.savez(args.out, **results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

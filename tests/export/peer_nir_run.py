"""Run one NIR file in SpikingJelly 2.0 and snnTorch 1.0 as a user would (peer env only).

Imports nothing from spikebridge: it executes the two "peer snippet" blocks of
``docs/EXPORT.md`` exactly as written there (so the documented calls are the tested ones),
which use only the file, the peers' own ``import_from_nir`` and nirtorch (their executor).
Called by ``test_peer_nir.py`` in the peer environment::

    .peer-venv/bin/python tests/export/peer_nir_run.py MODEL.nir IMAGES.npy OUT.npz

``IMAGES.npy`` holds float32 ``[N, C, H, W]`` inputs as the graph expects them (raw pixels
in ``[0, 1]`` when the graph has a ``normalize`` node). Each snippet runs the graph for
``T = metadata["timesteps"]`` steps with the image as a constant input at every step
(direct encoding) from a fresh state and averages the outputs over the steps (the graph's
readout). ``OUT.npz`` gets ``spikingjelly`` and ``snntorch`` logits ``[N, K]``, or
``<peer>_error`` with the peer's exception when it cannot import or run the file.
SpikingJelly gets batches of ``BATCH`` images; snnTorch's snippet goes one image at a time
itself (its importer merges a batch in ``Flatten``, see docs/EXPORT.md).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
from pathlib import Path

import numpy as np
import torch

BATCH = 64
DOC = Path(__file__).resolve().parents[2] / "docs" / "EXPORT.md"


def snippet(peer: str) -> str:
    """The python block that follows ``<!-- peer snippet: PEER -->`` in docs/EXPORT.md."""
    found = re.search(
        rf"<!-- peer snippet: {peer} -->\s*```python\n(.*?)```", DOC.read_text(), re.S
    )
    if found is None:
        raise LookupError(f"docs/EXPORT.md has no snippet for {peer}")
    return found.group(1)


def run_snippet(peer: str, path: Path, images: torch.Tensor) -> np.ndarray:
    """Execute the documented snippet with ``path`` and ``images``; return its ``logits``."""
    return run_code(snippet(peer), path, images, f"docs/EXPORT.md ({peer} snippet)")


def run_code(source: str, path: Path, images: torch.Tensor, where: str = "snippet") -> np.ndarray:
    """Execute ``source`` with ``path`` and ``images`` defined; return its ``logits``."""
    code = compile(source, where, "exec")
    namespace = {"path": str(path), "images": images}
    with contextlib.redirect_stdout(io.StringIO()):  # snnTorch's importer prints progress
        exec(code, namespace)
    return namespace["logits"].numpy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graph", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--limits", action="store_true", help="also run snnTorch without reset and at batch 2"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = torch.from_numpy(np.load(args.images)).float()
    results: dict[str, np.ndarray] = {}
    runners = {
        "spikingjelly": lambda: np.concatenate(
            [run_snippet("spikingjelly", args.graph, x) for x in images.split(BATCH)]
        ),
        "snntorch": lambda: run_snippet("snntorch", args.graph, images),
    }
    if args.limits:  # snnTorch's documented limits, measured: no reset, a batch of 2
        code = snippet("snntorch")
        without_reset = code.replace("utils.reset(net)", "pass")
        batch_of_two = code.replace("images.split(1)", "images.split(2)")
        assert without_reset != code and batch_of_two != code, "the snippet changed"
        runners["snntorch_no_reset"] = lambda: run_code(without_reset, args.graph, images)
        runners["snntorch_batch2"] = lambda: run_code(batch_of_two, args.graph, images)
    for peer, run in runners.items():
        try:
            results[peer] = run()
        except Exception as exc:  # report what the peer does with the file
            results[f"{peer}_error"] = np.array(f"{type(exc).__name__}: {exc}"[:300])
    np.savez(args.out, **results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Why 100+ layer clip/qcfs ANNs need their guards: a few hundred SGD steps, logged.

Trains a quarter-width ResNet (default resnet110, QCFS L=4, initial λ = 2) on Fashion-MNIST
with plain SGD (lr 0.1, momentum 0.9, weight decay 1e-4, batch 64, random batches) and
prints the loss, the range of the per-layer ceilings λ, the largest |dL/dλ| and the global
gradient norm (before clipping) every 25 steps. Switches turn the guards on or off:

- ``--zero-init-residual``: last BN of each residual branch starts at γ = 0;
- ``--grad-clip C``: clip the global gradient norm at C;
- ``--raw-lambda-grad``: undo the LSQ gradient scale and the floor of λ
  (``spikebridge.nn.activations.effective_lambda``), i.e. plain QCFS as published.

Run by hand, one torch thread (docs/notes/results-history.md, "Conversion"):

    python benchmarks/deep_qcfs_stability.py --block post-add --raw-lambda-grad
    python benchmarks/deep_qcfs_stability.py --block pre-add --zero-init-residual
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import spikebridge.nn.activations as activations
from spikebridge.data.fashion_mnist import load_fashion_mnist
from spikebridge.data.spec import FASHION_MNIST
from spikebridge.models import build


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet110")
    p.add_argument("--block", default="pre-add", choices=["post-add", "pre-add"])
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--lam", type=float, default=2.0, help="initial λ")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--zero-init-residual", action="store_true")
    p.add_argument("--raw-lambda-grad", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.raw_lambda_grad:  # plain QCFS: λ used as stored, its full gradient
        activations.effective_lambda = lambda lam, x, levels: lam.to(x.dtype)
    torch.manual_seed(0)
    model = build(args.model, num_classes=10, in_channels=1, width=0.25, activation="qcfs",
                  qcfs_levels=args.levels, block=args.block, threshold=args.lam,
                  zero_init_residual=args.zero_init_residual)  # fmt: skip
    x, y, _, _ = load_fashion_mnist()
    x = (x.float() / 255 - FASHION_MNIST.mean[0]) / FASHION_MNIST.std[0]
    lams = [p for n, p in model.named_parameters() if n.endswith("lam")]
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    gen, start = torch.Generator().manual_seed(0), time.perf_counter()
    for step in range(args.steps):
        idx = torch.randint(0, x.shape[0], (64,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        lam_grad = max(p.grad.abs().item() for p in lams)
        clip = args.grad_clip if args.grad_clip is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if step % 25 == 0 or step == args.steps - 1:
            lam = torch.stack([p.detach() for p in lams])
            print(f"step {step:4d}  loss {loss.item():.3f}  λ min {lam.min():.3g} max "
                  f"{lam.max():.3g}  max|dL/dλ| {lam_grad:.3g}  grad norm {norm:.3g}  "
                  f"{time.perf_counter() - start:.0f}s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

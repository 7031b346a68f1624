"""Independent consumer check: our NIR export read back by snnTorch (peer environment only).

Not collected by pytest (no ``test_`` prefix). Build the peer env once and run::

    bash tools/peer-env.sh                  # from the repository root: .peer-venv
    PYTHONPATH=. .peer-venv/bin/python tests/export/peer_nir_check.py

Each case exports a spiking network with ``spikebridge.export.nir.export_nir``, imports
the written file with snnTorch 1.0.0 (``snntorch.import_nir.import_from_nir``, executed by
nirtorch), runs the same image for ``T`` steps (batch 1, a constant input current per step)
and compares per-site spike counts and per-step outputs with ours.

- ``pure``: snnTorch's importer as shipped.
- ``pure-batch2``: the same with a batch of two images in one call.
- ``adapter``: snnTorch's own modules for everything it maps correctly, plus what its
  importer gets wrong or lacks, taken from the NIR node and our metadata: ``nir.IF`` as a
  non-leaky ``snn.Leaky`` (beta = 1, reset from metadata; ``reset_delay=False`` as
  snnTorch's importer sets it), ``nir.Scale`` as a product, ``nir.Flatten`` on batched
  tensors. Options: ``+v_init`` (initial potential from metadata), ``+delay``
  (``reset_delay=True`` for subtract reset, see below), ``+nonstrict`` (θ nudged one
  float32 below, so that ``v > θ'`` equals ``v >= θ``).

The cases named ``portable-*`` export with the default ``target="portable"``; all others
with ``target="compact"`` (one ``nir.IF``/``nir.LIF`` node per layer), which the findings
below are about. SpikingJelly and the end-to-end check on converted networks:
``test_peer_nir.py``.

Exit status 1 if a case that should match exactly (LIF networks, portable graphs, pure
import) does not.

Findings (snnTorch 1.0.0, nir 1.0.8, nirtorch 2.6, T = 4, 6 images 16x16):
0. Portable graphs (IF as CubaLIF integrator + recurrent reset edge, LIF as nir.LIF)
   import as shipped and reproduce our spike counts at every site (0 neurons differ,
   logits to 1.2e-7), also on quarter-valued inputs where potentials hit θ exactly.
1. LIF networks -- a conv/LIF/pool/linear chain and resnet20 (width 0.25) with post-add
   and pre-add residual graphs -- import as shipped and reproduce our spike counts exactly
   at every site (logits to 3e-8). snnTorch reads ``β = 1 − dt/τ`` and input scale
   ``R·dt/τ`` with its hard-coded ``dt = 1e-4``: our Euler mapping ``τ = dt/(1 − decay)``,
   ``R = τ/dt`` with the default ``dt = 1e-4`` gives ``β = decay`` and scale 1. Several
   edges into one node are summed by nirtorch, so residual additions work.
2. snnTorch applies NIR's unbatched ``Flatten(start_dim=0)`` to batched tensors, which
   collapses the batch: the imported net only runs with batch 1 (``pure-batch2`` fails).
3. ``nir.IF`` is not usable as shipped: the importer asserts ``R == 1`` (NIR's IF is
   ``dv/dt = R·I``, so Euler with ``dt`` needs ``R = 1/dt``; we export that); with
   ``dt = 1`` (``R = 1``) it builds ``Leaky(beta=0.9, init_hidden=False)`` -- a leak our IF
   does not have, and a tuple output that crashes the next layer. ``nir.Scale`` (our
   ``o·θ`` outputs) has no mapping.
4. With ``nir.IF`` as ``Leaky(beta=1)`` the remaining differences have exactly three
   causes, each removed by a field of our node metadata (0 neurons differ with all three):
   - initial potential ``v_init = φ·θ`` (no NIR field): without it 54 % of the neurons of
     the worst site differ (φ = 0.5);
   - reset by subtraction with ``reset_delay=False`` (the importer's setting): when the
     potential after a reset still exceeds θ, snnTorch subtracts θ again before the firing
     decision and skips spikes our neuron emits (23 % of neurons differ); ``reset_delay=True``
     is our ``u_t = u_{t-1} − θ·o_{t-1} + x_t``;
   - ``v > θ`` (NIR, snnTorch) vs our IF's ``u >= θ``: no effect on random float inputs,
     74 % of neurons differ on quarter-valued inputs where the potential hits θ exactly;
     a threshold one float32 below θ removes it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nir
import nirtorch
import numpy as np
import snntorch as snn
import torch
from snntorch.import_nir import _nir_to_snntorch_module, import_from_nir
from torch import nn

from spikebridge.export.nir import export_nir
from spikebridge.models import build
from spikebridge.nn import IF, LIF, SpikingSite, fold

T, N_IMAGES, SIZE = 4, 6, 16


def lif_chain() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), SpikingSite(LIF(), T), nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), SpikingSite(LIF(), T),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip


def if_chain_with_ties() -> nn.Module:
    """IF (θ = 1, φ = 0) fed quarter-valued currents: the potential often equals θ exactly."""
    conv = nn.Conv2d(3, 3, 1, bias=False)
    conv.weight.data = torch.eye(3).view(3, 3, 1, 1)
    site = SpikingSite(IF(threshold=1.0, phi=0.0), T)
    return nn.Sequential(conv, site, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10))


def _prepare(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics (so folding matters), eval mode."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def ours(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-step outputs ``[T, B, K]`` and per-site spike counts ``[B, ...]`` (summed over T)."""
    counts: dict[str, torch.Tensor] = {}
    names = {m: n for n, m in model.named_modules() if isinstance(m, SpikingSite)}

    def hook(site: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        counts[names[site]] = (out != 0).float().view(T, -1, *out.shape[1:]).sum(0)

    handles = [m.register_forward_hook(hook) for m in names]
    with torch.no_grad():
        if hasattr(model, "forward_steps"):
            logits = model.forward_steps(images)
        else:
            x = fold(images.unsqueeze(0).expand(T, *images.shape))
            logits = model(x).view(T, images.shape[0], -1)
    for h in handles:
        h.remove()
    return logits, counts


class _Scale(nn.Module):
    def __init__(self, scale: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def adapter_map(options: str) -> dict[type, Callable[[Any], nn.Module]]:
    """snnTorch's node map with nir.IF (beta = 1), nir.Scale and a batched Flatten."""

    def if_neuron(node: Any) -> nn.Module:
        theta = float(np.unique(node.v_threshold)[0])
        if "nonstrict" in options and not bool(node.metadata.get("strict", True)):
            theta = float(np.nextafter(np.float32(theta), np.float32(-np.inf)))
        subtract = str(node.metadata.get("reset")) == "subtract"
        mod = snn.Leaky(beta=1.0, threshold=theta, init_hidden=True,
                        reset_mechanism="subtract" if subtract else "zero",
                        reset_delay="delay" in options and subtract)  # fmt: skip
        mod.v_init = torch.as_tensor(node.metadata["v_init"]) if "v_init" in options else None
        return mod

    mapping: dict[type, Callable[[Any], nn.Module]] = {
        t: (lambda n: _nir_to_snntorch_module(n, init_hidden=True))
        for t in (nir.Affine, nir.Linear, nir.Conv2d, nir.AvgPool2d, nir.LIF)
    }
    mapping[nir.Flatten] = lambda n: nn.Flatten(n.start_dim + 1, n.end_dim)  # batched
    mapping[nir.IF] = if_neuron
    mapping[nir.Scale] = lambda n: _Scale(n.scale)
    return mapping


def theirs(net: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run the imported net image by image (batch 1) for T steps from a fresh state (the
    neurons' own state reset, nirtorch's state, which carries recurrent edges, passed on)."""
    leaky = {n: m for n, m in net.named_modules() if isinstance(m, (snn.Leaky, snn.Synaptic))}
    step: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(_store(step, n)) for n, m in leaky.items()]
    logits, counts = [], {n: [] for n in leaky}
    with torch.no_grad():
        for image in images:
            x = image.unsqueeze(0)
            for m in leaky.values():
                m.mem = getattr(m, "v_init", None)
                m.mem = torch.zeros(0) if m.mem is None else m.mem.unsqueeze(0).clone()
                if isinstance(m, snn.Synaptic):
                    m.syn = torch.zeros(0)
            per_step, total, state = [], {n: 0.0 for n in leaky}, None
            for _ in range(T):
                out, state = net(x, state)
                per_step.append(out.reshape(-1))
                total = {n: total[n] + step[n] for n in leaky}
            logits.append(torch.stack(per_step))
            for n in leaky:
                counts[n].append(total[n].reshape(step[n].shape[1:]))
    for h in handles:
        h.remove()
    return torch.stack(logits, 1), {n: torch.stack(c) for n, c in counts.items()}


def _store(step: dict[str, torch.Tensor], name: str) -> Callable[..., None]:
    def hook(_m: nn.Module, _inputs: tuple, out: Any) -> None:
        step[name] = (out[0] if isinstance(out, tuple) else out).detach()

    return hook


def compare(model: nn.Module, net: nn.Module, images: torch.Tensor) -> dict[str, Any]:
    our_logits, our_counts = ours(model, images)
    their_logits, their_counts = theirs(net, images)
    sites: dict[str, Any] = {}
    for name, c in our_counts.items():
        other = their_counts[name.replace(".", "_")]
        differing = (c != other).float().mean().item()
        sites[name] = {
            "ours": int(c.sum()),
            "snntorch": int(other.sum()),
            "neurons_differing": differing,
        }
    return {
        "max_abs_logit_diff": float((our_logits - their_logits).abs().max()),
        "total_spikes_ours": sum(s["ours"] for s in sites.values()),
        "total_spikes_snntorch": sum(s["snntorch"] for s in sites.values()),
        "worst_site_fraction_differing": max(s["neurons_differing"] for s in sites.values()),
        "sites": sites,
    }


def run_case(name: str, model: nn.Module, images: torch.Tensor, importer: str, **kw: Any) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.nir"
        export_nir(model, path, input_shape=tuple(images.shape[1:]), **kw)
        graph = nir.read(path)
    try:
        if importer.startswith("pure"):
            net = import_from_nir(graph)
        else:
            net = nirtorch.nir_to_torch(graph, adapter_map(importer))
        if importer == "pure-batch2":
            with torch.no_grad():
                out = net(images[:2])
            shape = tuple((out[0] if isinstance(out, tuple) else out).shape)
            return {"case": name, "importer": importer, "error": f"output shape {shape}"}
        result = compare(model, net, images)
    except Exception as exc:  # report what the peer does with our file
        result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
    result.update(case=name, importer=importer)
    return result


def cases() -> list[tuple[str, Callable[[], nn.Module], list[str], dict[str, Any]]]:
    adapters = ["adapter", "adapter+v_init", "adapter+v_init+delay",
                "adapter+v_init+delay+nonstrict"]  # fmt: skip
    r20 = lambda **kw: lambda: build("resnet20", width=0.25, timesteps=T, **kw)  # noqa: E731
    c = {"target": "compact"}
    return [
        ("lif-chain", lif_chain, ["pure", "pure-batch2", "adapter"], c),
        ("lif-resnet20-post-add", r20(neuron="lif"), ["pure"], c),
        ("lif-resnet20-pre-add", r20(neuron="lif", block="pre-add"), ["pure"], c),
        ("if-resnet20-pre-add-phi0.5", r20(neuron="if", block="pre-add"), ["pure", *adapters], c),
        ("if-resnet20-pre-add-phi0.5-dt1", r20(neuron="if", block="pre-add"), ["pure"], {**c, "dt": 1.0}),
        ("if-resnet20-o-only-dt1", _spikes_only(r20(neuron="if")), ["pure"], {**c, "dt": 1.0}),
        ("if-resnet20-post-add-phi0", r20(neuron="if", phi=0.0), [adapters[0], *adapters[2:]], c),
        ("if-chain-ties", if_chain_with_ties, adapters[2:], {**c, "quantized": True}),
        ("portable-lif-resnet20-pre-add", r20(neuron="lif", block="pre-add"), ["pure"], {}),
        ("portable-if-resnet20-post-add", r20(neuron="if"), ["pure"], {}),
        ("portable-if-resnet20-pre-add", r20(neuron="if", block="pre-add"), ["pure"], {}),
        ("portable-if-chain-ties", if_chain_with_ties, ["pure"], {"quantized": True}),
    ]  # fmt: skip


def _spikes_only(make: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """IF neurons that emit ``o`` instead of ``o·θ`` (no Scale nodes; θ = 1 by default)."""

    def build_it() -> nn.Module:
        model = make()
        for m in model.modules():
            if isinstance(m, SpikingSite):
                m.neuron.emit_threshold = False
        return model

    return build_it


def main() -> int:
    os.environ.setdefault("SPIKEBRIDGE_COMPILE", "0")  # small nets: eager kernels start faster
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    print(f"snntorch {snn.__version__}, nir {nir.__version__}, nirtorch {nirtorch.__version__}")
    torch.manual_seed(0)
    images = torch.randn(N_IMAGES, 3, SIZE, SIZE)
    results, failed = [], False
    quantized = torch.randint(0, 4, images.shape) / 4.0  # currents 0, 1/4, 1/2, 3/4
    for name, make, importers, kw in cases():
        torch.manual_seed(0)
        model = _prepare(make())
        inputs = quantized if kw.pop("quantized", False) else images
        for importer in importers:
            r = run_case(name, model, inputs, importer, **kw)
            results.append(r)
            print(_line(r))
            exact = name.startswith(("lif", "portable")) and importer in ("pure", "adapter")
            failed |= exact and ("error" in r or r["worst_site_fraction_differing"] > 0)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if failed else 0


def _line(r: dict[str, Any]) -> str:
    head = f"{r['case']:<32} {r['importer']:<26}"
    if "error" in r:
        return f"{head} ERROR {r['error']}"
    return (
        f"{head} spikes ours={r['total_spikes_ours']:>7} snntorch={r['total_spikes_snntorch']:>7}"
        f"  worst site differing={r['worst_site_fraction_differing']:.4f}"
        f"  max|Δlogit|={r['max_abs_logit_diff']:.2e}"
    )


if __name__ == "__main__":
    sys.exit(main())

"""Block-cached threshold tuning (O(depth)) gives the same choices as tuning from the image."""

from __future__ import annotations

import copy

import pytest
import torch
from conversion_helpers import calibrate_bn, convert_by_name

import spikebridge.conversion.tuning as tt
from spikebridge.conversion.sites import snn_sites
from spikebridge.models import build
from spikebridge.nn.temporal import unfold


@pytest.mark.parametrize("block,activation", [("post-add", "relu"), ("pre-add", "qcfs")])
def test_cached_and_uncached_tuning_agree(monkeypatch, block, activation) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(3)
    ann = calibrate_bn(build("resnet20", width=0.25, block=block, activation=activation,
                            threshold=2.0), torch.randn(16, 3, 16, 16))  # fmt: skip
    x = torch.randn(10, 3, 16, 16)
    snn = convert_by_name(ann, "robust" if activation == "relu" else "qcfs", x, 3)
    fast, slow = copy.deepcopy(snn), copy.deepcopy(snn)
    assert tt._segment_plan(ann, fast, tt.paired_sites(ann, fast)) is not None
    rep_fast = tt.tune_thresholds(ann, fast, x, 3, batch_size=4, guard=False)
    monkeypatch.setattr(tt, "_segment_plan", lambda *_: None)  # force the pass-per-site path
    rep_slow = tt.tune_thresholds(ann, slow, x, 3, batch_size=4)
    assert [r.scale for r in rep_fast.rows] == [r.scale for r in rep_slow.rows]
    for a, b in zip(rep_fast.rows, rep_slow.rows, strict=True):
        assert a.site == b.site
        assert a.loss_after == pytest.approx(b.loss_after, rel=1e-5, abs=1e-9)
    torch.testing.assert_close(fast(x), slow(x))
    assert any(r.scale != 1.0 for r in rep_fast.rows)  # tuning did change something


def _block_error(block_a, block_s, x_a, x_s, T):  # type: ignore[no-untyped-def]
    return (unfold(block_s(x_s), T).mean(0) - block_a(x_a)).square().sum().item()


def _block_errors(ann, snn, start, x, T):  # type: ignore[no-untyped-def]
    """Per block: output error (sum of squares vs the ANN) with the SNN's thresholds and with
    the ``start`` thresholds put back in that block only, on the block inputs the SNN makes."""
    blocks = []
    for i, (stage_a, stage_s) in enumerate(zip(ann.stages, snn.stages, strict=True)):
        for j, (ba, bs) in enumerate(zip(stage_a, stage_s, strict=True)):
            blocks.append((f"stages.{i}.{j}.", ba, bs))
    ins = {}
    hooks = [
        m.register_forward_pre_hook(lambda m, a: ins.__setitem__(m, a[0]))
        for _, ba, bs in blocks
        for m in (ba, bs)
    ]
    snn.set_timesteps(T)
    out = []
    with torch.no_grad():
        ann(x), snn(x)
        for h in hooks:
            h.remove()
        for prefix, ba, bs in blocks:
            tuned = _block_error(ba, bs, ins[ba], ins[bs], T)
            own = [site.neuron for n, site in snn_sites(snn) if n.startswith(prefix)]
            kept = [nr.threshold for nr in own]
            for n, nr in zip(
                [n for n, _ in snn_sites(snn) if n.startswith(prefix)], own, strict=True
            ):
                nr.threshold = start[n]
            out.append((tuned, _block_error(ba, bs, ins[ba], ins[bs], T)))
            for nr, th in zip(own, kept, strict=True):
                nr.threshold = th
    return out


def test_block_guard_never_lets_a_block_output_error_grow(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(4)
    ann = calibrate_bn(build("resnet20", width=0.25, block="pre-add"), torch.randn(16, 3, 16, 16))
    x = torch.randn(8, 3, 16, 16)
    snn = convert_by_name(ann, "robust", x, 4)
    start = {n: s.neuron.threshold.clone() for n, s in snn_sites(snn)}
    original = tt._tune_site

    def sabotage(seg_a, seg_s, sites, inputs, cands, channelwise, conv=None, gaps=None):  # type: ignore[no-untyped-def]
        row = original(seg_a, seg_s, sites, inputs, cands, channelwise, conv, gaps)
        sites[2].neuron.threshold = sites[2].neuron.threshold * 20.0  # silences the site
        return row

    monkeypatch.setattr(tt, "_tune_site", sabotage)
    unguarded = copy.deepcopy(snn)
    report = tt.tune_thresholds(ann, unguarded, x, 4, batch_size=4, guard=False)
    assert not any(r.reverted for r in report.rows)
    assert any(t > s * 1.01 for t, s in _block_errors(ann, unguarded, start, x, 4))
    guarded = copy.deepcopy(snn)
    report = tt.tune_thresholds(ann, guarded, x, 4, batch_size=4, guard=True)
    assert any(r.reverted for r in report.rows) and not all(r.reverted for r in report.rows)
    for tuned, untuned in _block_errors(ann, guarded, start, x, 4):
        assert tuned <= untuned * (1 + 1e-5) + 1e-6
    assert all(r.scale == 1.0 and r.loss_after == r.loss_before for r in report.rows if r.reverted)

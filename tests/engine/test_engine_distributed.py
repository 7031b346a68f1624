"""Multi-process training (spikebridge.engine.distributed): 2 CPU processes over gloo.

The reference: one process on global batch B = 8 and two DDP processes on 4 images each
see the same samples per step (rank r takes positions r, r + 2, ... of the epoch's order, so
the ranks' batch i together hold positions [8i, 8i + 8)), and DDP averages the gradients,
so the trained weights must agree to float tolerance. BatchNorm is replaced by Identity
(without SyncBN, whose CPU support torch lacks, batch statistics would differ per rank).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from spikebridge.config import OptimConfig, TrainConfig
from spikebridge.data import DeviceLoader
from spikebridge.data.spec import DatasetInfo
from spikebridge.data.synthetic import make_synthetic
from spikebridge.engine import checkpoint as ckpt
from spikebridge.engine import distributed as ddp
from spikebridge.engine.tasks import ClassificationTask
from spikebridge.engine.train import Loaders, fit
from spikebridge.models import build
from spikebridge.runs.train import train_run

GLOBAL_BATCH, WORLD = 8, 2
INFO = DatasetInfo("synthetic", 4, 1, 16, (0.5,), (0.25,))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(worker: Callable[[int, int, str], None], root: Path, attempts: int = 3) -> Path:
    """Run ``worker(rank, port, folder)`` on WORLD processes; return the folder it used.

    The port is free when picked but not reserved: until rank 0's store binds it (seconds,
    while the children import torch), another process on the machine (e.g. the other
    xdist worker's gloo sockets) can take it. Only that failure, "address already in
    use", is retried, with a new port and an empty folder; every other error is raised.
    """
    for attempt in range(attempts):
        folder = root / f"attempt{attempt}"
        folder.mkdir()
        try:
            mp.spawn(worker, args=(free_port(), str(folder)), nprocs=WORLD, join=True)
            return folder
        except mp.ProcessRaisedException as error:
            if "address already in use" not in str(error).lower() or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def set_env(rank: int, world: int, port: int) -> None:
    """torchrun's variables, loopback only."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # fmt: skip


def bn_free_resnet() -> nn.Module:
    """resnet20 (width 0.25) with every BatchNorm replaced by Identity, fixed init."""
    torch.manual_seed(0)
    model = build("resnet20", num_classes=4, in_channels=1, width=0.25)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, nn.Identity())
    return model


def fit_once(rank: int, world: int, run_dir: Path) -> tuple[nn.Module, object]:
    """Train 2 epochs on 32 images (4 global steps per epoch), augmentation off."""
    torch.set_num_threads(1)
    x, y, vx, vy = make_synthetic(num_train=32, num_test=20, seed=1)
    cpu = torch.device("cpu")
    train = DeviceLoader(x, y, GLOBAL_BATCH // world, INFO, cpu, shuffle=True, augment=False,
                         seed=3, rank=rank, world_size=world)  # fmt: skip
    val = DeviceLoader(vx, vy, 8, INFO, cpu, shuffle=False, augment=False, seed=3)
    if rank == 0:
        run_dir.mkdir()  # as train_run does on rank 0
    model = bn_free_resnet()
    optim = OptimConfig(lr=0.05, schedule="cosine")
    cfg = TrainConfig(epochs=2, device="cpu", amp=False, progress=False, threads=1)
    result = fit(model, ClassificationTask(), Loaders(train, val, val), optim, cfg, run_dir,
                 log=lambda m: None)  # fmt: skip
    return model, result


def _ddp_fit_worker(rank: int, port: int, root: str) -> None:
    set_env(rank, WORLD, port)
    with ddp.session(torch.device("cpu")):
        assert ddp.get_world_size() == WORLD and ddp.get_rank() == rank
        # rank 1 gets its own folder: it must stay empty (only rank 0 writes)
        model, result = fit_once(rank, WORLD, Path(root) / f"rank{rank}")
        torch.save({"state": model.state_dict(), "history": result.history,
                    "test": result.test}, Path(root) / f"out{rank}.pt")  # fmt: skip


def _train_run_worker(rank: int, port: int, root: str) -> None:
    set_env(rank, WORLD, port)
    torch.set_num_threads(1)
    train_run({"dataset": "synthetic", "model": "resnet20", "width": 0.25, "epochs": 1,
               "batch_size": 8, "out": str(Path(root) / "run"), "device": "cpu", "threads": 1,
               "progress": False, "amp": False}, log=lambda m: None)  # fmt: skip
    assert not torch.distributed.is_initialized()  # the session destroyed its group


def test_single_process_helpers_are_no_ops() -> None:
    assert ddp.get_rank() == 0 and ddp.get_world_size() == 1 and ddp.is_main_process()
    model = nn.Linear(2, 2)
    assert ddp.wrap_model(model, sync_bn=True) is model
    assert ddp.on_main(lambda a: a + 1, 1) == 2
    sums = {"loss": torch.tensor(3.0)}
    assert ddp.all_reduce_sums(sums, 4) == (sums, 4)


def test_sharded_batches_cover_every_batch_once() -> None:
    batches = list(range(7))
    shards = [list(ddp.ShardedBatches(batches, r, 3)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]


def test_env_world_rejects_bad_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    from spikebridge.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError, match="RANK"):
        ddp.env_world()


def test_ddp_two_processes_match_one_process(tmp_path: Path) -> None:
    tmp_path = spawn_ranks(_ddp_fit_worker, tmp_path)
    single, single_result = fit_once(0, 1, tmp_path / "single")
    outs = [torch.load(tmp_path / f"out{r}.pt", weights_only=False) for r in range(WORLD)]
    for out in outs:  # both ranks hold the same selected weights as the single process
        for key, value in single.state_dict().items():
            torch.testing.assert_close(out["state"][key], value, atol=1e-5, rtol=1e-4)
    for a, b in zip(outs[0]["history"], single_result.history, strict=True):
        assert a["train_accuracy"] == b["train_accuracy"]
        assert a["val_accuracy"] == b["val_accuracy"]  # sharded evaluation, reduced exactly
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert outs[1]["test"]["samples"] == 20
    assert outs[1]["test"]["accuracy"] == single_result.test["accuracy"]
    assert (tmp_path / "rank0" / ckpt.BEST_WEIGHTS).is_file()
    assert (tmp_path / "rank0" / ckpt.METRICS_FILE).is_file()
    assert not (tmp_path / "rank1").exists()  # rank 1 wrote nothing


def test_train_run_under_torchrun_env(tmp_path: Path) -> None:
    tmp_path = spawn_ranks(_train_run_worker, tmp_path)
    run = tmp_path / "run"
    summary = json.loads((run / ckpt.SUMMARY_FILE).read_text())
    assert summary["epochs"] == 1 and 0.0 <= summary["test_accuracy"] <= 1.0
    assert len(ckpt.read_jsonl(run / ckpt.METRICS_FILE)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]

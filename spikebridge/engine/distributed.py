"""Multi-process training with PyTorch's own engine (``torchrun`` + DistributedDataParallel).

``torchrun --nproc_per_node=N -m spikebridge train ...`` starts N copies of the same
command; each finds ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in its environment.
:func:`session` (used by ``train_run`` / ``distill_run``) then joins the process group
(``nccl`` on CUDA, ``gloo`` on CPU), picks the device ``cuda:LOCAL_RANK`` and leaves the
group at the end. Outside torchrun every helper here is a no-op (rank 0 of 1), so one code
path serves both cases.

Split of work (docs/SCALING.md): each rank trains on its shard of every global batch
(``DeviceLoader(rank=, world_size=)`` takes positions ``r, r + W, ...`` of the epoch's
order), DDP averages the gradients, so a step with per-rank batch ``b`` on ``W`` ranks is
the step of one process on the global batch ``B = b·W``. Epoch metrics are summed over
ranks (:func:`all_reduce_sums`); evaluation is sharded by batch and reduced
(:func:`evaluate_sharded`), so every rank holds the same numbers and makes the same model
selection. Only rank 0 writes files and logs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from spikebridge.engine.evaluate import evaluate
from spikebridge.errors import ConfigError, SpikebridgeError

R = TypeVar("R")
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


# ----------------------------------------------------------------------------- process group


def env_world() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's environment; None when absent."""
    if "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank, world, local = (int(os.environ.get(k, "0")) for k in ENV_KEYS)
    except ValueError:
        raise ConfigError(f"torchrun variables {ENV_KEYS} must be integers.") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank}, WORLD_SIZE={world}; expected 0 <= RANK < WORLD_SIZE.")
    return rank, world, local


def is_distributed() -> bool:
    """True inside an initialized process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that writes files and logs."""
    return get_rank() == 0


def pick_device(device: torch.device) -> torch.device:
    """Under torchrun a CUDA device becomes ``cuda:LOCAL_RANK`` (one GPU per process)."""
    world = env_world()
    if world is None or world[1] == 1 or device.type != "cuda":
        return device
    local = world[2]
    if local >= torch.cuda.device_count():
        raise ConfigError(
            f"LOCAL_RANK {local} has no GPU (this node has {torch.cuda.device_count()}); "
            "expected --nproc_per_node <= the number of GPUs."
        )
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def init_from_env(device: torch.device) -> bool:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU) if there is one to join.

    Returns True when this call initialized the group (the caller then destroys it).
    """
    world = env_world()
    if world is None or world[1] == 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; run one process.")
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, init_method="env://", **kwargs)
    return True


@contextmanager
def session(device: torch.device) -> Iterator[torch.device]:
    """Init the process group (when under torchrun) for the block, destroy it after.

    Yields the device of this rank. Nested sessions reuse the open group.
    """
    device = pick_device(device)
    owned = init_from_env(device)
    try:
        yield device
    finally:
        if owned:
            dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if is_distributed():
        dist.barrier()


def main_only(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` on rank 0, silence on the others."""
    return log if is_main_process() else (lambda message: None)


def on_main(fn: Callable[..., R], *args: Any) -> R:
    """Run ``fn(*args)`` on rank 0 and hand its result (or its SpikebridgeError) to all ranks.

    For decisions every rank must share, e.g. the run folder's name (it has a timestamp).
    """
    if not is_distributed():
        return fn(*args)
    payload: list[Any] = [None]
    if is_main_process():
        try:
            payload = [("ok", fn(*args))]
        except SpikebridgeError as error:
            payload = [("error", type(error), str(error))]
    dist.broadcast_object_list(payload, src=0)
    if payload[0][0] == "error":
        raise payload[0][1](payload[0][2])
    return payload[0][1]


# ----------------------------------------------------------------------------- model


def wrap_model(model: nn.Module, sync_bn: bool = False) -> nn.Module:
    """The module to train: ``DDP(model)`` in a process group, else ``model`` itself.

    ``sync_bn`` converts BatchNorm to SyncBatchNorm in place (statistics over the global
    batch; torch supports it on CUDA only). Parameters and buffers stay the same tensors,
    so ``model`` (the unwrapped module) is what gets evaluated and saved.
    """
    if not is_distributed():
        return model
    device = next(model.parameters()).device
    if sync_bn:
        if device.type != "cuda":
            raise ConfigError("--sync-bn needs CUDA (torch's SyncBatchNorm runs on GPUs only).")
        _convert_sync_bn(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _convert_sync_bn(model: nn.Module) -> None:
    """Replace each BatchNorm child of ``model`` by a SyncBatchNorm sharing its tensors."""
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            _convert_sync_bn(child)


# ----------------------------------------------------------------------------- metrics


def all_reduce_sums(sums: dict[str, torch.Tensor], n: int) -> tuple[dict[str, torch.Tensor], int]:
    """Sum the per-rank epoch sums (loss·n, correct, extras·n) and sample counts."""
    if not is_distributed():
        return sums, n
    keys = sorted(sums)
    device = sums[keys[0]].device
    flat = torch.stack([sums[k].double().reshape(()) for k in keys] + [
        torch.tensor(float(n), dtype=torch.float64, device=device)
    ])  # fmt: skip
    dist.all_reduce(flat)
    return {k: flat[i] for i, k in enumerate(keys)}, int(round(flat[-1].item()))


class ShardedBatches:
    """Batches ``i`` of ``loader`` with ``i % world_size == rank`` (no padding, no repeats)."""

    def __init__(self, loader: Iterable[Any], rank: int, world_size: int) -> None:
        self.loader, self.rank, self.world_size = loader, rank, world_size

    def __iter__(self) -> Iterator[Any]:
        for i, batch in enumerate(self.loader):
            if i % self.world_size == self.rank:
                yield batch


def evaluate_sharded(model: nn.Module, loader: Iterable[Any], timesteps: int | None = None) -> dict:
    """:func:`~spikebridge.engine.evaluate.evaluate`, each rank on its batches, then reduced.

    Exact: every test image is counted once. Returns the same dict on every rank.
    """
    if not is_distributed():
        return evaluate(model, loader, timesteps)
    rank, world = get_rank(), get_world_size()
    has_batches = len(loader) > rank if hasattr(loader, "__len__") else True
    local = evaluate(model, ShardedBatches(loader, rank, world), timesteps) if has_batches else None
    spiking = getattr(model, "spiking", False)
    T = (timesteps or int(model.timesteps)) if spiking else 1
    device = next(model.parameters()).device
    flat = torch.zeros(2 * T + 1, dtype=torch.float64, device=device)  # correct[T], loss[T], n
    if local is not None:
        n = local["samples"]
        flat[:T] = torch.tensor([local["accuracy_by_timestep"][str(t)] for t in range(1, T + 1)])
        flat[T:-1] = torch.tensor([local["loss_by_timestep"][str(t)] for t in range(1, T + 1)])
        flat[: 2 * T] *= n
        flat[-1] = n
    dist.all_reduce(flat)
    return _result(flat[:T].round() / flat[-1], flat[T:-1] / flat[-1], int(flat[-1].item()))


def _result(acc: torch.Tensor, loss: torch.Tensor, n: int) -> dict:
    """The ``evaluate`` dict from per-t accuracy and loss ``[T]``."""
    acc_l, loss_l = acc.tolist(), loss.tolist()
    return {
        "accuracy": acc_l[-1], "loss": loss_l[-1],
        "accuracy_by_timestep": {str(t + 1): a for t, a in enumerate(acc_l)},
        "loss_by_timestep": {str(t + 1): v for t, v in enumerate(loss_l)},
        "samples": n,
    }  # fmt: skip

"""Distributed data parallel through ``torchrun``.

``torchrun --nproc_per_node N -m nuq train --config ...`` sets RANK / WORLD_SIZE /
LOCAL_RANK; :func:`setup` then joins the process group (nccl on GPU, gloo on CPU).
Every rank reads its own shard of each epoch (see ``TensorLoader``); DDP broadcasts rank
0's parameters and buffers (quantizer parameters included) when it wraps the model, and
averages gradients; only rank 0 writes files. :func:`state_checksum` lets the loop check
that all ranks still hold the same model after every epoch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str) -> DistInfo:
    """Join the process group if launched by torchrun; no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local)


def wrap(model: nn.Module, info: DistInfo, device: torch.device, sync_bn: bool) -> nn.Module:
    if not info.enabled:
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def state_checksum(model: nn.Module) -> float:
    """A float64 fingerprint of every parameter and buffer (order-sensitive)."""
    total = torch.zeros((), dtype=torch.float64)
    for i, t in enumerate(unwrap(model).state_dict().values()):
        if t.is_floating_point() or t.dtype in (torch.int64, torch.int32, torch.bool):
            total += (t.double().sum() * (1 + (i % 97) * 1e-3)).cpu()
    return float(total)


def gather_floats(value: float, info: DistInfo) -> list[float]:
    if not info.enabled:
        return [value]
    out: list[float | None] = [None] * info.world_size
    dist.all_gather_object(out, value)
    return [float(v) for v in out]  # type: ignore[arg-type]


@torch.no_grad()
def sync_buffers(model: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm statistics, running activation ranges) to all
    ranks. DDP broadcasts them at the start of each forward, so after the last step of
    an epoch they differ by that step's local update; rank 0's copy is the model."""
    if not info.enabled:
        return
    for b in unwrap(model).buffers():
        dist.broadcast(b, src=0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()

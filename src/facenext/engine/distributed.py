"""Data-parallel training launched by torchrun: one process per GPU (or CPU process with gloo)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

# Generous: the other processes wait on the host group while one decodes the cache (facenext.data.cache).
HOST_TIMEOUT = timedelta(hours=1)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    # A gloo group beside the training one, for decisions made on the host (stop flags, waiting for the decoded
    # cache): an NCCL collective is queued on the GPU, and reading its result waits for every kernel before it.
    host_group: Any = None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun describes in the environment; a single process needs nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    host_group = dist.new_group(backend="gloo", timeout=HOST_TIMEOUT)
    return DistContext(rank, world, local_rank, host_group), device


def all_sum(values: list[float], ctx: DistContext, device: torch.device) -> list[float]:
    """Sum numbers over all processes (identity for a single process)."""
    if not ctx.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_max_(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """``tensor`` replaced by its maximum over all processes, on the device: no read, so no wait for the GPU."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_gather(value: Any, ctx: DistContext) -> list[Any]:
    """Every process's ``value``, in rank order (a list of one for a single process); all processes must call it."""
    if not ctx.enabled:
        return [value]
    values: list[Any] = [None] * ctx.world
    dist.all_gather_object(values, value)
    return values


def any_rank(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """True on every process when it is true on any: keeps decisions such as stopping or skipping in step."""
    return all_sum([float(flag)], ctx, device)[0] > 0 if ctx.enabled else flag


def any_rank_on_host(flags: list[bool], ctx: DistContext) -> list[bool]:
    """Each flag true on every process when it is true on any, exchanged through the host group: no wait for the
    GPU, so cheap enough for every step (about half a millisecond between two processes on a busy 2-core machine:
    benchmarks/stop.md)."""
    if not ctx.enabled:
        return flags
    tensor = torch.tensor(flags, dtype=torch.int32)
    dist.all_reduce(tensor, group=ctx.host_group)
    return [value > 0 for value in tensor.tolist()]


def barrier(ctx: DistContext, on_host: bool = False) -> None:
    """Wait for every process; ``on_host`` through the host group, for waits that may outlast NCCL's timeout."""
    if ctx.enabled:
        dist.barrier(group=ctx.host_group if on_host else None)

"""Scale-out with torch.distributed: the same `train` runs alone or under `torchrun`.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; we then join a process group (gloo on CPU, nccl on
GPU) and wrap the model in DDP, or FSDP when asked. Every rank computes its slice of the same
global batch, so N processes reproduce one process's gradients on the whole batch.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    fsdp: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but no CUDA GPU is available")
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    return torch.device("cpu")


def init_distributed(device: str = "auto", fsdp: bool = False) -> DistContext:
    """Join the torchrun process group if there is one; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if fsdp and world == 1:
        fsdp = False  # nothing to shard across
    return DistContext(rank, world, local_rank, dev, fsdp)


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    model = model.to(ctx.device)
    if not ctx.enabled:
        return model
    if ctx.fsdp:
        from torch.distributed.fsdp import fully_shard

        # FSDP2: parameters become DTensors sharded across ranks (CPU/gloo and GPU/nccl alike)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)


def no_sync(model: nn.Module, skip: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
    return model.no_sync() if skip and hasattr(model, "no_sync") else contextlib.nullcontext()


def all_reduce_mean(value: float, ctx: DistContext) -> float:
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t) / ctx.world_size


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when any rank says so (e.g. a time budget ran out), so all stop together."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([float(flag)], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()

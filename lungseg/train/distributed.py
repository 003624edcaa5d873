"""Several training processes under ``torchrun``: process group, DDP wrapper, RNG state gathering."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from lungseg.network import model


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun launch: rank and world size (0 and 1 when alone)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def init(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun with WORLD_SIZE > 1 (gloo on CPU, nccl on
    CUDA, one GPU per process); otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    dist = torch.distributed
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size()), device


def wrap(net: model.UNet, dist: Dist, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``net`` when running in several processes. On CUDA BatchNorm
    is synchronised across processes; on CPU (SyncBatchNorm is GPU-only) each process normalises
    with the statistics of its share of the batch, so curves match one process only approximately."""
    if dist.world == 1:
        return net
    if device.type == "cuda":
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        return torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index])
    return torch.nn.parallel.DistributedDataParallel(net)


def rng_states(dist: Dist, device: torch.device) -> list:
    """Every process's RNG state (dropout), gathered so a resumed run continues each stream."""
    state = (torch.get_rng_state(), torch.cuda.get_rng_state() if device.type == "cuda" else None)
    if dist.world == 1:
        return [state]
    states: list = [None] * dist.world
    torch.distributed.all_gather_object(states, state)
    return states


def all_reduce_sum(t: torch.Tensor, dist: Dist, device: torch.device) -> torch.Tensor:
    """Sum of ``t`` over all processes (``t`` itself when alone)."""
    if dist.world == 1:
        return t
    t = t.to(device)
    torch.distributed.all_reduce(t)
    return t.cpu()

"""The process's place under torchrun (RANK, WORLD_SIZE, LOCAL_RANK), and its device."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Place:
    """This process's rank among ``world`` processes, and the device it computes on."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes shared files, logs and progress bars."""
        return self.rank == 0


def current_place(device: str | None = None) -> Place:
    """Read torchrun's environment (a single process when absent); CUDA ranks take ``cuda:LOCAL_RANK``."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(device)
    if chosen.type == "cuda" and chosen.index is None:
        chosen = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return Place(rank=rank, world=world, local_rank=local_rank, device=chosen)


def init_process_group(place: Place) -> bool:
    """Join the torchrun process group (nccl on CUDA, gloo on CPU) when there are several ranks.

    Returns True when this call created the group (the caller then destroys it). A group the caller's process
    already holds is used as it is; either way ranks > 1 means the run is distributed.
    """
    if place.world <= 1 or torch.distributed.is_initialized():
        return False
    if place.device.type == "cuda":
        torch.cuda.set_device(place.device)
    backend = "nccl" if place.device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend=backend, rank=place.rank, world_size=place.world)
    return True


def same_on_every_rank(value: int, place: Place) -> bool:
    """Whether every rank of the process group passed the same ``value`` (a collective: all ranks call it)."""
    device = place.device if place.device.type == "cuda" else torch.device("cpu")
    both = torch.tensor([value, -value], dtype=torch.long, device=device)
    torch.distributed.all_reduce(both, op=torch.distributed.ReduceOp.MAX)
    return int(both[0]) == -int(both[1])


def mean_over_ranks(value: torch.Tensor, place: Place) -> float:
    """The mean of ``value`` over every rank (a collective when distributed: all ranks call it)."""
    if place.world > 1:
        value = value.clone()
        torch.distributed.all_reduce(value)
        value /= torch.distributed.get_world_size()
    return float(value)

"""Data-parallel training across processes: who this process is, and the few collectives we use.

torchrun --nproc-per-node=2 -m training train --data data/cifar10-jpeg

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE (and the rendezvous address);
without them, or with WORLD_SIZE=1, this is a lone process and nothing touches torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported by the functions that use it: `summary` stays quick
    import torch


@dataclass(frozen=True)
class World:
    rank: int = 0  # 0 logs, evaluates, checkpoints, exports and publishes
    size: int = 1  # processes in the whole job (every node)
    local_rank: int = 0  # this process's index on its machine: its GPU under NCCL
    local_size: int = 1  # processes on this machine: they share its cores

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def label(self) -> str:
        return f"rank {self.rank}/{self.size}"


ALONE = World()  # a process on its own: what every function here assumes by default


def world_from_env() -> World:
    """The process's place in a torchrun job; a lone ``World()`` outside one."""
    env = os.environ
    size = int(env.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(
        rank=int(env["RANK"]),
        size=size,
        local_rank=int(env.get("LOCAL_RANK", "0")),
        local_size=int(env.get("LOCAL_WORLD_SIZE", str(size))),
    )


def start(world: World, device: torch.device) -> None:
    """Join the process group: NCCL between GPUs, gloo between CPU processes."""
    import torch.distributed as dist

    if world.distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def barrier(world: World) -> None:
    if not world.distributed:  # a lone process never imports torch.distributed here
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def stop(world: World) -> None:
    if not world.distributed:  # a lone process never imports torch.distributed here
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def all_sum(world: World, values: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over every rank (in place, returned for chaining)."""
    import torch.distributed as dist

    if world.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def from_main(world: World, values: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``values`` on every rank (in place)."""
    import torch.distributed as dist

    if world.distributed:
        dist.broadcast(values, src=0)
    return values


def rank_device(world: World, device: torch.device) -> torch.device:
    """Each process on a machine takes its own GPU; CPU processes share the CPU."""
    import torch

    if device.type == "cuda" and world.distributed:
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return device


def threads_per_process(world: World, requested: int) -> int:
    """``requested``, else this process's share of the cores (2 cores, 2 ranks: 1 thread each)."""
    if requested:
        return requested
    return max(1, len(os.sched_getaffinity(0)) // world.local_size)


def rank_share(batch: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's rows of a global batch: every ``size``-th from ``rank`` (DistributedSampler's
    split), so the ranks' shares differ in length by at most one and together are the batch."""
    return batch[world.rank :: world.size]

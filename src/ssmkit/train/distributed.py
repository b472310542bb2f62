"""Multi-process training through PyTorch's own engine (``torchrun`` + DDP).

``torchrun --nproc_per_node=K -m ssmkit train ...`` sets ``WORLD_SIZE``/``RANK``; we join the
process group (gloo on CPU, nccl on CUDA), every process draws the same data order and takes
every K-th item of each global batch, DDP averages the gradients, and the loss of each
process is its summed loss divided by the global count times K, so the update equals the
single-process update on the same global batch (up to the order of float additions).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0  # this process
    world: int = 1  # number of processes

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints progress."""
        return self.rank == 0


def init(device: torch.device) -> Dist:
    """Join the process group when launched by torchrun; a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def all_sum(values: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum ``values`` over processes (identity in a single process)."""
    if d.world > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()

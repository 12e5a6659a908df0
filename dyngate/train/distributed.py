"""Data-parallel training on torch.distributed: ``torchrun --nproc-per-node N -m dyngate train``.

torchrun sets ``WORLD_SIZE``/``RANK``/``MASTER_ADDR``; one process per rank (gloo on CPU, nccl on
CUDA). Every rank draws the same data order and augmentation from the shared seeded generator,
then trains on its own contiguous slice of each global batch; DistributedDataParallel averages
the gradients, so the global batch is ``batch_size`` images whatever the world size. For a fixed
world size a run is bit-reproducible (gloo's reductions have a fixed order); BatchNorm statistics
are per rank, so different world sizes give different (equally valid) runs. Rank 0 alone
evaluates and writes files; the other ranks wait for it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from dyngate.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def slice(self, n: int) -> slice:
        """This rank's contiguous share of a global batch of ``n``.

        Every rank gets ``n // size`` images, so all ranks take part in every gradient
        all-reduce; the remainder of a short last batch is dropped (none on one rank).
        """
        per = n // self.size
        return slice(self.rank * per, (self.rank + 1) * per)

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def launched_rank() -> int:
    """The rank torchrun gave this process (0 without torchrun), known before :func:`init`."""
    return int(os.environ.get("RANK", "0"))


def init(batch_size: int) -> World:
    """Join the process group torchrun describes (a no-op without one)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if batch_size % size:
        raise ConfigError(f"--batch-size {batch_size} must be a multiple of the world size {size} "
                           "(each rank trains on an equal share of every batch)")
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return World(dist.get_rank(), dist.get_world_size())


def wrap(model: nn.Module, world: World) -> nn.Module:
    """DDP around ``model`` on more than one rank; the module itself on one."""
    if world.size <= 1:
        return model
    # every parameter gets a gradient each step (gates pass a straight-through gradient even
    # when saturated; CUCB's sliced sub-networks, which would not, are refused before this)
    return nn.parallel.DistributedDataParallel(model)


def sum_across(values: list[float], world: World) -> list[float]:
    """Sum per-rank counters (correct predictions, loss sums) over all ranks."""
    if world.size <= 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

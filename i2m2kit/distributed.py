"""Data-parallel training across processes with PyTorch's own engine (``torchrun``).

Run any script that calls ``ik.fit`` under ``torchrun --nproc_per_node=N script.py``: ``fit``
joins the process group that torchrun describes (NCCL on GPUs, gloo on CPUs), wraps each
phase's model in ``DistributedDataParallel``, and

* splits every global batch of ``batch_size`` between the ranks, so that N processes take the
  same optimisation steps as one process with the same batch size (same shuffling, same
  global batches; each rank's loss is scaled so that DDP's gradient average is the mean over
  the global batch, the last, smaller batch included);
* evaluates a shard of the data on each rank and gathers the predictions, so that every rank
  computes the same metrics over the whole set;
* writes checkpoints and shows progress on rank 0 only.

Nothing here runs, and nothing changes, in a single process.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env() -> bool:
    """Join the process group torchrun set up (its WORLD_SIZE, RANK, MASTER_ADDR... variables);
    True when training is distributed. A no-op when already joined or not under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:  # one GPU per process
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return active()


def device_for_rank(device: torch.device) -> torch.device:
    """On CUDA, this process's own GPU (torchrun's LOCAL_RANK)."""
    if device.type == "cuda" and active() and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


class RankShard(Sampler):
    """This rank's share (every ``world``-th index) of each batch of a batch sampler."""

    def __init__(self, batches: Sampler, rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield list(batch)[self.rank::self.world]

    def __len__(self) -> int:
        return len(self.batches)


def loss_scale(shard_size: int, global_size: int) -> float:
    """DDP averages gradients over ranks; scaling each rank's mean loss by this makes the
    average the gradient of the mean over the whole global batch."""
    return shard_size * world_size() / global_size


def contiguous_range(n: int) -> range:
    """This rank's contiguous block of ``n`` examples for evaluation (blocks in rank order)."""
    per = -(-n // world_size())
    return range(min(n, rank() * per), min(n, (rank() + 1) * per))


def gather(pieces: Any) -> list[Any]:
    """Every rank's ``pieces`` (CPU objects), in rank order, on every rank."""
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, pieces)
    return out


def sum_over_ranks(values: Sequence[float]) -> list[float]:
    """Element-wise sums over the ranks (through Python objects: works on gloo and NCCL alike)."""
    if not active():
        return list(values)
    return [sum(column) for column in zip(*gather(list(values)))]


def barrier() -> None:
    if active():
        dist.barrier()

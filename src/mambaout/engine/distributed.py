"""Process-group setup for `torchrun` (DDP: nccl on CUDA, gloo on CPU) and the few collectives the loop needs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from .device import resolve_device


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str | None = None) -> Distributed:
    """Join the process group that torchrun describes in the environment (or run as a single process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = resolve_device(device)
    if chosen.type == "cuda":  # torchrun gives each process its GPU by LOCAL_RANK
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return Distributed(rank, local_rank, world_size, chosen)


def joined() -> bool:
    """Whether this process is in a process group already."""
    return dist.is_initialized()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sums over all processes (identity in a single process)."""
    if not dist.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_process(flag: bool, device: torch.device) -> bool:
    """True on every process when it is true on any (so all stop together)."""
    return all_reduce_sum([float(flag)], device)[0] > 0


def all_gather_object(obj) -> list:
    """One object from every process, in rank order ([obj] in a single process)."""
    if not dist.is_initialized():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj, src: int = 0):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class ShardSampler(Sampler[int]):
    """Every rank-th index, no padding and no repeats: each validation image is counted exactly once."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@contextlib.contextmanager
def processes(device: str | None = None) -> Iterator[Distributed]:
    """`setup` for the length of a `with` block (an evaluation command), the process group left at its end."""
    env = setup(device)
    try:
        yield env
    finally:
        teardown()


def shard_loader(dataset: Dataset, env: Distributed, batch_size: int, workers: int,
                 collate_fn: Callable | None = None, **options) -> DataLoader:
    """A loader over this process's share of `dataset` (`ShardSampler`: each sample evaluated exactly once)."""
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_fn,
                      sampler=ShardSampler(len(dataset), env.rank, env.world_size), **options)

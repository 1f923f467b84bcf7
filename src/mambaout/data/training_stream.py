"""The training sample stream every task reads: full batches despite bad samples, and a resumable position.

The engine wraps a task's training set and sampler in these two classes:

- `EpochStream` numbers the indices its sampler yields in an epoch (`SampleKey(epoch, position, index)`) and can
  start an epoch part-way through, so a run resumed from a mid-epoch checkpoint reads exactly the samples that
  remained, in the same order.
- `TrainingSamples` seeds the random states (torch, numpy, Python) of each sample from (seed, rank, epoch,
  position) before reading and transforming it: the augmentation of a sample does not depend on which worker
  reads it, how many workers there are, or what was read before, which is what makes a mid-epoch resume exact.
  A sample that cannot be used (an unreadable file, a label that does not fit, a transform that raises) is
  replaced by another one drawn from the same seed, so a batch keeps its size (BatchNorm layers of batch 2 need
  both images) and a resumed run draws the same replacement; the failure still travels to the collate function
  as a `Skipped` marker inside `Redrawn`, to be counted and listed.
"""

from __future__ import annotations

import contextlib
import random
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .folder import Redrawn, Skipped

# a sample still unusable after this many draws leaves its batch one smaller (the failure limit then decides)
MAX_DRAWS = 16


@dataclass(frozen=True)
class SampleKey:
    """What the stream hands the dataset: the sample `index` at `position` of `epoch`'s order."""

    epoch: int
    position: int
    index: int


class EpochStream(Sampler[SampleKey]):
    """A task's sampler, numbered: epoch `e` yields its order from position `start` on (`set_epoch(e, start)`)."""

    def __init__(self, sampler: Sampler[int]) -> None:
        self.sampler = sampler
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.start, 0)

    def __iter__(self) -> Iterator[SampleKey]:
        for position, index in enumerate(self.sampler):
            if position >= self.start:
                yield SampleKey(self.epoch, position, int(index))


class TrainingSamples(Dataset):
    """`dataset` read by `SampleKey`: each sample under its own seed, an unusable one replaced (see the module)."""

    def __init__(self, dataset: Dataset, seed: int, rank: int = 0) -> None:
        self.dataset, self.seed, self.rank = dataset, seed, rank

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey) -> Any:
        failed: list[Skipped] = []
        index = key.index
        for draw in range(MAX_DRAWS):
            seed = sample_seed(self.seed, self.rank, key.epoch, key.position, draw)
            with seeded_random_states(seed):
                item = self.dataset[index]
            if not isinstance(item, Skipped):
                return Redrawn(item, tuple(failed)) if failed else item
            failed.append(item)
            index = random.Random(seed).randrange(len(self.dataset))
        return Redrawn(None, tuple(failed))


def sample_seed(*parts: int) -> int:
    """A 63-bit seed that mixes `parts` (neighbouring positions get unrelated seeds)."""
    low, high = np.random.SeedSequence([p & 0xFFFFFFFF for p in parts] + [len(parts)]).generate_state(2)
    return (int(high) << 32 | int(low)) & (2**63 - 1)


@contextlib.contextmanager
def seeded_random_states(seed: int) -> Iterator[None]:
    """torch's, numpy's and Python's global random states seeded from `seed` inside, as they were after."""
    saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.manual_seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGTERM/SIGUSR1 to the training process, which checkpoints and then stops them
    (SLURM signals every process of a job, and a worker that died first would end the run without a checkpoint)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)

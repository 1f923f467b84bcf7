"""What a kind of training plugs into the one engine (`engine.loop.fit`): model, data, loss, metric, schedule.

The engine owns everything that is the same for every task: processes (torchrun DDP), seeding, the optimizer
step with AMP, gradient accumulation and clipping, the NaN stop, EMA, atomic checkpoints and exact resume, the
output folder (args.yaml, summary.csv, TensorBoard, curves PNG) and progress bars. A task says what differs:
the packages under `tasks/`: classification, detection and segmentation.

Exact resume holds for every task as long as the data order is a function of (seed, epoch): the default sampler
is a `DistributedSampler`; iteration-based tasks use `IterationSampler`, whose "epoch" is a block of iterations.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler.scheduler import Scheduler
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, Sampler

from ..data.folder import Skipped
from .config import EngineConfig
from .distributed import Distributed
from .weight_decay import param_groups


@dataclass
class TaskParts:
    """What `Task.build` returns. `model` is what is optimised, saved in checkpoints and evaluated."""

    model: nn.Module
    train_set: Dataset
    val_set: Dataset | None
    collate_fn: Callable[[list[Any]], Batch]
    skipped_while_scanning: list[Skipped]  # files the datasets dropped before training began (listed with the rest)
    val_collate_fn: Callable[[list[Any]], Any] | None = None  # what the task's evaluate() reads (default: collate_fn)


@dataclass
class Batch:
    """One collated batch: `inputs` and `targets` are whatever the task's `loss` takes (tensors, lists, dicts)."""

    inputs: Any
    targets: Any
    size: int  # images in the batch (after skipping unreadable ones); 0 skips the step on every process
    skipped: list[Skipped]  # files dropped from this batch (unreadable, or a transform failed), and why


@dataclass(frozen=True)
class Metric:
    """The validation number that picks best.pth."""

    key: str  # a key of the dict `Task.evaluate` returns
    higher_is_better: bool = True

    def better(self, new: float, old: float | None) -> bool:
        return old is None or (new > old if self.higher_is_better else new < old)


# optimizers (timm names) that take torch's fused=True on CPU and CUDA
FUSED_OPTIMIZERS = ("adamw", "adam")


class Task(ABC):
    """Base class of a training task. Subclasses implement the abstract methods; the rest have defaults."""

    #: what the progress line and summary count ("images")
    unit: str = "images"
    #: the task's options (an EngineConfig subclass): the command line makes a flag of each field
    config_class: ClassVar[type[EngineConfig]]

    def __init__(self, config: EngineConfig) -> None:
        self.config = config

    # ---- required
    @abstractmethod
    def build(self, env: Distributed) -> TaskParts:
        """Model (on CPU, weights loaded) and datasets; called once per process after seeding."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss of one batch (the engine wraps this in autocast) and named parts to log (may be {})."""

    @abstractmethod
    def evaluate(self, model: nn.Module, loader: Any, env: Distributed, amp_dtype: torch.dtype | None,
                 progress: bool) -> dict[str, float]:
        """Validation metrics reduced over all processes, keys prefixed 'val_' (every process returns them)."""

    @abstractmethod
    def experiment_name(self) -> str:
        """Default run folder name: the same command rerun with --resume auto must find the same folder."""

    @abstractmethod
    def checkpoint_meta(self) -> dict[str, Any]:
        """Extra keys saved in every checkpoint so that eval/predict can rebuild the model (name, classes, ...)."""

    @abstractmethod
    def schedule(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> tuple[Scheduler, int]:
        """A timm scheduler and the number of epochs to run. The engine calls `step_update(update)` after every
        optimizer step and `step(epoch + 1, metric)` after every epoch (timm's API)."""

    # ---- defaults
    @property
    def metric(self) -> Metric:
        """The validation metric that picks best.pth: --eval-metric, with a val_ prefix; a loss is better lower."""
        return Metric(f"val_{self.config.eval_metric}", higher_is_better=self.config.eval_metric != "loss")

    def to_device(self, batch: Batch, device: torch.device) -> Batch:
        """Moves tensors (also inside lists, tuples and dicts) to `device`."""
        return Batch(_move(batch.inputs, device), _move(batch.targets, device), batch.size, batch.skipped)

    def prepare(self, batch: Batch) -> Batch:
        """Per-batch work on the device before the forward pass (mixup, channels-last). Default: none."""
        return batch

    def train_sampler(self, dataset: Dataset, env: Distributed) -> Sampler:
        return DistributedSampler(
            dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=self.config.seed, drop_last=True
        )

    def steps_per_epoch(self, loader_length: int) -> int:
        """Optimizer steps per epoch from the loader's batches per process (full accumulation cycles only)."""
        accum = self.config.grad_accum_steps
        return (loader_length - loader_length % accum) // accum

    def on_epoch_start(self, epoch: int) -> None:
        """Hook at the start of every epoch (e.g. switching mixup off)."""
        return None

    def optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        """timm's optimizer over the decay / no-decay groups of the recipe's official rule (`--no-weight-decay`)."""
        c = self.config
        options = {k: v for k, v in (("betas", c.opt_betas), ("eps", c.opt_eps)) if v is not None}
        if c.opt in FUSED_OPTIMIZERS:
            # torch's fused kernel: one pass over all parameters instead of ~10 ops per tensor (3.5x faster for
            # MambaOut-F on CPU); the same update rule as the recipes' torch AdamW
            options["fused"] = True
        groups = param_groups(model, c.weight_decay, c.no_weight_decay)
        return create_optimizer_v2(groups, opt=c.opt, lr=lr, weight_decay=c.weight_decay, momentum=c.momentum,
                                   **options)

    def describe(self, parts: TaskParts) -> str:
        """One log line about the task (model and data) for the start of training."""
        return f"{len(parts.train_set)} training samples"


class IterationSampler(Sampler[int]):
    """Sample indices for iteration-based schedules: an endless stream of seeded permutations, cut into epochs.

    Epoch e of process r yields the stream positions [e * n, (e + 1) * n) of its own shard, so the indices of any
    epoch are a function of (seed, epoch) alone: exact resume at epoch boundaries, as `DistributedSampler` gives.
    """

    def __init__(self, dataset_length: int, samples_per_epoch: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> None:
        if dataset_length == 0:
            raise ValueError("the dataset is empty")
        self.length, self.per_epoch, self.seed = dataset_length, samples_per_epoch, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_epoch

    def __iter__(self) -> Iterator[int]:
        global_start = self.epoch * self.per_epoch * self.world_size
        global_end = global_start + self.per_epoch * self.world_size
        first, last = global_start // self.length, (global_end - 1) // self.length
        stream: list[int] = []
        for permutation in range(first, last + 1):
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + permutation)
            stream.extend(torch.randperm(self.length, generator=generator).tolist())
        offset = global_start - first * self.length
        window = stream[offset : offset + self.per_epoch * self.world_size]
        return iter(window[self.rank :: self.world_size])


def epochs_for_iterations(iterations: int, iterations_per_epoch: int) -> int:
    """Epochs (checkpoint intervals) an iteration-based schedule needs."""
    return math.ceil(iterations / iterations_per_epoch)


def _move(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: _move(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_move(v, device) for v in value)
    return value

"""Learning-rate schedules that timm's scheduler factory does not build: LocalMamba's staircase warmup."""

from __future__ import annotations

import torch
from timm.scheduler import CosineLRScheduler


class StaircaseWarmupCosine(CosineLRScheduler):
    """LocalMamba's toolbox schedule (hunto/LocalMamba classification/lib/utils/scheduler.py: GradualWarmupScheduler
    around CosineAnnealingLR, stepped every iteration): the warmup lr rises once per epoch, then a per-iteration
    cosine over the epochs after the warmup.

    timm's cosine with a prefix warmup gives exactly that when its clock `t` is held at the start of each warmup
    epoch and runs one update behind afterwards (the toolbox's cosine counts from the first update after warmup).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, epochs: int, warmup_epochs: int, steps_per_epoch: int,
                 lr_min: float, warmup_lr_init: float) -> None:
        self.steps_per_epoch, self.warmup_updates = steps_per_epoch, warmup_epochs * steps_per_epoch
        super().__init__(
            optimizer,
            t_initial=(epochs - warmup_epochs) * steps_per_epoch,
            lr_min=lr_min,
            warmup_t=self.warmup_updates,
            warmup_lr_init=warmup_lr_init,
            warmup_prefix=True,
            t_in_epochs=False,
        )

    def clock(self, num_updates: int) -> int:
        """The cosine's `t` after `num_updates` updates."""
        if num_updates <= self.warmup_updates:
            return num_updates - num_updates % self.steps_per_epoch
        return num_updates - 1

    def step_update(self, num_updates: int, metric: float | None = None) -> None:
        super().step_update(self.clock(num_updates), metric)

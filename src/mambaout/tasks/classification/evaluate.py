"""Top-1/top-5 accuracy and loss of a classifier over a loader of (images, targets, skipped) batches."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ...data.folder import SkipLog, Skipped


@dataclass(frozen=True)
class EvalResult:
    top1: float  # percent
    top5: float  # percent; top-k with k = min(5, number of classes)
    loss: float  # mean over images
    images: int  # images evaluated
    skipped: int  # unreadable files left out
    seconds: float
    images_per_second: float

    def format(self) -> str:
        return (
            f"top-1 {self.top1:.3f}  top-5 {self.top5:.3f}  loss {self.loss:.4f}  images {self.images}  "
            f"skipped {self.skipped}  images/s {self.images_per_second:.1f}"
        )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor, list[Skipped]]],
    device: str | torch.device,
    amp_dtype: torch.dtype | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    progress: bool = True,
    desc: str = "val",
    skip_log: SkipLog | None = None,
) -> EvalResult:
    """Evaluate `model` on every batch of `loader` (batches from `collate_skipping`).

    The loss is the mean cross-entropy, or `loss_fn(logits, targets)` (a batch mean) weighted by batch size.
    Batches with no readable image are passed over; their skipped files are counted, and added to `skip_log`.
    Under torch.distributed the counts of every rank are summed, so each rank returns the same result for the
    whole dataset (give each rank a disjoint share of it, with no padding).
    `skipped` counts only files the loader skipped, not those the dataset left out while scanning.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    # correct top-1, correct top-k, loss sum, images, skipped: summed on the device, read once at the end.
    totals = torch.zeros(5, dtype=torch.float64, device=device)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    bar = tqdm(loader, desc=desc, unit="batch", disable=not (progress and sys.stderr.isatty()), leave=False)
    start = time.perf_counter()
    try:
        for step, (images, targets, skipped) in enumerate(bar):
            totals[4] += len(skipped)
            if skip_log is not None:
                skip_log.add(skipped)
            if len(targets) == 0:
                continue
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with autocast:
                logits = model(images)
            logits = logits.float()
            k = min(5, logits.shape[-1])
            hits = logits.topk(k, dim=-1).indices == targets[:, None]
            totals[0] += hits[:, 0].sum()
            totals[1] += hits.any(dim=-1).sum()
            if loss_fn is None:
                totals[2] += F.cross_entropy(logits, targets, reduction="sum")
            else:
                totals[2] += loss_fn(logits, targets).float() * len(targets)
            totals[3] += len(targets)
            if not bar.disable and step % 10 == 0:  # reading the totals waits for the device: not every step
                bar.set_postfix(top1=f"{100 * totals[0].item() / max(totals[3].item(), 1):.2f}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        bar.close()
        model.train(was_training)
    seconds = time.perf_counter() - start
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    correct1, correct5, loss_sum, count, skipped_count = totals.tolist()
    count = int(count)
    nan = math.nan
    return EvalResult(
        top1=100 * correct1 / count if count else nan,
        top5=100 * correct5 / count if count else nan,
        loss=loss_sum / count if count else nan,
        images=count,
        skipped=int(skipped_count),
        seconds=seconds,
        images_per_second=count / seconds if seconds > 0 else nan,
    )

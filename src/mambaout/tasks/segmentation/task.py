"""UperNet semantic segmentation as a task of the one training engine (`engine.loop.fit`), with the MambaOut paper's
ADE20K recipe (mmseg's UperNet 160k schedule) as defaults, and evaluation of a trained checkpoint.

The recipe: AdamW, lr 1e-4 at a global batch of 16 (scaled linearly), weight decay 0.01 (none on norms, biases and
position embeddings), 160k iterations of a poly schedule (power 1.0, down to 0) whose first 1,500 iterations ramp up
linearly from 1e-6 of it (mmcv's warmup multiplies the poly value), 512x512 crops (see `data.segmentation`),
per-backbone drop path, auxiliary loss 0.4. The schedule counts iterations: an "epoch" here is a block of
`--iters-per-epoch` iterations (mmseg's checkpoint and evaluation interval, 16,000), so checkpoints, evaluation and
`--resume auto` fall every block. BatchNorm in the heads becomes SyncBatchNorm under DDP (on CPU processes, where
torch's SyncBatchNorm does not run, `upernet.CPUSyncBatchNorm`).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from timm.scheduler.scheduler import Scheduler
from torch import nn
from torch.utils.data import Sampler

from ...data.folder import split_skipped
from ...data.segmentation import (
    IGNORE_INDEX,
    EvalTransform,
    SegmentationDataset,
    TrainTransform,
    find_layout,
)
from ...data.sizes import compact_size, height_width, size_name
from ...dense.config import DenseTrainConfig
from ...engine import distributed
from ...engine.config import ConfigError, check_options, checked_size, option
from ...engine.loop import FitResult, fit
from ...engine.task import Batch, IterationSampler, Task, TaskParts
from .inference import MULTI_SCALE_RATIOS, InferenceSettings, evaluate_segmentation, load_segmenter
from .metrics import SegmentationMetrics
from .upernet import convert_sync_batchnorm, create_segmenter


@dataclass
class SegmentationConfig(DenseTrainConfig):
    """UperNet on a registered backbone, with the paper's ADE20K recipe (mmseg's UperNet 160k) as defaults."""

    eval_metrics: ClassVar[tuple[str, ...]] = ("mIoU", "mAcc", "aAcc")

    data_dir: str = option("", "dataset root: ADE20K's layout (images/, annotations/) or the generic one "
                               "(classes.txt, <split>/images, <split>/labels)")
    train_split: str | None = option(None, "training split (default: training for ADE20K, train for generic)")
    val_split: str | None = option(None, "validation split (default: validation / val; '' to skip validation)")
    reduce_zero_label: bool | None = option(
        None, "label 0 is 'other' (ignored), the rest shift down by one (default: on for ADE20K's layout, off for "
        "the generic one)"
    )
    # model
    channels: int = option(512, "UperNet head channels")
    aux_channels: int = option(256, "auxiliary FCN head channels")
    aux_weight: float = option(0.4, "auxiliary loss weight")
    dropout: float = option(0.1, "dropout before the classifiers")
    # schedule (iterations)
    iterations: int = option(160_000, "optimizer steps in all")
    iters_per_epoch: int = option(16_000, "optimizer steps between checkpoints and evaluations (an 'epoch')")
    warmup_iters: int = option(1500, "linear warmup steps")
    warmup_ratio: float = option(1e-6, "learning rate at the start of warmup, as a fraction of the schedule's")
    poly_power: float = option(1.0, "power of the poly schedule")
    min_lr: float = option(0.0, "learning rate at the end of the poly schedule")
    epochs: int = option(1, "not used: the run is --iterations long, in blocks of --iters-per-epoch")
    # data
    img_scale: list[int] = option((2048, 512), "training/test scale (long, short side) before the random ratio",
                                  nargs=2)
    ratio_range: list[float] = option((0.5, 2.0), "random resize ratio range of --img-scale", nargs=2)
    crop_size: int | list[int] = option(512, "training crop (and sliding-window) size: one number (a square) or H W "
                                        "(mmseg's crop_size)", image_size=True)
    cat_max_ratio: float = option(0.75, "largest share of one class in a training crop (10 redraws)")
    flip_prob: float = option(0.5, "horizontal flip probability")
    photometric: bool = option(True, "mmseg's PhotoMetricDistortion (brightness, contrast, saturation, hue)")
    eval_mode: str = option("whole", "validation inference: whole or slide")
    eval_stride: int | list[int] | None = option(None, "sliding-window stride: one number or H W (default: 2/3 of "
                                                 "--crop-size, mmseg's 341 for 512)", image_size=True)
    # recipe values of the shared options
    batch_size: int = option(16, "batch per process (global batch = batch-size x grad-accum-steps x processes)")
    val_batch_size: int | None = option(1, "validation images per loader batch (each is segmented on its own)")
    weight_decay: float = option(0.01, "weight decay (not on norms, biases and position embeddings)")
    output: str = option("output/segment", "parent folder of the run folders")
    eval_metric: str = option("mIoU", "validation metric that picks best.pth (mIoU, mAcc or aAcc)")

    def __post_init__(self) -> None:
        self.crop_size = checked_size(self.crop_size, "--crop-size")
        crop = height_width(self.crop_size)
        if self.eval_stride is None:
            self.eval_stride = compact_size([side * 2 // 3 for side in crop])
        self.eval_stride = checked_size(self.eval_stride, "--eval-stride")
        checks = [
            (self.iterations >= 1, "--iterations must be at least 1"),
            (self.iters_per_epoch >= 1, "--iters-per-epoch must be at least 1"),
            (0 <= self.warmup_iters < self.iterations, "--warmup-iters must be in [0, --iterations)"),
            (self.eval_mode in ("whole", "slide"), f"--eval-mode must be whole or slide, not {self.eval_mode!r}"),
            (all(step <= side for step, side in zip(height_width(self.eval_stride), crop)),
             "--eval-stride must be in 1..--crop-size (H and W)"),
            (min(self.img_scale) >= 1, "--img-scale must be positive"),
            (0 < self.ratio_range[0] <= self.ratio_range[1], "--ratio-range must be two increasing positive values"),
            (0 <= self.dropout < 1, "--dropout must be in [0, 1)"),
        ]
        check_options(checks)
        super().__post_init__()


def train_segmenter(config: SegmentationConfig) -> FitResult:
    """Train UperNet on `config.data_dir` (every process of a torchrun job calls this)."""
    return fit(SegmentationTask(config))


class PolyWarmupScheduler(Scheduler):
    """mmcv's poly learning rate with linear warmup, per optimizer update: lr(t) = (base - min) (1 - t / T)^power
    + min, multiplied during the first `warmup_t` updates by 1 - (1 - t / warmup_t)(1 - warmup_ratio)."""

    def __init__(self, optimizer: torch.optim.Optimizer, t_total: int, power: float = 1.0, lr_min: float = 0.0,
                 warmup_t: int = 0, warmup_ratio: float = 1e-6) -> None:
        super().__init__(optimizer, param_group_field="lr", t_in_epochs=False)
        self.t_total, self.power, self.lr_min = t_total, power, lr_min
        self.warmup_t, self.warmup_ratio = warmup_t, warmup_ratio
        self.update_groups(self._get_lr(0))

    def _get_lr(self, t: int) -> list[float]:
        progress = min(t, self.t_total) / self.t_total
        factor = 1.0
        if t < self.warmup_t:
            factor = 1 - (1 - t / self.warmup_t) * (1 - self.warmup_ratio)
        return [((base - self.lr_min) * (1 - progress) ** self.power + self.lr_min) * factor
                for base in self.base_values]


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mmseg's CrossEntropyLoss (avg_non_ignore=False): ignored pixels count as 0 in the mean over all pixels."""
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none").mean()


class SegmentationTask(Task):
    config_class = SegmentationConfig
    config: SegmentationConfig

    def build(self, env: distributed.Distributed) -> TaskParts:
        config = self.config
        layout = find_layout(config.data_dir)
        train_split = config.train_split or layout.train_split
        val_split = layout.val_split if config.val_split is None else config.val_split
        transform = TrainTransform(tuple(config.img_scale), tuple(config.ratio_range), config.crop_size,
                                   config.cat_max_ratio, config.flip_prob, config.photometric)
        train_set = SegmentationDataset(layout, train_split, transform, config.reduce_zero_label)
        val_set = None
        if val_split:
            val_set = SegmentationDataset(layout, val_split, EvalTransform(), config.reduce_zero_label)
        self.class_names = list(layout.class_names)
        self.reduce_zero_label = train_set.reduce_zero_label
        model = create_segmenter(
            config.backbone,
            len(self.class_names),
            pretrained=config.pretrained,
            checkpoint=config.initial_checkpoint,
            drop_path_rate=config.resolved_drop_path(),
            channels=config.channels,
            aux_channels=config.aux_channels,
            dropout=config.dropout,
        )
        if env.enabled:  # the heads' BatchNorm normalizes over the global batch, as with one process
            model = convert_sync_batchnorm(model, env.device)
        self.settings = InferenceSettings(config.eval_mode, tuple(config.img_scale), crop_size=config.crop_size,
                                          stride=config.eval_stride)
        skipped = list(train_set.skipped) + (list(val_set.skipped) if val_set is not None else [])
        self.val_scan_skipped = len(val_set.skipped) if val_set is not None else 0
        return TaskParts(model, train_set, val_set, collate_train, skipped, collate_eval)

    def train_sampler(self, dataset: Any, env: distributed.Distributed) -> Sampler:
        samples = self._steps_per_epoch() * self.config.batch_size * self.config.grad_accum_steps
        return IterationSampler(len(dataset), samples, self.config.seed, env.rank, env.world_size)

    def _steps_per_epoch(self) -> int:
        return min(self.config.iters_per_epoch, self.config.iterations)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logits, aux_logits = model(batch.inputs, with_aux=True)
        decode = segmentation_loss(logits, batch.targets)
        aux = segmentation_loss(aux_logits, batch.targets)
        return decode + self.config.aux_weight * aux, {"decode": decode.item(), "aux": aux.item()}

    def evaluate(self, model: nn.Module, loader: Any, env: distributed.Distributed, amp_dtype: torch.dtype | None,
                 progress: bool) -> dict[str, float]:
        metrics, skipped = evaluate_segmentation(model, loader, len(self.class_names), self.settings, env.device,
                                                 amp_dtype, progress, self.class_names)
        return {f"val_{k}": v for k, v in metrics.summary().items()} | {"val_skipped": skipped + self.val_scan_skipped}

    def schedule(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> tuple[Scheduler, int]:
        config = self.config
        scheduler = PolyWarmupScheduler(optimizer, config.iterations, config.poly_power, config.min_lr,
                                        config.warmup_iters, config.warmup_ratio)
        return scheduler, math.ceil(config.iterations / steps_per_epoch)

    def experiment_name(self) -> str:
        return f"upernet-{self.config.backbone}-{size_name(self.config.crop_size)}"

    def checkpoint_meta(self) -> dict[str, Any]:
        config = self.config
        return {"segmenter": {
            "backbone": config.backbone,
            "class_names": self.class_names,
            "channels": config.channels,
            "aux_channels": config.aux_channels,
            "img_scale": list(config.img_scale),
            "crop_size": config.crop_size,
            "stride": config.eval_stride,
            "reduce_zero_label": self.reduce_zero_label,
        }}

    def describe(self, parts: TaskParts) -> str:
        return (f"UperNet on {self.config.backbone}: {len(parts.train_set)} training images, "
                f"{len(self.class_names)} classes")


def collate_train(samples: list) -> Batch:
    good, skipped = split_skipped(samples)
    if not good:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), 0, skipped)
    images = torch.stack([image for image, _ in good])
    labels = torch.stack([label for _, label in good])
    return Batch(images, labels, len(good), skipped)


def collate_eval(samples: list) -> Batch:
    """Images of any size: lists, segmented one at a time."""
    good, skipped = split_skipped(samples)
    return Batch([image for image, _ in good], [label for _, label in good], len(good), skipped)


# ---- evaluating a trained checkpoint (segment-eval)


@dataclass
class EvaluationReport:
    metrics: SegmentationMetrics
    images: int
    skipped: int
    settings: InferenceSettings
    main_process: bool = True  # rank 0 of a torchrun job (every rank holds the same numbers; one prints them)

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "skipped": self.skipped, **self.metrics.summary(),
                "class_iou": self.metrics.class_iou}

    def format(self) -> str:
        how = f"{self.settings.mode}, {'multi-scale' if len(self.settings.ratios) > 1 else 'single-scale'}"
        how += ", flip" if self.settings.flip else ""
        skipped = f", {self.skipped} skipped" if self.skipped else ""
        return f"{self.metrics.format()}\n({self.images} images{skipped}; {how})"


def evaluate_checkpoint(
    data_dir: str | os.PathLike,
    checkpoint: str | os.PathLike,
    mode: str = "whole",
    multi_scale: bool = False,
    flip: bool = False,
    split: str | None = None,
    device: str | None = None,
    workers: int = 2,
    amp: str | None = None,
    use_ema: bool = False,
) -> EvaluationReport:
    """mIoU of a `segment-train` checkpoint on a split (every process of a torchrun job calls this)."""
    from ...engine.inference import PRECISIONS

    model, meta = load_segmenter(checkpoint, use_ema=use_ema)
    layout = find_layout(data_dir)
    if list(layout.class_names) != list(meta["class_names"]):
        raise ConfigError(f"{os.fspath(checkpoint)!r} was trained on {len(meta['class_names'])} classes that differ "
                          f"from the {len(layout.class_names)} of {os.fspath(data_dir)!r}")
    dataset = SegmentationDataset(layout, split or layout.val_split, EvalTransform(), meta["reduce_zero_label"])
    settings = InferenceSettings(mode, tuple(meta["img_scale"]), MULTI_SCALE_RATIOS if multi_scale else (1.0,), flip,
                                 meta["crop_size"], meta["stride"])
    with distributed.processes(device) as env:
        loader = distributed.shard_loader(dataset, env, 1, workers, collate_eval)
        metrics, skipped = evaluate_segmentation(
            model.to(env.device), loader, len(layout.class_names), settings, env.device,
            PRECISIONS[amp] if amp else None, env.is_main and sys.stderr.isatty(), layout.class_names,
        )
    return EvaluationReport(metrics, len(dataset) - skipped, skipped + len(dataset.skipped), settings, env.is_main)

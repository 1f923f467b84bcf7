"""Mask R-CNN detection and instance segmentation as a task of the one training engine (`engine.loop.fit`), with
the MambaOut paper's COCO recipe (mmdetection's Mask R-CNN 1x) as defaults, and evaluation of a trained checkpoint.

The recipe: AdamW, lr 1e-4 at a global batch of 16 (8 processes x 2 images; other batches scale the lr linearly),
weight decay 0.05 (none on norms, biases and position embeddings), 12 epochs with the lr x0.1 after epochs 8 and 11,
a linear warmup over the first 1,000 iterations from 0.001 of the lr, images rescaled to short side 800 / long side
at most 1333 (`--img-scale 1333 800`, done by the model's torchvision transform, which also maps predictions back to
the original image), horizontal flip 0.5, per-backbone drop path (`ModelSpec.dense`), no layer-wise
lr decay. The RPN keeps 1,000 proposals per image after NMS in training and testing, as mmdetection's config does.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from timm.scheduler import MultiStepLRScheduler
from timm.scheduler.scheduler import Scheduler
from torch import nn

from ...data.folder import split_skipped
from ...dense.config import DenseTrainConfig
from ...engine import distributed
from ...engine.config import check_options, option
from ...engine.loop import FitResult, fit
from ...engine.task import Batch, Task, TaskParts
from .model import create_detector, load_detector

if TYPE_CHECKING:
    from .coco_eval import DetectionEvaluation

# COCO data and evaluation need pycocotools (the `dense` extra): they are imported where used, so that the CLI
# starts without it

log = logging.getLogger("mambaout")


@dataclass
class DetectionConfig(DenseTrainConfig):
    """Mask R-CNN + FPN on a registered backbone, with the paper's COCO recipe (mmdetection's Mask R-CNN 1x)."""

    eval_metrics: ClassVar[tuple[str, ...]] = ("bbox_mAP", "segm_mAP", "bbox_mAP_50", "segm_mAP_50")

    data_dir: str = option("", "dataset root in COCO's layout: annotations/instances_<split>.json, images in <split>/")
    initial_checkpoint: str | None = option(None, "classification weights for the backbone (any layout it reads)")
    train_split: str | None = option(None, "training split (default: train2017, else train)")
    val_split: str | None = option(None, "validation split (default: val2017, else val; '' to skip validation)")
    # model
    img_scale: list[int] = option((1333, 800), "image rescale: long side at most, short side", nargs=2)
    fpn_channels: int = option(256, "FPN channels")
    box_head_dim: int = option(1024, "width of the box head's two fully connected layers")
    mask_head_channels: int = option(256, "channels of the mask head's four convolutions")
    rpn_post_nms_train: int = option(1000, "proposals per image after the RPN's NMS in training")
    rpn_post_nms_test: int = option(1000, "proposals per image after the RPN's NMS in evaluation")
    rpn_batch_size_per_image: int = option(256, "anchors sampled per image for the RPN loss")
    box_batch_size_per_image: int = option(512, "proposals sampled per image for the box and mask losses")
    detections_per_image: int = option(100, "most detections kept per image")
    score_threshold: float = option(0.05, "lowest score of a kept detection (evaluation)")
    # schedule
    epochs: int = option(12, "training epochs")
    lr_steps: list[int] = option((8, 11), "epochs after which the lr is multiplied by --lr-decay", nargs="+")
    lr_decay: float = option(0.1, "lr factor at each of --lr-steps")
    warmup_iters: int = option(1000, "linear warmup iterations (optimizer steps)")
    warmup_ratio: float = option(0.001, "lr at the start of warmup, as a fraction of the lr")
    hflip: float = option(0.5, "horizontal flip probability")
    # recipe values of the shared options
    batch_size: int = option(2, "images per process (global batch = batch-size x grad-accum-steps x processes)")
    val_batch_size: int | None = option(2, "validation images per process and batch")
    weight_decay: float = option(0.05, "weight decay (not on norms, biases and position embeddings)")
    output: str = option("output/detect", "parent folder of the run folders")
    eval_metric: str = option("bbox_mAP", "validation metric that picks best.pth (bbox_mAP, segm_mAP, ..._50)")

    def __post_init__(self) -> None:
        checks = [
            (min(self.img_scale) >= 16, "--img-scale must be two sides of at least 16 pixels (long, short)"),
            (self.warmup_iters >= 0, "--warmup-iters must be 0 or more"),
            (0 < self.warmup_ratio <= 1, "--warmup-ratio must be in (0, 1]"),
            (list(self.lr_steps) == sorted(self.lr_steps), "--lr-steps must be increasing epochs"),
            (0 <= self.hflip <= 1, "--hflip must be in [0, 1]"),
            (0 <= self.score_threshold < 1, "--score-threshold must be in [0, 1)"),
            (min(self.fpn_channels, self.box_head_dim, self.mask_head_channels) >= 1, "head widths must be positive"),
        ]
        check_options(checks)
        super().__post_init__()

    def architecture(self) -> dict[str, int]:
        """What a checkpoint needs to rebuild the same detector."""
        return {"fpn_channels": self.fpn_channels, "box_head_dim": self.box_head_dim,
                "mask_head_channels": self.mask_head_channels}

    def inference_options(self) -> dict[str, Any]:
        """torchvision MaskRCNN options that do not change the weights."""
        return {
            "rpn_post_nms_top_n_train": self.rpn_post_nms_train,
            "rpn_post_nms_top_n_test": self.rpn_post_nms_test,
            "rpn_batch_size_per_image": self.rpn_batch_size_per_image,
            "box_batch_size_per_image": self.box_batch_size_per_image,
            "box_detections_per_img": self.detections_per_image,
            "box_score_thresh": self.score_threshold,
        }


def train_detector(config: DetectionConfig) -> FitResult:
    """Train Mask R-CNN on `config.data_dir` (every process of a torchrun job calls this)."""
    return fit(DetectionTask(config))


def multistep_warmup_scheduler(optimizer: torch.optim.Optimizer, steps_per_epoch: int, lr_steps: list[int],
                               decay: float, warmup_iters: int, warmup_ratio: float) -> Scheduler:
    """mmcv's step policy by epoch with linear warmup by iteration, as timm's scheduler stepped per update."""
    lr = optimizer.param_groups[0]["lr"]
    # timm applies milestone m from update m - 1 on; the lr of update t must drop once t reaches epoch * steps
    decay_t = [epoch * steps_per_epoch + 1 for epoch in lr_steps]
    return MultiStepLRScheduler(optimizer, decay_t=decay_t, decay_rate=decay, warmup_t=warmup_iters,
                                warmup_lr_init=lr * warmup_ratio, warmup_prefix=False, t_in_epochs=False)


class DetectionTask(Task):
    config_class = DetectionConfig
    config: DetectionConfig

    def build(self, env: distributed.Distributed) -> TaskParts:
        from ...data.coco import VAL_SPLITS, CocoInstances, default_split, require_split

        config = self.config
        train_split = require_split(config.data_dir, config.train_split, "train")
        train_set = CocoInstances(config.data_dir, train_split, training=True, hflip=config.hflip)
        val_set = None
        val_split = config.val_split if config.val_split is not None else default_split(config.data_dir, VAL_SPLITS)
        if val_split:
            require_split(config.data_dir, val_split, "val")
            val_set = CocoInstances(config.data_dir, val_split, training=False, category_ids=train_set.category_ids)
        elif env.is_main:
            log.info("no validation split in %s: training without evaluation", config.data_dir)
        self.class_names, self.category_ids = train_set.class_names, train_set.category_ids
        self.val_set = val_set
        long_side, short_side = config.img_scale
        model = create_detector(
            config.backbone,
            len(self.class_names),
            pretrained_backbone=config.pretrained,
            backbone_checkpoint=config.initial_checkpoint,
            drop_path_rate=config.resolved_drop_path(),
            min_size=short_side,
            max_size=long_side,
            **config.architecture(),
            **config.inference_options(),
        )
        return TaskParts(model, train_set, val_set, collate_train, [], collate_eval)

    def prepare(self, batch: Batch) -> Batch:
        images = [image.float().div_(255) for image in batch.inputs]
        return Batch(images, batch.targets, batch.size, batch.skipped)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        losses = model(batch.inputs, batch.targets)
        total = sum(losses.values())
        return total, {name.removeprefix("loss_"): value.item() for name, value in losses.items()}

    def evaluate(self, model: nn.Module, loader: Any, env: distributed.Distributed, amp_dtype: torch.dtype | None,
                 progress: bool) -> dict[str, float]:
        from .coco_eval import evaluate_detector

        result = evaluate_detector(model, loader, self.val_set.coco, self.category_ids, env, amp_dtype, progress)
        return {f"val_{key}": value for key, value in result.metrics.items()} | {"val_skipped": len(result.skipped)}

    def schedule(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> tuple[Scheduler, int]:
        config = self.config
        scheduler = multistep_warmup_scheduler(optimizer, steps_per_epoch, list(config.lr_steps), config.lr_decay,
                                               config.warmup_iters, config.warmup_ratio)
        return scheduler, config.epochs

    def experiment_name(self) -> str:
        long_side, short_side = self.config.img_scale
        return f"maskrcnn-{self.config.backbone}-{long_side}x{short_side}"

    def checkpoint_meta(self) -> dict[str, Any]:
        config = self.config
        return {"detector": {
            "backbone": config.backbone,
            "class_names": list(self.class_names),
            "category_ids": list(self.category_ids),
            "img_scale": list(config.img_scale),
            "architecture": config.architecture(),
            "inference": config.inference_options(),
        }}

    def describe(self, parts: TaskParts) -> str:
        return (f"Mask R-CNN on {self.config.backbone}: {len(parts.train_set)} training images, "
                f"{len(self.class_names)} classes")


def collate_train(samples: list) -> Batch:
    """Images of any size as lists (the model's transform batches them); targets in torchvision's format."""
    good, skipped = split_skipped(samples)
    targets = [{"boxes": s.boxes, "labels": s.labels, "masks": s.masks} for s in good]
    return Batch([s.image for s in good], targets, len(good), skipped)


def collate_eval(samples: list) -> Batch:
    good, skipped = split_skipped(samples)
    return Batch([s.image for s in good], [s.image_id for s in good], len(good), skipped)


# ---- evaluating a trained checkpoint (detect-eval)


@dataclass
class EvaluationReport:
    evaluation: DetectionEvaluation
    split: str
    files: list[Path]

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.evaluation.images, "skipped": [s.path for s in self.evaluation.skipped],
                **self.evaluation.metrics}

    def format(self) -> str:
        m = self.evaluation.metrics
        lines = [f"{kind:>4}: AP {m[f'{kind}_mAP']:.3f}  AP50 {m[f'{kind}_mAP_50']:.3f}  AP75 {m[f'{kind}_mAP_75']:.3f}"
                 f"  APs {m[f'{kind}_mAP_s']:.3f}  APm {m[f'{kind}_mAP_m']:.3f}  APl {m[f'{kind}_mAP_l']:.3f}"
                 for kind in ("bbox", "segm")]
        skipped = self.evaluation.skipped
        lines.append(f"({self.evaluation.images} images of {self.split}"
                     + (f"; {len(skipped)} unreadable skipped: " + ", ".join(s.path for s in skipped[:5]) if skipped
                        else "") + ")")
        if self.files:
            lines.append("results: " + ", ".join(str(p) for p in self.files))
        return "\n".join(lines)


def evaluate_checkpoint(
    data_dir: str | os.PathLike,
    checkpoint: str | os.PathLike,
    split: str | None = None,
    out: str | os.PathLike | None = None,
    device: str | None = None,
    workers: int = 2,
    batch_size: int = 2,
    amp: str | None = None,
    use_ema: bool = False,
) -> EvaluationReport:
    """COCO AP of a `detect-train` checkpoint on a split (every process of a torchrun job calls this); with `out`,
    rank 0 writes the detections in COCO's results format (results.bbox.json, results.segm.json) and metrics.json."""
    from ...data.coco import CocoInstances, require_split
    from ...engine.inference import PRECISIONS
    from .coco_eval import evaluate_detector

    model, meta = load_detector(checkpoint, use_ema=use_ema)
    split = require_split(data_dir, split, "val")
    dataset = CocoInstances(data_dir, split, training=False, category_ids=meta["category_ids"])
    with distributed.processes(device) as env:
        loader = distributed.shard_loader(dataset, env, batch_size, workers, collate_eval)
        progress = env.is_main and sys.stderr.isatty()
        evaluation = evaluate_detector(model.to(env.device), loader, dataset.coco, meta["category_ids"], env,
                                       PRECISIONS[amp] if amp else None, progress)
        files: list[Path] = []
        if out is not None and env.is_main:
            folder = Path(out)
            folder.mkdir(parents=True, exist_ok=True)
            for iou_type, detections in evaluation.results.items():
                files.append(folder / f"results.{iou_type}.json")
                files[-1].write_text(json.dumps(detections), encoding="utf-8")
            files.append(folder / "metrics.json")
            files[-1].write_text(json.dumps(evaluation.metrics, indent=2), encoding="utf-8")
    return EvaluationReport(evaluation, split, files)

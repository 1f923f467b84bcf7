"""Image classification as a task of the one training engine (`engine.loop`): folder data, timm's transforms,
Mixup/CutMix and losses, top-1/top-5 validation, each model's official recipe (`TrainConfig`, `mambaout.recipes`)."""

from __future__ import annotations

from typing import Any

import torch
from timm.data import Mixup, create_transform, resolve_data_config
from timm.data.distributed_sampler import RepeatAugSampler
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.utils.data import Sampler

from ...data.augment import harden
from ...data.folder import FolderDataset, collate_skipping
from ...data.local_mamba_augment import is_local_mamba_policy, local_mamba_train_transform
from ...data.sizes import height_width, size_name
from ...engine import distributed
from ...engine.config import ConfigError
from ...engine.loop import FitResult, fit
from ...engine.schedules import StaircaseWarmupCosine
from ...engine.task import Batch, Task, TaskParts
from ...factory import create_model
from .config import TrainConfig
from .evaluate import evaluate


def train(config: TrainConfig) -> FitResult:
    """Train `config.model` on the folder dataset `config.data_dir` (all processes of a torchrun job call this)."""
    return fit(ClassificationTask(config))


class ClassificationTask(Task):
    config_class = TrainConfig
    config: TrainConfig

    def build(self, env: distributed.Distributed) -> TaskParts:
        config = self.config
        train_set = FolderDataset(config.data_dir, config.train_split)
        num_classes = config.num_classes or len(train_set.classes)
        if num_classes < len(train_set.classes):
            raise ConfigError(f"--num-classes {num_classes} is fewer than the {len(train_set.classes)} class folders")
        self.world_size = env.world_size
        model = self.build_model(num_classes)
        self.data_config = resolve_data_config(
            {"input_size": (3, *height_width(config.img_size))} if config.img_size else {}, model=model
        )
        train_set.transform = _train_transform(config, self.data_config)
        self.val_set = None
        if config.val_split:
            self.val_set = FolderDataset(
                config.data_dir,
                config.val_split,
                create_transform(**self.data_config),
                classes=train_set.classes,
                classes_from=f"the {config.train_split} split",
            )
        self.class_names = train_set.classes
        self.build_loss(num_classes)
        return TaskParts(model, train_set, self.val_set, _collate, list(train_set.skipped), collate_skipping)

    def build_model(self, num_classes: int) -> nn.Module:
        """The model as the recipe sets it up (drop path, head dropout), with the run's starting weights."""
        config = self.config
        model_options: dict[str, Any] = {"drop_rate": config.drop} if config.drop else {}
        return create_model(config.model, pretrained=config.pretrained, checkpoint=config.initial_checkpoint,
                            num_classes=num_classes, drop_path_rate=config.drop_path, **model_options)

    def build_loss(self, num_classes: int) -> None:
        """The recipe's Mixup/CutMix (`self.mixup`, None when off) and training loss (`self.loss_fn`)."""
        self.mixup = _mixup(self.config, num_classes)
        self.loss_fn = _train_loss(self.config, self.mixup)

    def prepare(self, batch: Batch) -> Batch:
        images, targets = batch.inputs, batch.targets
        if self.mixup is not None and len(images) % 2:  # timm's batch mixup pairs images up
            images, targets = images[:-1], targets[:-1]
        if self.mixup is not None and len(images):
            images, targets = self.mixup(images, targets)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return Batch(images, targets, len(images), batch.skipped)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_fn(model(batch.inputs), batch.targets), {}

    def evaluate(self, model: nn.Module, loader: Any, env: distributed.Distributed, amp_dtype: torch.dtype | None,
                 progress: bool) -> dict[str, float]:
        result = evaluate(model, loader, env.device, amp_dtype=amp_dtype, progress=progress, desc="val")
        return {
            "val_loss": result.loss,
            "val_top1": result.top1,
            "val_top5": result.top5,
            "val_skipped": result.skipped + len(self.val_set.skipped),
        }

    def schedule(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
        """timm's scheduler; `epochs` counts a prefix warmup in (timm's num_epochs does not), so a recipe's 300 epochs
        are 300 whether its warmup is a prefix (Swin/VMamba) or the schedule's start (timm, DeiT)."""
        config = self.config
        warmup_lr, min_lr = config.resolved_min_lrs(self.world_size)
        if config.warmup_staircase:
            scheduler = StaircaseWarmupCosine(optimizer, epochs=config.epochs, warmup_epochs=config.warmup_epochs,
                                              steps_per_epoch=steps_per_epoch, lr_min=min_lr,
                                              warmup_lr_init=warmup_lr)
            return scheduler, config.epochs + config.cooldown_epochs
        return create_scheduler_v2(
            optimizer,
            sched=config.sched,
            num_epochs=config.epochs - (config.warmup_epochs if config.warmup_prefix else 0),
            cooldown_epochs=config.cooldown_epochs,
            min_lr=min_lr,
            warmup_lr=warmup_lr,
            warmup_epochs=config.warmup_epochs,
            warmup_prefix=config.warmup_prefix,
            step_on_epochs=not config.sched_on_updates,
            updates_per_epoch=steps_per_epoch,
        )

    def train_sampler(self, dataset: Any, env: distributed.Distributed) -> Sampler:
        """DeiT's repeated-augmentation sampler (timm's RepeatAugSampler) when the recipe repeats, else the default.

        Its epoch is DeiT's: len(dataset) // 256 * 256 / processes samples per process (each drawn image appears
        `aug_repeats` times, on different processes), the order a function of the epoch alone, as in DeiT."""
        if not self.config.aug_repeats:
            return super().train_sampler(dataset, env)
        return RepeatAugSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                num_repeats=self.config.aug_repeats)

    def on_epoch_start(self, epoch: int) -> None:
        if self.mixup is not None and self.config.mixup_off_epoch and epoch >= self.config.mixup_off_epoch:
            self.mixup.mixup_enabled = False

    def experiment_name(self) -> str:
        """Model and input size, so that rerunning the same command with --resume auto finds the same folder."""
        return f"{self.config.model}-{size_name(self.data_config['input_size'][1:])}"

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"model_name": self.config.model, "class_names": self.class_names}

    def describe(self, parts: TaskParts) -> str:
        return f"training {self.config.model} on {len(parts.train_set)} images, {len(self.class_names)} classes"


def _collate(samples: list) -> Batch:
    images, targets, skipped = collate_skipping(samples)
    return Batch(images, targets, len(images), skipped)


def _train_transform(config: TrainConfig, data_config: dict[str, Any]):
    if config.no_aug:
        return create_transform(**data_config)
    if is_local_mamba_policy(config.aa):  # LocalMamba's toolbox pipeline: its own RandAugment ops, exactly
        return local_mamba_train_transform(
            data_config["input_size"], data_config["mean"], data_config["std"],
            interpolation=config.train_interpolation, auto_augment=config.aa, color_jitter=config.color_jitter,
            re_prob=config.reprob, re_mode=config.remode,
        )
    return harden(create_transform(
        data_config["input_size"],
        is_training=True,
        scale=tuple(config.scale),
        ratio=tuple(config.ratio),
        hflip=config.hflip,
        color_jitter=config.color_jitter,
        auto_augment=config.aa,
        interpolation=config.train_interpolation,
        mean=data_config["mean"],
        std=data_config["std"],
        re_prob=config.reprob,
        re_mode=config.remode,
        re_count=config.recount,
    ))


def _mixup(config: TrainConfig, num_classes: int) -> Mixup | None:
    if config.no_aug or (config.mixup <= 0 and config.cutmix <= 0):
        return None
    if config.batch_size % 2:
        raise ConfigError("mixup/cutmix pair images within a batch: use an even --batch-size or --mixup 0 --cutmix 0")
    return Mixup(
        mixup_alpha=config.mixup,
        cutmix_alpha=config.cutmix,
        prob=config.mixup_prob,
        switch_prob=config.mixup_switch_prob,
        mode=config.mixup_mode,
        label_smoothing=config.smoothing,
        num_classes=num_classes,
    )


def _train_loss(config: TrainConfig, mixup: Mixup | None) -> nn.Module:
    if mixup is not None:  # mixup's soft targets already carry the label smoothing
        return SoftTargetCrossEntropy()
    if config.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=config.smoothing)
    return nn.CrossEntropyLoss()

"""The training loop: one process per device under `torchrun` (or a single process), readable top to bottom.

Data, optimizer, schedule, EMA and losses come from timm; the loop, checkpointing and resume are ours. Exact
resume: the data order is a function of (seed, epoch) (DistributedSampler.set_epoch) and every process's random
states are saved with each checkpoint, so a run killed at any point and resumed from its last checkpoint repeats
the interrupted epoch exactly and ends with the same weights as an uninterrupted run (on the same machine, with
deterministic kernels: CPU, or --deterministic).
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.data import Mixup, create_transform, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, random_seed
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ..data.folder import FolderDataset, SkipLog, collate_skipping
from ..errors import TrainingDivergedError
from ..factory import create_model
from . import distributed
from .checkpointing import (
    CheckpointKeeper,
    capture_rng,
    find_resume_checkpoint,
    has_checkpoints,
    load_training_checkpoint,
    restore_rng,
)
from .evaluate import EvalResult, evaluate
from .inference import PRECISIONS
from .run_log import RunLog
from .train_config import ConfigError, TrainConfig

log = logging.getLogger("mambaout")


@dataclass
class TrainResult:
    output_dir: Path
    epochs_run: int
    last_epoch: int
    best_metric: float | None
    best_epoch: int | None
    final: EvalResult | None
    train_images_per_second: float
    checkpoint: Path | None


def train(config: TrainConfig) -> TrainResult:
    """Train `config.model` on the folder dataset `config.data_dir` (all processes of a torchrun job call this)."""
    env = distributed.setup(config.device)
    try:
        return _train(config, env)
    finally:
        distributed.teardown()


def _train(config: TrainConfig, env: distributed.Distributed) -> TrainResult:
    random_seed(config.seed, env.rank)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False

    # ---- model and data
    train_set = FolderDataset(config.data_dir, config.train_split)
    num_classes = config.num_classes or len(train_set.classes)
    if num_classes < len(train_set.classes):
        raise ConfigError(f"--num-classes {num_classes} is fewer than the {len(train_set.classes)} class folders")
    model_options: dict[str, Any] = {"drop_rate": config.drop} if config.drop else {}
    model = create_model(
        config.model,
        pretrained=config.pretrained,
        checkpoint=config.initial_checkpoint,
        num_classes=num_classes,
        drop_path_rate=config.resolved_drop_path(),
        **model_options,
    )
    data_config = resolve_data_config(
        {"input_size": (3, config.img_size, config.img_size)} if config.img_size else {}, model=model
    )
    train_set.transform = _train_transform(config, data_config)
    val_set = None
    if config.val_split:
        val_set = FolderDataset(
            config.data_dir,
            config.val_split,
            create_transform(**data_config),
            classes=train_set.classes,
            classes_from=f"the {config.train_split} split",
        )
    train_loader, val_loader = _loaders(config, env, train_set, val_set)
    micro_steps = len(train_loader) - len(train_loader) % config.grad_accum_steps
    steps_per_epoch = micro_steps // config.grad_accum_steps
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{len(train_set)} training images make no full step of {config.global_batch_size(env.world_size)} "
            "images (batch-size x grad-accum-steps x processes): lower --batch-size"
        )

    model.to(env.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    lr = config.resolved_lr(env.world_size)
    optimizer_options = {k: v for k, v in (("betas", config.opt_betas), ("eps", config.opt_eps)) if v is not None}
    optimizer = create_optimizer_v2(
        model, opt=config.opt, lr=lr, weight_decay=config.weight_decay, momentum=config.momentum, **optimizer_options
    )
    scheduler, total_epochs = create_scheduler_v2(
        optimizer,
        sched=config.sched,
        num_epochs=config.epochs,
        cooldown_epochs=config.cooldown_epochs,
        min_lr=config.min_lr,
        warmup_lr=config.warmup_lr,
        warmup_epochs=config.warmup_epochs,
        step_on_epochs=not config.sched_on_updates,
        updates_per_epoch=steps_per_epoch,
    )
    amp_dtype = PRECISIONS[config.amp] if config.amp else None
    scaler = torch.amp.GradScaler(env.device.type) if config.amp == "fp16" else None
    ema = ModelEmaV3(model, decay=config.model_ema_decay) if config.model_ema else None
    mixup = _mixup(config, num_classes)
    train_loss_fn = _train_loss(config, mixup)

    # ---- output folder and resume
    out = Path(config.output) / (config.experiment or _default_experiment(config, data_config))
    resume_path, state = _find_resume(config, env, out)
    start_epoch, best = 0, {"metric": None, "epoch": None}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None:
            if state.get("model_ema") is None:
                raise ConfigError(f"{resume_path} was trained without --model-ema; its EMA cannot be resumed")
            ema.module.load_state_dict(state["model_ema"])
        rng = state["rng"]
        if len(rng) == env.world_size:
            restore_rng(rng[env.rank])
        else:
            log.warning(
                "resumed with %d processes instead of %d: data order and augmentation differ from an uninterrupted run",
                env.world_size,
                len(rng),
            )
        start_epoch, best = state["epoch"] + 1, state["best"]
        if env.is_main:
            log.info("resumed from %s (epoch %d done)", resume_path, state["epoch"])
    keeper = CheckpointKeeper(out, config.checkpoint_hist)
    run_log = RunLog(out, resumed_epoch=start_epoch - 1 if state is not None else None) if env.is_main else None
    if run_log is not None:
        run_log.write_args({**config.to_dict(), "world_size": env.world_size, "lr_used": lr})

    train_model: nn.Module = model
    if config.compile:
        train_model = torch.compile(train_model)
    if env.enabled:
        train_model = DistributedDataParallel(
            train_model, device_ids=[env.local_rank] if env.device.type == "cuda" else None
        )
    skip_log = SkipLog(train_set.skipped)  # zero-byte files are found while scanning
    if env.is_main:
        log.info(
            "training %s on %d images, %d classes: %d processes x batch %d x %d accumulation = global batch %d, "
            "lr %.3g, %d epochs (%d + %d cooldown), output %s",
            config.model, len(train_set), num_classes, env.world_size, config.batch_size, config.grad_accum_steps,
            config.global_batch_size(env.world_size), lr, total_epochs, config.epochs, config.cooldown_epochs, out,
        )  # fmt: skip

    # ---- epochs
    final: EvalResult | None = None
    rates: list[float] = []
    last_checkpoint: Path | None = resume_path
    for epoch in range(start_epoch, total_epochs):
        train_loader.sampler.set_epoch(epoch)
        if mixup is not None and config.mixup_off_epoch and epoch >= config.mixup_off_epoch:
            mixup.mixup_enabled = False
        started = time.perf_counter()
        train_loss, images = _train_one_epoch(
            epoch, config, env, train_model, model, train_loader, optimizer, scheduler, steps_per_epoch,
            train_loss_fn, mixup, amp_dtype, scaler, ema, skip_log, run_log,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        rates.append(images / seconds)

        row: dict[str, Any] = {"epoch": epoch, "lr": _mean_lr(optimizer), "train_loss": train_loss}
        metric = None
        if val_loader is not None:
            final = evaluate(model, val_loader, env.device, amp_dtype=amp_dtype, progress=_tty(env), desc="val")
            row.update(
                val_loss=final.loss,
                val_top1=final.top1,
                val_top5=final.top5,
                val_skipped=final.skipped + len(val_set.skipped),
            )
            metric = getattr(final, config.eval_metric)
            if ema is not None:
                ema_result = evaluate(ema.module, val_loader, env.device, amp_dtype=amp_dtype, progress=_tty(env),
                                      desc="val (EMA)")  # fmt: skip
                row.update(ema_val_loss=ema_result.loss, ema_val_top1=ema_result.top1, ema_val_top5=ema_result.top5)
                metric = getattr(ema_result, config.eval_metric)  # as the official script: the EMA picks best
        scheduler.step(epoch + 1, metric)
        row.update(train_images_per_second=images / seconds, train_skipped=len(skip_log), seconds=seconds)

        is_best = metric is not None and (
            best["metric"] is None
            or (metric < best["metric"] if config.eval_metric == "loss" else metric > best["metric"])
        )
        if is_best:
            best = {"metric": metric, "epoch": epoch}
        rng_states = distributed.all_gather_object(capture_rng())
        if env.is_main:
            state = {
                "model_name": config.model,
                "class_names": train_set.classes,
                "epoch": epoch,
                "model": model.state_dict(),
                "model_ema": None if ema is None else ema.module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": None if scaler is None else scaler.state_dict(),
                "rng": rng_states,
                "best": best,
                "args": config.to_dict(),
            }
            last_checkpoint = keeper.save(state, epoch, is_best)
            run_log.epoch(row)
            if len(skip_log):
                skip_log.write(out / "skipped.txt")
            log.info(
                "epoch %d: train loss %.4f, %s%.1f images/s%s",
                epoch, train_loss,
                "" if final is None else f"val top-1 {final.top1:.2f}% top-5 {final.top5:.2f}% loss {final.loss:.4f}, ",
                images / seconds,
                f"; {skip_log.summary()}" if len(skip_log) else "",
            )  # fmt: skip
    if run_log is not None:
        run_log.close()
    return TrainResult(
        output_dir=out,
        epochs_run=total_epochs - start_epoch,
        last_epoch=total_epochs - 1,
        best_metric=best["metric"],
        best_epoch=best["epoch"],
        final=final,
        train_images_per_second=float(np.median(rates)) if rates else 0.0,
        checkpoint=last_checkpoint,
    )


def _train_one_epoch(
    epoch, config, env, train_model, model, loader, optimizer, scheduler, steps_per_epoch,
    loss_fn, mixup, amp_dtype, scaler, ema, skip_log, run_log,
) -> tuple[float, int]:  # fmt: skip
    """One epoch of `steps_per_epoch` optimizer steps. Returns (mean loss over all processes, images seen)."""
    train_model.train()
    optimizer.zero_grad(set_to_none=True)
    accum = config.grad_accum_steps
    loss_sum, loss_count, images = 0.0, 0, 0
    progress = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}", disable=not _tty(env), leave=False)
    batches = iter(loader)
    for step in range(steps_per_epoch):
        for micro in range(accum):
            batch_images, targets, skipped = next(batches)
            skip_log.add(skipped)
            if mixup is not None and len(batch_images) % 2:  # timm's batch mixup pairs images up
                batch_images, targets = batch_images[:-1], targets[:-1]
            # every process must run the same forward/backward passes (DDP), so one empty batch skips it everywhere
            if distributed.any_process(len(batch_images) == 0, env.device):
                continue
            batch_images = batch_images.to(env.device, non_blocking=True)
            targets = targets.to(env.device, non_blocking=True)
            if mixup is not None:
                batch_images, targets = mixup(batch_images, targets)
            if config.channels_last:
                batch_images = batch_images.contiguous(memory_format=torch.channels_last)
            sync = micro == accum - 1 or not isinstance(train_model, DistributedDataParallel)
            with contextlib.nullcontext() if sync else train_model.no_sync():
                with torch.autocast(env.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss = loss_fn(train_model(batch_images), targets)
                value = loss.item()
                if distributed.any_process(not math.isfinite(value), env.device):
                    raise TrainingDivergedError(
                        f"the loss became {value} at epoch {epoch}, step {step} (lr {_mean_lr(optimizer):.3g}); "
                        "the last checkpoint is left as it was. Lower --lr, set --clip-grad, or use --amp bf16 "
                        "instead of fp16, then resume with --resume auto"
                    )
                scaled = loss / accum
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            loss_sum += value * len(batch_images)
            loss_count += len(batch_images)
            images += len(batch_images)
        if scaler is not None:
            scaler.unscale_(optimizer)
        if config.clip_grad is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        update = epoch * steps_per_epoch + step + 1
        if ema is not None:
            ema.update(model, step=update)
        scheduler.step_update(update)
        progress.update()
        if loss_count:
            progress.set_postfix(loss=f"{loss_sum / loss_count:.4f}", lr=f"{_mean_lr(optimizer):.2e}")
        if run_log is not None and (step % config.log_interval == 0 or step == steps_per_epoch - 1) and loss_count:
            run_log.scalar("train/loss", loss_sum / loss_count, update)
            run_log.scalar("train/lr", _mean_lr(optimizer), update)
            if not _tty(env):
                log.info("epoch %d step %d/%d: loss %.4f lr %.3e", epoch, step + 1, steps_per_epoch,
                         loss_sum / loss_count, _mean_lr(optimizer))  # fmt: skip
    progress.close()
    total_loss, total_count, total_images = distributed.all_reduce_sum([loss_sum, loss_count, images], env.device)
    return total_loss / max(total_count, 1), int(total_images)


def _train_transform(config: TrainConfig, data_config: dict[str, Any]):
    if config.no_aug:
        return create_transform(**data_config)
    return create_transform(
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
    )


def _loaders(config, env, train_set, val_set) -> tuple[DataLoader, DataLoader | None]:
    # a DistributedSampler even in one process: the order is then a function of (seed, epoch) alone
    sampler = DistributedSampler(
        train_set, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=config.seed, drop_last=True
    )
    common = dict(num_workers=config.workers, collate_fn=collate_skipping, pin_memory=config.pin_mem,
                  persistent_workers=False)  # fmt: skip
    train_loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, drop_last=True, **common)
    val_loader = None
    if val_set is not None:
        val_loader = DataLoader(
            val_set,
            batch_size=config.val_batch_size or config.batch_size,
            sampler=distributed.ShardSampler(len(val_set), env.rank, env.world_size),
            **common,
        )
    return train_loader, val_loader


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
        label_smoothing=config.smoothing,
        num_classes=num_classes,
    )


def _train_loss(config: TrainConfig, mixup: Mixup | None) -> nn.Module:
    if mixup is not None:  # mixup's soft targets already carry the label smoothing
        return SoftTargetCrossEntropy()
    if config.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=config.smoothing)
    return nn.CrossEntropyLoss()


def _find_resume(config: TrainConfig, env, out: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """Rank 0 chooses the checkpoint and every process loads it (a shared filesystem, as torchrun jobs have)."""
    if config.resume is None:
        if env.is_main and has_checkpoints(out):
            raise ConfigError(
                f"{out} already holds checkpoints of an earlier run: pass --resume auto to continue it, or choose "
                "another --experiment / --output"
            )
        return None, None
    if config.resume == "auto":
        found = find_resume_checkpoint(out) if env.is_main else None
        path = distributed.broadcast_object(None if found is None else str(found[0]))
        if path is None:
            if env.is_main:
                log.info("--resume auto: no checkpoint in %s yet, starting from scratch", out)
            return None, None
        return Path(path), found[1] if env.is_main else load_training_checkpoint(path)
    return Path(config.resume), load_training_checkpoint(config.resume)


def _default_experiment(config: TrainConfig, data_config: dict[str, Any]) -> str:
    """Model and input size, so that rerunning the same command with --resume auto finds the same folder."""
    return f"{config.model}-{data_config['input_size'][-1]}"


def _mean_lr(optimizer: torch.optim.Optimizer) -> float:
    return sum(group["lr"] for group in optimizer.param_groups) / len(optimizer.param_groups)


def _tty(env: distributed.Distributed) -> bool:
    return env.is_main and sys.stderr.isatty()

"""Training options with the official MambaOut ImageNet recipe as defaults, and how they are read (CLI, YAML).

The defaults are the official `train.py` and `scripts/train_mambaout_*.sh` of yuweihao/MambaOut: AdamW, lr 4e-3 at
a global batch of 4096, weight decay 0.05, 20 warmup epochs from 1e-6, cosine to 1e-5 over 300 epochs plus timm's
10 cooldown epochs at the minimum (the official script trains 310 epochs in all), RandAugment rand-m9-mstd0.5-inc1,
Mixup 0.8 / CutMix 1.0 switched with probability 0.5, label smoothing 0.1, random erasing 0.25, the per-model drop
path of the official scripts.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from ..data.augment import check_policy

# global batch the official learning rate was tuned for; the lr scales linearly with the actual global batch
BASE_BATCH_SIZE = 4096

# --drop-path of the official training scripts (MambaOut: scripts/train_mambaout_*.sh; DeiT: its paper's 0.1)
OFFICIAL_DROP_PATH = {
    "mambaout_femto": 0.025,
    "mambaout_kobe": 0.025,
    "mambaout_tiny": 0.2,
    "mambaout_small": 0.4,
    "mambaout_base": 0.6,
    "deit_tiny": 0.1,
    "deit_small": 0.1,
    "deit_base": 0.1,
    # hunto/LocalMamba README train command (--drop-path-rate 0.1); ChenhongyiYang/PlainMamba
    # plain_mamba_l*_in1k_300e.py; hustvl/Vim vim/scripts/ft-vim-{t,s}.sh (the "+" fine-tuning: --drop-path 0.0)
    "local_vim_tiny": 0.1,
    "plainmamba_l1": 0.2,
    "plainmamba_l2": 0.2,
    "plainmamba_l3": 0.4,
    "vim_tiny_plus": 0.0,
    "vim_small_plus": 0.0,
}


class ConfigError(ValueError):
    """Training options that do not make sense (bad values, unknown keys in a config file)."""


def option(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class EngineConfig:
    """Options every task's training shares (the engine reads these); tasks subclass it with their recipe."""

    #: global batch the recipe's learning rate was tuned for; the lr scales linearly with the actual global batch
    base_batch_size: ClassVar[int] = BASE_BATCH_SIZE
    #: --drop-path of the official recipe per model (the fallback is `default_drop_path`)
    official_drop_path: ClassVar[dict[str, float]] = OFFICIAL_DROP_PATH
    default_drop_path: ClassVar[float] = 0.1
    #: the metrics --eval-metric may name (the task's evaluate() returns them with a 'val_' prefix)
    eval_metrics: ClassVar[tuple[str, ...]] = ("top1", "top5", "loss")

    data_dir: str = option("", "dataset root")
    workers: int = option(min(8, os.cpu_count() or 1), "data loading processes per training process")
    pin_mem: bool = option(False, "pin host memory in the data loaders (faster host-to-GPU copies)")
    # optimisation
    epochs: int = option(300, "training epochs")
    batch_size: int = option(128, "batch per process (global batch = batch-size x grad-accum-steps x processes)")
    val_batch_size: int | None = option(None, "validation batch per process (default: batch-size)")
    grad_accum_steps: int = option(1, "micro-batches accumulated per optimizer step")
    lr: float | None = option(None, "peak learning rate (default: lr-base scaled by the global batch)")
    lr_base: float = option(4e-3, "learning rate at the recipe's global batch")
    opt: str = option("adamw", "timm optimizer name")
    opt_betas: list[float] | None = option(None, "optimizer betas (default: the optimizer's)", nargs=2)
    opt_eps: float | None = option(None, "optimizer epsilon (default: the optimizer's)")
    momentum: float = option(0.9, "momentum for SGD-like optimizers")
    weight_decay: float = option(0.05, "weight decay (not applied to norms, biases and no_weight_decay() names)")
    clip_grad: float | None = option(None, "clip the gradient norm to this value")
    drop_path: float | None = option(None, "stochastic depth (default: the official recipe's for the model)")
    # EMA, precision, speed
    model_ema: bool = option(False, "keep an exponential moving average of the weights (validated and saved too)")
    model_ema_decay: float = option(0.9998, "EMA decay per optimizer step")
    amp: str | None = option(None, "autocast precision: bf16 or fp16 (fp16 adds a gradient scaler)")
    channels_last: bool = option(False, "channels-last memory format")
    grad_checkpointing: bool = option(False, "recompute block activations in the backward pass (saves memory)")
    compile: bool = option(False, "torch.compile the model")
    device: str | None = option(None, "cpu or cuda (default: cuda when available)")
    # weights
    pretrained: bool = option(False, "start from the release weights (fine-tuning)")
    initial_checkpoint: str | None = option(None, "start from these weights (fine-tuning; any layout the model reads)")
    resume: str | None = option(None, "'auto' (the newest complete checkpoint in the output folder) or a path")
    # output
    output: str = option("output/train", "parent folder of the run folders")
    experiment: str | None = option(None, "run folder name (default: model and input size)")
    checkpoint_hist: int = option(10, "epoch checkpoints kept besides last and best")
    eval_metric: str = option("top1", "validation metric that picks best.pth")
    log_interval: int = option(50, "steps between log lines")
    seed: int = option(42, "random seed (each process adds its rank)")
    deterministic: bool = option(False, "deterministic algorithms (bitwise reproducible runs, slower)")
    max_steps_per_epoch: int | None = option(None, "cap optimizer steps per epoch (quick experiments and tests)")
    transform_failure_limit: float = option(
        0.01, "stop when more than this fraction of the samples drawn in an epoch (and more than 20) failed in a "
        "transform; fewer are skipped and listed in skipped.txt"
    )

    def __post_init__(self) -> None:
        if self.amp in ("", "none", "fp32"):
            self.amp = None
        checks = [
            (self.amp in (None, "bf16", "fp16"), f"--amp must be bf16 or fp16, not {self.amp!r}"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.grad_accum_steps >= 1, "--grad-accum-steps must be at least 1"),
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.eval_metric in self.eval_metrics, f"--eval-metric must be one of {', '.join(self.eval_metrics)}"),
            (self.checkpoint_hist >= 0, "--checkpoint-hist must be 0 or more"),
            (self.workers >= 0, "--workers must be 0 or more"),
            (0 <= (self.drop_path or 0) < 1, "--drop-path must be in [0, 1)"),
            (0 <= self.transform_failure_limit <= 1, "--transform-failure-limit must be in [0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def resolved_drop_path(self, model: str) -> float:
        """--drop-path, else the official recipe's value for the model, else the recipe's default."""
        if self.drop_path is not None:
            return self.drop_path
        return self.official_drop_path.get(model, self.default_drop_path)

    def resolved_lr(self, world_size: int) -> float:
        """--lr, else lr-base x global batch / the recipe's batch (the linear scaling rule)."""
        if self.lr is not None:
            return self.lr
        return self.lr_base * self.global_batch_size(world_size) / self.base_batch_size

    def global_batch_size(self, world_size: int) -> int:
        return self.batch_size * self.grad_accum_steps * world_size

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def fields(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))


@dataclass
class TrainConfig(EngineConfig):
    """Image classification on a folder dataset, with the official MambaOut ImageNet recipe as defaults."""

    data_dir: str = option("", "dataset root holding train/ and val/ with one folder per class (ImageNet's layout)")
    model: str = option("mambaout_femto", "registered model name (`mambaout models`)")
    train_split: str = option("train", "training split folder")
    val_split: str = option("val", "validation split folder ('' to skip validation)")
    img_size: int | None = option(None, "training and validation input size (default: the model's)")
    num_classes: int | None = option(None, "classifier size (default: the number of class folders)")
    epochs: int = option(300, "epochs of the cosine schedule (cooldown epochs come after)")
    cooldown_epochs: int = option(10, "epochs at min-lr after the cosine schedule (timm's; the official run has 10)")
    lr_base: float = option(4e-3, "learning rate at a global batch of 4096")
    warmup_epochs: int = option(20, "linear warmup epochs")
    warmup_lr: float = option(1e-6, "learning rate at the start of warmup")
    min_lr: float = option(1e-5, "learning rate at the end of the cosine schedule")
    sched: str = option("cosine", "timm scheduler name (cosine, step, multistep, plateau, poly, tanh)")
    sched_on_updates: bool = option(False, "step the schedule every optimizer update instead of every epoch")
    # regularisation and augmentation
    drop: float = option(0.0, "dropout before the classifier (head dropout)")
    aa: str | None = option("rand-m9-mstd0.5-inc1", "timm auto-augment policy ('' or none to disable)")
    color_jitter: float = option(0.4, "colour jitter strength (when no auto-augment)")
    scale: list[float] = option((0.08, 1.0), "random-resized-crop scale range", nargs=2)
    ratio: list[float] = option((3 / 4, 4 / 3), "random-resized-crop aspect ratio range", nargs=2)
    hflip: float = option(0.5, "horizontal flip probability")
    train_interpolation: str = option("random", "training resize interpolation")
    reprob: float = option(0.25, "random erasing probability")
    remode: str = option("pixel", "random erasing mode")
    mixup: float = option(0.8, "mixup alpha (0 disables)")
    cutmix: float = option(1.0, "cutmix alpha (0 disables)")
    mixup_prob: float = option(1.0, "probability of applying mixup or cutmix to a batch")
    mixup_switch_prob: float = option(0.5, "probability of cutmix instead of mixup when both are on")
    mixup_off_epoch: int = option(0, "turn mixup/cutmix off from this epoch (0: never)")
    smoothing: float = option(0.1, "label smoothing")
    no_aug: bool = option(False, "no training augmentation at all (resize and center crop only)")
    eval_metric: str = option("top1", "validation metric that picks best.pth (top1, top5 or loss)")

    def __post_init__(self) -> None:
        if self.aa in ("", "none"):
            self.aa = None
        if self.aa is not None and not self.no_aug:
            try:
                check_policy(self.aa)
            except ValueError as e:
                raise ConfigError(str(e)) from e
        super().__post_init__()


def config_fields(config_class: type[EngineConfig] = TrainConfig) -> list[dataclasses.Field]:
    return config_class.fields()


def read_config_file(path: str | os.PathLike, config_class: type[EngineConfig] = TrainConfig) -> dict[str, Any]:
    """Options from a YAML file (keys with - or _ as on the command line); unknown keys are an error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of option: value")
    known = {f.name for f in config_fields(config_class)}
    options = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown options in {str(path)!r}: {', '.join(unknown)}")
    return options

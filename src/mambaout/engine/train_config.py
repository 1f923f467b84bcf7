"""Training options and how they are read (recipe, YAML file, command line).

`EngineConfig` holds what the one engine reads for every task. `TrainConfig` is image classification: each option
left unset (None) takes the value of the run's recipe (`mambaout.recipes`): the model's own official recipe by
default, another model's with `recipe=NAME`. Whatever the user sets is an override, recorded in args.yaml.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from ..data.augment import check_policy
from ..data.local_mamba_augment import check_local_mamba_policy, is_local_mamba_policy
from ..data.sizes import compact_size, height_width
from ..errors import MambaoutError
from ..recipes import Recipe, RecipeReport, get_recipe, plain
from ..registry import get_model_spec, recipe_for
from .weight_decay import RULES

log = logging.getLogger("mambaout")

LR_SCALES = ("linear", "sqrt", "none")
EMA_CHOICES = ("model", "ema")
CLIP_MODES = ("norm", "value", "agc")
# keys a recipe file may hold besides options: what `mambaout recipes --yaml/--json` writes about each value
RECIPE_FILE_KEYS = ("sources", "differences", "title")


class ConfigError(MambaoutError, ValueError):
    """Training options that do not make sense (bad values, unknown keys in a config file)."""


def option(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class EngineConfig:
    """Options every task's training shares (the engine reads these); tasks subclass it with their recipe."""

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
    lr: float | None = option(None, "peak learning rate")
    opt: str = option("adamw", "timm optimizer name")
    opt_betas: list[float] | None = option(None, "optimizer betas (default: the optimizer's)", nargs=2)
    opt_eps: float | None = option(None, "optimizer epsilon (default: the optimizer's)")
    momentum: float = option(0.9, "momentum for SGD-like optimizers")
    weight_decay: float = option(0.05, "weight decay (not applied to norms, biases and no_weight_decay() names)")
    no_weight_decay: str = option("timm", "which parameters get no weight decay: the rule of an official training "
                                  "code (timm, swin, mmcls)")
    clip_grad: float | None = option(None, "clip gradients to this value (0 or none: no clipping)")
    clip_mode: str = option("norm", "gradient clipping mode: norm, value or agc (timm's)")
    drop_path: float | None = option(None, "stochastic depth")
    # EMA, precision, speed
    model_ema_decay: float | None = option(None, "keep an exponential moving average of the weights with this decay "
                                           "per optimizer step (0 or none: no EMA)")
    model_ema_eval: bool = option(True, "validate the EMA weights every epoch too (summary.csv: ema_* columns)")
    best_by: str = option("model", "whose validation metric picks best.pth: model or ema")
    release_weights: str = option("model", "which weights a checkpoint gives as the model (create_model, predict, "
                                  "validate): model or ema")
    amp: str | None = option(None, "autocast precision: bf16 or fp16 (fp16 adds a gradient scaler; on a CPU fp16 "
                             "runs as bf16 where the CPU has bf16, else fp32)")
    channels_last: bool = option(False, "channels-last memory format")
    grad_checkpointing: bool = option(False, "recompute block activations in the backward pass (saves memory)")
    compile: bool = option(False, "torch.compile the model")
    keep_freed_memory: bool = option(True, "on a CPU, keep freed memory in the heap for the next step instead of "
                                     "returning it to the system (glibc; faster steps, the peak memory stays held)")
    device: str | None = option(None, "cpu or cuda (default: cuda when available)")
    # weights
    pretrained: bool = option(False, "start from the release weights (fine-tuning)")
    initial_checkpoint: str | None = option(None, "start from these weights (fine-tuning; any layout the model reads)")
    resume: str | None = option(None, "'auto' (the newest complete checkpoint in the output folder) or a path")
    # output
    output: str = option("output/train", "parent folder of the run folders")
    experiment: str | None = option(None, "run folder name (default: model and input size)")
    checkpoint_hist: int = option(10, "epoch checkpoints kept besides last and best")
    checkpoint_interval: int = option(1000, "optimizer steps between the mid-epoch checkpoints that --resume auto "
                                      "continues from exactly (last.pth; 0: at the end of each epoch only)")
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
        if not self.clip_grad:
            self.clip_grad = None
        if not self.model_ema_decay:
            self.model_ema_decay = None
        checks = [
            (self.amp in (None, "bf16", "fp16"), f"--amp must be bf16 or fp16, not {self.amp!r}"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.grad_accum_steps >= 1, "--grad-accum-steps must be at least 1"),
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.eval_metric in self.eval_metrics, f"--eval-metric must be one of {', '.join(self.eval_metrics)}"),
            (self.checkpoint_hist >= 0, "--checkpoint-hist must be 0 or more"),
            (self.checkpoint_interval >= 0, "--checkpoint-interval must be 0 or more"),
            (self.workers >= 0, "--workers must be 0 or more"),
            (0 <= (self.drop_path or 0) < 1, "--drop-path must be in [0, 1)"),
            (0 <= self.transform_failure_limit <= 1, "--transform-failure-limit must be in [0, 1]"),
            (self.no_weight_decay in RULES, f"--no-weight-decay must be one of {', '.join(sorted(RULES))}"),
            (self.clip_mode in CLIP_MODES, f"--clip-mode must be one of {', '.join(CLIP_MODES)}"),
            (self.best_by in EMA_CHOICES, f"--best-by must be one of {', '.join(EMA_CHOICES)}"),
            (self.release_weights in EMA_CHOICES, f"--release-weights must be one of {', '.join(EMA_CHOICES)}"),
            (self.model_ema_decay is None or 0 < self.model_ema_decay < 1, "--model-ema-decay must be in (0, 1)"),
            (self.best_by == "model" or (self.model_ema_decay is not None and self.model_ema_eval),
             "--best-by ema needs the EMA validated: --model-ema-decay D and --model-ema-eval"),
            (self.release_weights == "model" or self.model_ema_decay is not None,
             "--release-weights ema needs an EMA: --model-ema-decay D"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def resolved_lr(self, world_size: int) -> float:
        """The peak learning rate the run uses with `world_size` processes."""
        if self.lr is None:
            raise ConfigError("no learning rate: set --lr")
        return self.lr

    def actual_global_batch(self, world_size: int) -> int:
        return self.batch_size * self.grad_accum_steps * world_size

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def run_info(self) -> dict[str, Any]:
        """What args.yaml records besides the options (classification: the recipe and its overrides)."""
        return {}

    def notes(self, world_size: int) -> list[str]:
        """Lines the run logs at its start about how its options were chosen."""
        return []

    @classmethod
    def fields(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))


def checked_size(size: Any, flag: str) -> int | list[int]:
    """An image-size option as configs hold it (one number for a square, else [H, W]), or a ConfigError."""
    try:
        size = compact_size(size)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} takes one number (a square) or two (H W), got {size!r}") from None
    if min(height_width(size)) < 1:
        raise ConfigError(f"{flag} must be positive, got {size}")
    return size


def from_recipe(help: str, **extra: Any) -> Any:
    """An option whose default is the run's recipe value."""
    return option(None, help, from_recipe=True, **extra)


@dataclass
class TrainConfig(EngineConfig):
    """Image classification on a folder dataset; every option left None takes the run's recipe value."""

    data_dir: str = option("", "dataset root holding train/ and val/ with one folder per class (ImageNet's layout)")
    model: str = option("mambaout_femto", "registered model name (`mambaout models`)")
    recipe: str | None = option(None, "train with this recipe (`mambaout recipes`; default: the model's own, or the "
                                "one it falls back to)")
    train_split: str = option("train", "training split folder")
    val_split: str = option("val", "validation split folder ('' to skip validation)")
    img_size: int | list[int] | None = option(None, "training and validation input size: one number (a square) or "
                                              "H W (default: the model's)", image_size=True)
    num_classes: int | None = option(None, "classifier size (default: the number of class folders)")
    # the schedule and the optimizer
    epochs: int | None = from_recipe("epochs of the schedule, a prefix warmup included (cooldown epochs come after)")
    cooldown_epochs: int | None = from_recipe("epochs at min-lr after the schedule (timm's cooldown)")
    global_batch_size: int | None = from_recipe(
        "the global batch --lr, --warmup-lr and --min-lr are given for; the run scales them to its actual global "
        "batch by --lr-scale (default: the recipe's official batch; with --lr set and this not: the actual batch)"
    )
    lr: float | None = from_recipe("peak learning rate at --global-batch-size")
    lr_scale: str | None = from_recipe("how the lr follows the global batch: linear, sqrt or none")
    scale_warmup_and_min_lr: bool | None = from_recipe("scale --warmup-lr and --min-lr with the batch as the lr")
    opt: str | None = from_recipe("timm optimizer name")
    opt_betas: list[float] | None = from_recipe("optimizer betas (default: the optimizer's)", nargs=2)
    opt_eps: float | None = from_recipe("optimizer epsilon (default: the optimizer's)")
    momentum: float | None = from_recipe("momentum for SGD-like optimizers")
    weight_decay: float | None = from_recipe("weight decay")
    no_weight_decay: str | None = from_recipe("which parameters get no weight decay: the rule of an official "
                                              "training code (timm, swin, mmcls)")
    sched: str | None = from_recipe("timm scheduler name (cosine, step, multistep, plateau, poly, tanh)")
    sched_on_updates: bool | None = from_recipe("step the schedule every optimizer update instead of every epoch")
    warmup_epochs: int | None = from_recipe("linear warmup epochs")
    warmup_lr: float | None = from_recipe("learning rate at the start of warmup")
    warmup_prefix: bool | None = from_recipe("the schedule starts after the warmup (else the warmup is its start)")
    warmup_staircase: bool | None = from_recipe("the warmup raises the lr once per epoch, the schedule after it runs "
                                                "per update (LocalMamba's toolbox; needs --sched-on-updates)")
    min_lr: float | None = from_recipe("learning rate at the end of the schedule")
    clip_grad: float | None = from_recipe("clip gradients to this value (0: no clipping)")
    clip_mode: str | None = from_recipe("gradient clipping mode: norm, value or agc (timm's)")
    # regularisation
    drop_path: float | None = from_recipe("stochastic depth")
    drop: float | None = from_recipe("dropout before the classifier (head dropout)")
    model_ema_decay: float | None = from_recipe("EMA decay per optimizer step (0: no EMA)")
    model_ema_eval: bool | None = from_recipe("validate the EMA weights every epoch too (summary.csv: ema_* columns)")
    best_by: str | None = from_recipe("whose validation metric picks best.pth: model or ema")
    release_weights: str | None = from_recipe("which weights a checkpoint gives as the model: model or ema")
    amp: str | None = from_recipe("autocast precision: bf16, fp16 or fp32 (on a CPU fp16 runs as bf16 where the "
                                  "CPU has bf16, else as fp32)")
    smoothing: float | None = from_recipe("label smoothing")
    # augmentation
    aug_repeats: int | None = from_recipe("repeated augmentation: each image this many times per epoch, split "
                                          "across processes (DeiT's RASampler; 0: off)")
    aa: str | None = from_recipe("auto-augment policy: timm's (rand-m9-mstd0.5-inc1), localmamba-rand-m9-mstd0.5, "
                                 "or none")
    color_jitter: float | None = from_recipe("colour jitter strength (timm applies it only without auto-augment)")
    scale: list[float] | None = from_recipe("random-resized-crop scale range", nargs=2)
    ratio: list[float] | None = from_recipe("random-resized-crop aspect ratio range", nargs=2)
    hflip: float | None = from_recipe("horizontal flip probability")
    train_interpolation: str | None = from_recipe("training resize interpolation (bicubic, bilinear, random)")
    reprob: float | None = from_recipe("random erasing probability")
    remode: str | None = from_recipe("random erasing mode (pixel, rand, const)")
    recount: int | None = from_recipe("random erasing count")
    mixup: float | None = from_recipe("mixup alpha (0 disables)")
    cutmix: float | None = from_recipe("cutmix alpha (0 disables)")
    mixup_prob: float | None = from_recipe("probability of applying mixup or cutmix to a batch")
    mixup_switch_prob: float | None = from_recipe("probability of cutmix instead of mixup when both are on")
    mixup_mode: str | None = from_recipe("mixup/cutmix per batch, pair or elem (timm's)")
    mixup_off_epoch: int = option(0, "turn mixup/cutmix off from this epoch (0: never)")
    no_aug: bool = option(False, "no training augmentation at all (resize and center crop only)")
    eval_metric: str = option("top1", "validation metric that picks best.pth (top1, top5 or loss)")

    def __post_init__(self) -> None:
        self._report = self._apply_recipe()
        if self.img_size is not None:
            self.img_size = checked_size(self.img_size, "--img-size")
        if self.aa in ("", "none"):
            self.aa = None
        if self.aa is not None and not self.no_aug:
            try:
                (check_local_mamba_policy if is_local_mamba_policy(self.aa) else check_policy)(self.aa)
            except ValueError as e:
                raise ConfigError(str(e)) from e
        checks = [
            (self.lr_scale in LR_SCALES, f"--lr-scale must be one of {', '.join(LR_SCALES)}"),
            (self.global_batch_size is None or self.global_batch_size >= 1, "--global-batch-size must be at least 1"),
            (self.aug_repeats >= 0, "--aug-repeats must be 0 or more"),
            (self.cooldown_epochs >= 0, "--cooldown-epochs must be 0 or more"),
            (not self.warmup_staircase or (self.sched_on_updates and self.warmup_prefix),
             "--warmup-staircase needs --sched-on-updates and --warmup-prefix (LocalMamba's schedule)"),
            (0 <= self.warmup_epochs <= self.epochs,
             f"--epochs {self.epochs} is shorter than the {self.warmup_epochs} warmup epochs of recipe {self.recipe}: "
             "set --warmup-epochs too (0 to 'epochs')"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        super().__post_init__()

    def _apply_recipe(self) -> RecipeReport:
        """Fill every unset option from the recipe; what differs from the recipe is an override."""
        try:
            get_model_spec(self.model)
            own, fallback = recipe_for(self.model)
            chosen: Recipe = get_recipe(self.recipe) if self.recipe else own
        except KeyError as e:  # unknown model or recipe: the message names the closest ones
            raise ConfigError(str(e)) from None
        self.recipe = chosen.name
        given_lr_only = self.lr is not None and self.global_batch_size is None
        overrides: dict[str, dict[str, Any]] = {}
        for f in dataclasses.fields(self):
            if not f.metadata.get("from_recipe"):
                continue
            if f.name not in chosen.values:
                raise ConfigError(f"recipe {chosen.name!r} has no value for {f.name!r}")
            ours, theirs = getattr(self, f.name), chosen.values[f.name]
            if ours is None:
                if f.name == "global_batch_size" and given_lr_only:
                    continue  # --lr alone is the lr of the actual batch
                setattr(self, f.name, theirs)
            elif not _same(ours, theirs):
                overrides[f.name] = {"recipe": plain(theirs), "used": plain(ours)}
        reason = "" if chosen is not own else (fallback.why if fallback else "")
        return RecipeReport(chosen.name, own=chosen is own and fallback is None, fallback_reason=reason,
                            overrides=overrides)

    @property
    def recipe_report(self) -> RecipeReport:
        return self._report

    def lr_factor(self, world_size: int) -> float:
        """How much the recipe's lrs are scaled for the actual global batch (1 at the recipe's batch)."""
        if self.global_batch_size is None or self.lr_scale == "none":
            return 1.0
        ratio = self.actual_global_batch(world_size) / self.global_batch_size
        return math.sqrt(ratio) if self.lr_scale == "sqrt" else ratio

    def resolved_lr(self, world_size: int) -> float:
        return self.lr * self.lr_factor(world_size)

    def resolved_min_lrs(self, world_size: int) -> tuple[float, float]:
        """(warmup_lr, min_lr) as the run uses them."""
        factor = self.lr_factor(world_size) if self.scale_warmup_and_min_lr else 1.0
        return self.warmup_lr * factor, self.min_lr * factor

    def batch_note(self, world_size: int) -> str | None:
        """A line for the log when the actual global batch is not the recipe's, with the accumulation to reach it."""
        if self.global_batch_size is None:
            return None
        actual = self.actual_global_batch(world_size)
        if actual == self.global_batch_size:
            return None
        per_step = self.batch_size * world_size
        accum = self.global_batch_size / per_step
        reach = (f"--grad-accum-steps {int(accum)} reaches it" if accum == int(accum) and accum >= 1
                 else f"no whole --grad-accum-steps reaches it with --batch-size {self.batch_size} x {world_size}")
        if self.lr_scale == "none":
            return (f"global batch {actual} instead of the recipe's {self.global_batch_size}, and the recipe's code "
                    f"does not scale its lr {self.lr:.3g} (--lr-scale none): {reach}, or pass --lr-scale linear")
        return (f"global batch {actual} instead of the recipe's {self.global_batch_size}: lr scaled {self.lr_scale} "
                f"to {self.resolved_lr(world_size):.3g} ({reach})")

    def notes(self, world_size: int) -> list[str]:
        note = self.batch_note(world_size)
        return self.recipe_report.lines() + ([note] if note else [])

    def run_info(self) -> dict[str, Any]:
        report = self.recipe_report
        return {"recipe": report.recipe, "recipe_is_own": report.own, "recipe_fallback": report.fallback_reason or None,
                "overrides": report.overrides}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return list(a) == list(b) if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) else False
    return a == b


def config_fields(config_class: type[EngineConfig] = TrainConfig) -> list[dataclasses.Field]:
    return config_class.fields()


def read_config_file(path: str | os.PathLike, config_class: type[EngineConfig] = TrainConfig) -> dict[str, Any]:
    """Options from a YAML file (keys with - or _ as on the command line); unknown keys are an error.

    A recipe file as `mambaout recipes MODEL --yaml` writes it reads back too: its `sources`, `differences` and
    `title` describe the values and are not options."""
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
    options = {str(k).replace("-", "_"): v for k, v in data.items() if k not in RECIPE_FILE_KEYS}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown options in {str(path)!r}: {', '.join(unknown)}")
    return options

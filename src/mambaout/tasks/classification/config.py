"""Image classification's training options: each option left unset (None) takes the value of the run's recipe
(`mambaout.recipes`): the model's own official recipe by default, another model's with `recipe=NAME`. Whatever the
user sets is an override, recorded in args.yaml."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ...data.augment import check_policy
from ...data.local_mamba_augment import check_local_mamba_policy, is_local_mamba_policy
from ...engine.config import ConfigError, EngineConfig, check_options, checked_size, option
from ...recipes import Recipe, RecipeReport, get_recipe, plain
from ...registry import get_model_spec, recipe_for

LR_SCALES = ("linear", "sqrt", "none")


def from_recipe(help: str, **extra: Any) -> Any:
    """An option whose default is the run's recipe value."""
    return option(None, help, from_recipe=True, **extra)


@dataclass
class TrainConfig(EngineConfig):
    """Image classification on a folder dataset; every option left None takes the run's recipe value."""

    eval_metrics: ClassVar[tuple[str, ...]] = ("top1", "top5", "loss")

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
        check_options(checks)
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

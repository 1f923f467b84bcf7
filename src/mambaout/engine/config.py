"""Training options every task shares and how they are read (YAML file, command line).

`EngineConfig` holds what the one engine reads; each task subclasses it with its own options and recipe
(classification: `tasks.classification.config.TrainConfig`). Fields are declared with `option(default, help)`,
which the command line turns into flags.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from ..data.sizes import compact_size, height_width
from ..errors import MambaoutError
from .weight_decay import RULES

log = logging.getLogger("mambaout")

EMA_CHOICES = ("model", "ema")
CLIP_MODES = ("norm", "value", "agc")
# keys a recipe file may hold besides options: what `mambaout recipes --yaml/--json` writes about each value
RECIPE_FILE_KEYS = ("sources", "differences", "title")


class ConfigError(MambaoutError, ValueError):
    """Training options that do not make sense (bad values, unknown keys in a config file)."""


def check_options(checks: list[tuple[bool, str]], error: type[Exception] = ConfigError) -> None:
    """Raise `error` with the message of the first (ok, message) pair that is not ok."""
    for ok, message in checks:
        if not ok:
            raise error(message)


def option(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class EngineConfig:
    """Options every task's training shares (the engine reads these); tasks subclass it with their recipe."""

    #: the metrics --eval-metric may name (the task's evaluate() returns them with a 'val_' prefix); each task
    #: names its own, with its own eval_metric default
    eval_metrics: ClassVar[tuple[str, ...]] = ("loss",)

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
    eval_metric: str = option("loss", "validation metric that picks best.pth")
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
        check_options(checks)

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


def read_config_file(path: str | os.PathLike, config_class: type[EngineConfig]) -> dict[str, Any]:
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
    known = {f.name for f in config_class.fields()}
    options = {str(k).replace("-", "_"): v for k, v in data.items() if k not in RECIPE_FILE_KEYS}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown options in {str(path)!r}: {', '.join(unknown)}")
    return options

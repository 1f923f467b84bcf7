"""MambaOut's official ImageNet-1k recipe (yuweihao/MambaOut: scripts/train_mambaout_*.sh on its timm-0.6 train.py).

The scripts set the model, `--opt adamw --lr 4e-3 --warmup-epochs 20`, the global batch of 4096 (ALL_BATCH_SIZE,
reached with --grad-accum-steps) and `--drop-path`; everything else is train.py's default.
"""

from __future__ import annotations

from . import DenseSettings, recipe

_SCRIPT = "yuweihao/MambaOut:scripts/train_mambaout_{}.sh"
_TRAIN = "yuweihao/MambaOut:train.py"

_SHARED = {
    "epochs": (300, f"{_TRAIN} --epochs default"),
    "cooldown_epochs": (10, f"{_TRAIN} --cooldown-epochs default (timm's scheduler runs them after the 300)"),
    "global_batch_size": (4096, f"{_SCRIPT.format('*')} ALL_BATCH_SIZE=4096"),
    "lr": (4e-3, f"{_SCRIPT.format('*')} --lr 4e-3"),
    "lr_scale": ("none", f"{_TRAIN}: args.lr goes to the optimizer as given (the scripts hold the global batch at "
                 "4096 with --grad-accum-steps)"),
    "scale_warmup_and_min_lr": (False, f"{_TRAIN}: timm scales only the lr"),
    "opt": ("adamw", f"{_SCRIPT.format('*')} --opt adamw"),
    "opt_eps": (1e-8, f"{_TRAIN} --opt-eps default None: torch AdamW's 1e-8"),
    "opt_betas": ((0.9, 0.999), f"{_TRAIN} --opt-betas default None: torch AdamW's"),
    "momentum": (0.9, f"{_TRAIN} --momentum default (unused by AdamW)"),
    "weight_decay": (0.05, f"{_TRAIN} --weight-decay default"),
    "no_weight_decay": ("timm", f"{_TRAIN}: timm's create_optimizer_v2 (1-D, biases, model.no_weight_decay())"),
    "sched": ("cosine", f"{_TRAIN} --sched default"),
    "sched_on_updates": (False, f"{_TRAIN}: timm 0.6's cosine steps per epoch"),
    "warmup_epochs": (20, f"{_SCRIPT.format('*')} --warmup-epochs 20"),
    "warmup_lr": (1e-6, f"{_TRAIN} --warmup-lr default"),
    "warmup_prefix": (False, f"{_TRAIN}: timm 0.6's scheduler warms up inside the 300 epochs"),
    "warmup_staircase": (False, f"{_TRAIN}: timm's linear warmup"),
    "min_lr": (1e-5, f"{_TRAIN} --min-lr default"),
    "clip_grad": (None, f"{_TRAIN} --clip-grad default None"),
    "clip_mode": ("norm", f"{_TRAIN} --clip-mode default"),
    "drop": (0.0, f"{_TRAIN} --drop default"),
    "model_ema_decay": (None, f"{_TRAIN}: --model-ema off by default (its decay 0.9998 unused)"),
    "model_ema_eval": (False, f"{_TRAIN}: no EMA"),
    "best_by": ("model", f"{_TRAIN}: CheckpointSaver keeps the best top-1 of the model"),
    "release_weights": ("model", "yuweihao/MambaOut:README.md: the released weights are the trained model's"),
    "amp": (None, f"{_SCRIPT.format('*')}: no --amp (fp32; the README names AMP only as an optional speed-up)"),
    "smoothing": (0.1, f"{_TRAIN} --smoothing default"),
    "aug_repeats": (0, f"{_TRAIN}: no repeated augmentation"),
    "aa": ("rand-m9-mstd0.5-inc1", f"{_TRAIN} --aa default"),
    "color_jitter": (0.4, f"{_TRAIN} --color-jitter default (timm skips it under auto-augment)"),
    "scale": ((0.08, 1.0), f"{_TRAIN} --scale default"),
    "ratio": ((3 / 4, 4 / 3), f"{_TRAIN} --ratio default"),
    "hflip": (0.5, f"{_TRAIN} --hflip default"),
    "train_interpolation": ("random", f"{_TRAIN} --train-interpolation default"),
    "reprob": (0.25, f"{_TRAIN} --reprob default"),
    "remode": ("pixel", f"{_TRAIN} --remode default"),
    "recount": (1, f"{_TRAIN} --recount default"),
    "mixup": (0.8, f"{_TRAIN} --mixup default"),
    "cutmix": (1.0, f"{_TRAIN} --cutmix default"),
    "mixup_prob": (1.0, f"{_TRAIN} --mixup-prob default"),
    "mixup_switch_prob": (0.5, f"{_TRAIN} --mixup-switch-prob default"),
    "mixup_mode": ("batch", f"{_TRAIN} --mixup-mode default"),
}

_DIFFERENCES = ()

_DROP_PATH = {"femto": 0.025, "kobe": 0.025, "tiny": 0.2, "small": 0.4, "base": 0.6}

RECIPES = {
    f"mambaout_{size}": recipe(
        f"mambaout_{size}",
        _SHARED,
        {"drop_path": (rate, f"{_SCRIPT.format(size)} --drop-path {rate}")},
        differences=_DIFFERENCES,
        title=f"MambaOut-{size.capitalize()}",
    )
    for size, rate in _DROP_PATH.items()
}

# MambaOut's detection and segmentation code was never released: issue 12's recipe
_DENSE_SOURCE = "MambaOut paper Sec. 4 / issue 12 (no official dense code)"
DENSE = {
    name: DenseSettings(rate, _DENSE_SOURCE)
    for name, rate in {"mambaout_femto": 0.1, "mambaout_kobe": 0.1, "mambaout_tiny": 0.3, "mambaout_small": 0.4,
                       "mambaout_base": 0.6}.items()
}

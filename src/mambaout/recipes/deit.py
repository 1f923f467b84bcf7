"""DeiT's official ImageNet-1k recipe (facebookresearch/deit: main.py defaults, README_deit.md's commands) and
Vim's (hustvl/Vim: vim/main.py, DeiT's main.py with Mamba models, and its vim/scripts/*.sh).

Both scale the lr linearly by global batch / 512 (main.py), warm up 5 epochs from 1e-6, run a per-epoch cosine to
1e-5 over 300 epochs (timm's scheduler is built with 10 cooldown epochs, but the loop stops at --epochs), keep an EMA
(decay 0.99996) that is saved but never validated, use repeated augmentation (3 repeats, RASampler) and colour
jitter 0.3.
"""

from __future__ import annotations

from typing import Any

from . import DenseSettings, recipe


def deit_layer(main: str) -> dict[str, tuple[Any, str]]:
    """DeiT's main.py defaults; `main` is the main.py they are read from (DeiT's or Vim's copy). The global batch
    is the launch command's, given by each recipe."""
    return {
        "epochs": (300, f"{main} --epochs default"),
        "cooldown_epochs": (0, f"{main}: the loop runs --epochs; the scheduler's 10 cooldown epochs never run"),
        "lr": (1e-3, f"{main} --lr default 5e-4 x 1024/512 (linear scaling)"),
        "lr_scale": ("linear", f"{main}: args.lr x global batch / 512"),
        "scale_warmup_and_min_lr": (False, f"{main}: only the lr is scaled"),
        "opt": ("adamw", f"{main} --opt default"),
        "opt_eps": (1e-8, f"{main} --opt-eps default"),
        "opt_betas": ((0.9, 0.999), f"{main} --opt-betas default None: torch AdamW's"),
        "momentum": (0.9, f"{main} --momentum default (unused by AdamW)"),
        "weight_decay": (0.05, f"{main} --weight-decay default"),
        "no_weight_decay": ("timm", f"{main}: timm's create_optimizer (1-D, biases, model.no_weight_decay())"),
        "sched": ("cosine", f"{main} --sched default"),
        "sched_on_updates": (False, f"{main}: lr_scheduler.step(epoch) once per epoch"),
        "warmup_epochs": (5, f"{main} --warmup-epochs default"),
        "warmup_lr": (1e-6, f"{main} --warmup-lr default"),
        "warmup_prefix": (False, f"{main}: timm's scheduler warms up inside the 300 epochs"),
        "warmup_staircase": (False, f"{main}: timm's linear warmup"),
        "min_lr": (1e-5, f"{main} --min-lr default"),
        "clip_grad": (None, f"{main} --clip-grad default None"),
        "clip_mode": ("norm", f"{main}: timm's NativeScaler default"),
        "drop": (0.0, f"{main} --drop default"),
        "drop_path": (0.1, f"{main} --drop-path default"),
        "model_ema_decay": (0.99996, f"{main} --model-ema default True, --model-ema-decay default"),
        "model_ema_eval": (False, f"{main}: the EMA is saved in the checkpoint, never validated"),
        "best_by": ("model", f"{main}: max_accuracy of the model picks best_checkpoint.pth"),
        "release_weights": ("model", f"{main}: the released 'model' entry is the trained model's"),
        "amp": ("fp16", f"{main}: torch.cuda.amp.autocast() and NativeScaler"),
        "smoothing": (0.1, f"{main} --smoothing default"),
        "aug_repeats": (3, f"{main} --repeated-aug default True (RASampler, 3 repeats)"),
        "aa": ("rand-m9-mstd0.5-inc1", f"{main} --aa default"),
        "color_jitter": (0.3, f"{main} --color-jitter default (timm skips it under auto-augment)"),
        "scale": ((0.08, 1.0), f"{main}: timm create_transform default"),
        "ratio": ((3 / 4, 4 / 3), f"{main}: timm create_transform default"),
        "hflip": (0.5, f"{main}: timm create_transform default"),
        "train_interpolation": ("bicubic", f"{main} --train-interpolation default"),
        "reprob": (0.25, f"{main} --reprob default"),
        "remode": ("pixel", f"{main} --remode default"),
        "recount": (1, f"{main} --recount default"),
        "mixup": (0.8, f"{main} --mixup default"),
        "cutmix": (1.0, f"{main} --cutmix default"),
        "mixup_prob": (1.0, f"{main} --mixup-prob default"),
        "mixup_switch_prob": (0.5, f"{main} --mixup-switch-prob default"),
        "mixup_mode": ("batch", f"{main} --mixup-mode default"),
    }


#: what DeiT's and Vim's loop does that ours does not
DIFFERENCES = (
    "schedule: main.py calls lr_scheduler.step(epoch) after epoch e, so epoch e+1 runs at the lr of epoch e (the "
    "first two epochs at warmup_lr); ours runs epoch e at the lr of epoch e",
)

_MAIN = "facebookresearch/deit:main.py"
_README = "facebookresearch/deit:README_deit.md"
_DEIT = deit_layer(_MAIN)
_BATCH = {
    "tiny": (1024, f"{_README}: 4 GPUs x --batch-size 256"),
    "small": (1024, f"{_README}: 4 GPUs x --batch-size 256"),
    "base": (1024, f"{_README}: 2 nodes x 8 GPUs x --batch-size 64 (run_with_submitit.py)"),
}

RECIPES = {
    f"deit_{size}": recipe(f"deit_{size}", _DEIT, {"global_batch_size": batch}, differences=DIFFERENCES,
                           title=f"deit_{size}_patch16_224")
    for size, batch in _BATCH.items()
}

DENSE = {
    f"deit_{size}{suffix}": DenseSettings(0.1, "ViTDet-style fine-tuning of small plain models (no DeiT config)")
    for size in _BATCH
    for suffix in ("", "_causal")
}

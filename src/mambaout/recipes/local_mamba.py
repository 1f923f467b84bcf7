"""LocalMamba's official ImageNet-1k recipe (hunto/LocalMamba: classification/configs/strategies/local_mamba/
config.yaml on its own image-classification toolbox, and the README's train command), for LocalVim and LocalVMamba.

Unlike every other family: weight decay 0.04, mixup 0.2, min lr 1e-6, warmup from 1e-7, the toolbox's own
RandAugment op set, a per-iteration cosine. LocalVim trains in fp32, LocalVMamba with fp16 AMP (README: `--amp` "on
LocalVMamba models").
"""

from __future__ import annotations

from . import DenseSettings, recipe

_CONFIG = "hunto/LocalMamba:classification/configs/strategies/local_mamba/config.yaml"
_README = "hunto/LocalMamba:README.md"
_TRAIN = "hunto/LocalMamba:classification/tools/train.py"

_SHARED = {
    "epochs": (300, f"{_CONFIG} epochs"),
    "cooldown_epochs": (0, f"{_CONFIG}: no cooldown"),
    "global_batch_size": (1024, f"{_README}: dist_train.sh 8 GPUs x -b 128"),
    "lr": (1e-3, f"{_CONFIG} lr"),
    "lr_scale": ("none", f"{_TRAIN}: the config's lr is used as given"),
    "scale_warmup_and_min_lr": (False, f"{_CONFIG}: warmup_lr and min_lr are absolute"),
    "opt": ("adamw", f"{_CONFIG} opt"),
    "opt_eps": (1e-8, f"{_CONFIG} opt_eps"),
    "opt_betas": ((0.9, 0.999), f"{_CONFIG}: opt_betas null, torch AdamW's"),
    "momentum": (0.9, f"{_CONFIG} momentum (unused by AdamW)"),
    "weight_decay": (0.04, f"{_CONFIG} weight_decay"),
    "no_weight_decay": ("timm", "hunto/LocalMamba:classification/lib/utils/optim.py: 1-D, .bias, no_weight_decay() "
                        "(timm's test)"),
    "sched": ("cosine", f"{_CONFIG} sched"),
    "sched_on_updates": (True, f"{_CONFIG} decay_by_epoch: false"),
    "warmup_epochs": (20, f"{_CONFIG} warmup_epochs"),
    "warmup_lr": (1e-7, f"{_CONFIG} warmup_lr"),
    "warmup_prefix": (True, "hunto/LocalMamba:classification/lib/utils/scheduler.py: CosineAnnealingLR over "
                      "epochs - warmup_epochs, after the warmup"),
    "warmup_staircase": (True, "hunto/LocalMamba:classification/lib/utils/scheduler.py: GradualWarmupScheduler "
                         "raises the lr once per epoch"),
    "min_lr": (1e-6, f"{_CONFIG} min_lr"),
    "clip_grad": (None, f"{_CONFIG}: no clip_grad"),
    "clip_mode": ("norm", f"{_CONFIG}: no clip_grad"),
    "drop": (0.0, f"{_CONFIG}: no dropout"),
    "drop_path": (0.1, f"{_README} train command --drop-path-rate 0.1 (given for LocalVim-T; the others' commands "
                  "are not in the README, and tools/train.py passes the config's 0.1 over the model defaults)"),
    "model_ema_decay": (None, f"{_CONFIG} model_ema false"),
    "model_ema_eval": (False, f"{_CONFIG}: no EMA"),
    "best_by": ("model", f"{_TRAIN}: the best top-1 of the model"),
    "release_weights": ("model", f"{_README}: the trained model"),
    "amp": (None, f"{_README}: --amp only on LocalVMamba models (LocalVim: fp32)"),
    "smoothing": (0.1, "hunto/LocalMamba:classification/lib/utils/args.py --smoothing default"),
    "aug_repeats": (0, f"{_CONFIG}: no repeated augmentation"),
    "aa": ("localmamba-rand-m9-mstd0.5", f"{_CONFIG} aa rand-m9-mstd0.5 (the toolbox's own RandAugment ops)"),
    "color_jitter": (0.3, f"{_CONFIG} color_jitter (the toolbox skips it under auto-augment, as timm)"),
    "scale": ((0.08, 1.0), "hunto/LocalMamba:classification/lib/dataset/transform.py: random-resized-crop default"),
    "ratio": ((3 / 4, 4 / 3), "hunto/LocalMamba:classification/lib/dataset/transform.py: random-resized-crop default"),
    "hflip": (0.5, "hunto/LocalMamba:classification/lib/dataset/transform.py"),
    "train_interpolation": ("bicubic", f"{_CONFIG} interpolation"),
    "reprob": (0.25, f"{_CONFIG} reprob"),
    "remode": ("pixel", f"{_CONFIG} remode"),
    "recount": (1, f"{_CONFIG}: one erased box"),
    "mixup": (0.2, f"{_CONFIG} mixup"),
    "cutmix": (1.0, f"{_CONFIG} cutmix"),
    "mixup_prob": (1.0, f"{_CONFIG} mixup_prob"),
    "mixup_switch_prob": (0.5, f"{_CONFIG} mixup_switch_prob"),
    "mixup_mode": ("batch", f"{_CONFIG} mixup_mode"),
}

_AMP = {"amp": ("fp16", f"{_README}: --amp on LocalVMamba models")}

_LOCAL_VIM_TINY = recipe("local_vim_tiny", _SHARED, title="timm_local_vim_tiny")
RECIPES = {
    "local_vim_tiny": _LOCAL_VIM_TINY,
    "local_vim_tiny_middle_cls_token": _LOCAL_VIM_TINY,  # the same official configuration, another model
    "local_vim_small": recipe("local_vim_small", _SHARED, title="timm_local_vim_small"),
    "local_vmamba_tiny": recipe("local_vmamba_tiny", _SHARED, _AMP, title="local_vssm_tiny"),
    "local_vmamba_small": recipe("local_vmamba_small", _SHARED, _AMP, title="local_vssm_small"),
}

_DET = "hunto/LocalMamba:detection/configs/local_mamba/"
DENSE = {
    "local_vmamba_tiny": DenseSettings(0.2, f"{_DET}mask_rcnn_local_vssm_tiny_fpn_coco.py (mmdet's Swin-T 0.2)"),
    "local_vmamba_small": DenseSettings(0.2, f"{_DET}mask_rcnn_local_vssm_small_fpn_coco.py (mmdet's Swin-T 0.2)"),
    **{name: DenseSettings(0.1, f"{_DET}vitdet_cascade_mask-rcnn_*.py drop_path_rate 0.1")
       for name in ("local_vim_tiny", "local_vim_tiny_middle_cls_token", "local_vim_small")},
}

"""VMamba's official ImageNet-1k recipes (MzeroMiko/VMamba: classification/config.py defaults, the per-model
classification/configs/vssm/*.yaml, classification/main.py), and LocalVMamba's (hunto/LocalMamba), which trains
VMamba v0 with searched scans in its own toolbox.

VMamba's code is Swin's: 8 GPUs x --batch-size 128 = 1024 (README), BASE_LR, WARMUP_LR and MIN_LR scaled linearly by
global batch / 512 (main.py), a per-iteration cosine after a 20-epoch warmup prefix, gradient clipping at norm 5, EMA
0.9999 validated beside the model every epoch, fp16 AMP.
"""

from __future__ import annotations

from . import DenseSettings, recipe

_CONFIG = "MzeroMiko/VMamba:classification/config.py"
_MAIN = "MzeroMiko/VMamba:classification/main.py"
_YAML = "MzeroMiko/VMamba:classification/configs/vssm/{}.yaml"
_README = "MzeroMiko/VMamba:README.md"

_SHARED = {
    "epochs": (300, f"{_CONFIG} TRAIN.EPOCHS (the warmup included)"),
    "cooldown_epochs": (0, f"{_CONFIG}: Swin's scheduler has no cooldown"),
    "global_batch_size": (1024, f"{_README}: 8 GPUs x --batch-size 128"),
    "lr": (1e-3, f"{_CONFIG} TRAIN.BASE_LR 5e-4 x 1024/512 ({_MAIN} linear scaling)"),
    "lr_scale": ("linear", f"{_MAIN}: lr x global batch / 512"),
    "scale_warmup_and_min_lr": (True, f"{_MAIN}: WARMUP_LR and MIN_LR scaled as BASE_LR"),
    "opt": ("adamw", f"{_CONFIG} TRAIN.OPTIMIZER.NAME"),
    "opt_eps": (1e-8, f"{_CONFIG} TRAIN.OPTIMIZER.EPS"),
    "opt_betas": ((0.9, 0.999), f"{_CONFIG} TRAIN.OPTIMIZER.BETAS"),
    "momentum": (0.9, f"{_CONFIG} TRAIN.OPTIMIZER.MOMENTUM (unused by AdamW)"),
    "weight_decay": (0.05, f"{_CONFIG} TRAIN.WEIGHT_DECAY"),
    "no_weight_decay": ("swin", "MzeroMiko/VMamba:classification/utils/optimizer.py set_weight_decay"),
    "sched": ("cosine", f"{_CONFIG} TRAIN.LR_SCHEDULER.NAME"),
    "sched_on_updates": (True, "MzeroMiko/VMamba:classification/utils/lr_scheduler.py: stepped every iteration"),
    "warmup_epochs": (20, f"{_CONFIG} TRAIN.WARMUP_EPOCHS"),
    "warmup_lr": (1e-6, f"{_CONFIG} TRAIN.WARMUP_LR 5e-7 x 1024/512"),
    "warmup_prefix": (True, f"{_CONFIG} TRAIN.LR_SCHEDULER.WARMUP_PREFIX"),
    "warmup_staircase": (False, "MzeroMiko/VMamba:classification/utils/lr_scheduler.py: per-iteration warmup"),
    "min_lr": (1e-5, f"{_CONFIG} TRAIN.MIN_LR 5e-6 x 1024/512"),
    "clip_grad": (5.0, f"{_CONFIG} TRAIN.CLIP_GRAD"),
    "clip_mode": ("norm", f"{_MAIN}: torch.nn.utils.clip_grad_norm_ (through NativeScaler)"),
    "drop": (0.0, f"{_CONFIG} MODEL.DROP_RATE"),
    "model_ema_decay": (0.9999, f"{_MAIN} --model_ema default True, --model_ema_decay 0.9999"),
    "model_ema_eval": (True, f"{_MAIN}: validate(model_ema.ema) every epoch"),
    "best_by": ("model", f"{_MAIN}: ckpt_epoch_N.pth every epoch, no best kept; the released epoch is the best of "
                "the released weights"),
    "release_weights": ("model", _README),
    "amp": ("fp16", f"{_CONFIG} AMP_ENABLE True (torch.cuda.amp fp16 + GradScaler)"),
    "smoothing": (0.1, f"{_CONFIG} MODEL.LABEL_SMOOTHING"),
    "aug_repeats": (0, f"{_CONFIG}: no repeated augmentation"),
    "aa": ("rand-m9-mstd0.5-inc1", f"{_CONFIG} AUG.AUTO_AUGMENT"),
    "color_jitter": (0.4, f"{_CONFIG} AUG.COLOR_JITTER (timm skips it under auto-augment)"),
    "scale": ((0.08, 1.0), "MzeroMiko/VMamba:classification/data/build.py: timm create_transform default"),
    "ratio": ((3 / 4, 4 / 3), "MzeroMiko/VMamba:classification/data/build.py: timm create_transform default"),
    "hflip": (0.5, "MzeroMiko/VMamba:classification/data/build.py: timm create_transform default"),
    "train_interpolation": ("bicubic", f"{_CONFIG} DATA.INTERPOLATION"),
    "reprob": (0.25, f"{_CONFIG} AUG.REPROB"),
    "remode": ("pixel", f"{_CONFIG} AUG.REMODE"),
    "recount": (1, f"{_CONFIG} AUG.RECOUNT"),
    "mixup": (0.8, f"{_CONFIG} AUG.MIXUP"),
    "cutmix": (1.0, f"{_CONFIG} AUG.CUTMIX"),
    "mixup_prob": (1.0, f"{_CONFIG} AUG.MIXUP_PROB"),
    "mixup_switch_prob": (0.5, f"{_CONFIG} AUG.MIXUP_SWITCH_PROB"),
    "mixup_mode": ("batch", f"{_CONFIG} AUG.MIXUP_MODE"),
}

_EMA_RELEASE = {
    "release_weights": ("ema", f"{_README}: the released accuracy is the EMA model's"),
    "best_by": ("ema", f"{_MAIN}: no best kept; the released epoch is the EMA's best (assets/performance.md)"),
}
# the released VMamba-T v0 ran without EMA at drop path 0.1 (its files: vssmtiny_dp01_e292_woema), not as
# vmambav0_tiny_224.yaml (0.2) and main.py's --model_ema default say; the released VMamba-B v0 is drop path 0.6 + EMA
# (vssmbase_dp06_e241_ema), the yaml's 0.5 run reached 83.2, not the published 83.7
_RELEASED_V0_TINY = {
    "drop_path": (0.1, f"{_README}: the released vssmtiny_dp01_e292_woema (the yaml's 0.2 was not what ran)"),
    "model_ema_decay": (None, f"{_README}: the released VMamba-T v0 was trained without EMA ('woema')"),
    "model_ema_eval": (False, f"{_README}: no EMA"),
}
_RELEASED_V0_BASE = {"drop_path": (0.6, f"{_README}: the released vssmbase_dp06_e241_ema (the yaml's 0.5 gave 83.2)")}

# name -> (official config, drop path, the release is the EMA's)
_VARIANTS = {
    "vmamba_tiny": ("vmambav0_tiny_224", 0.2, False),
    "vmamba_small": ("vmambav0_small_224", 0.3, True),
    "vmamba_base": ("vmambav0_base_224", 0.5, True),
    "vmamba2_tiny": ("vmambav2v_tiny_224", 0.2, False),
    "vmamba2_small": ("vmambav2v_small_224", 0.3, False),
    "vmamba2_base": ("vmambav2v_base_224", 0.5, False),
    "vmamba2_tiny_s2l5": ("vmambav2_tiny_224", 0.2, True),
    "vmamba2_small_s2l5": ("vmambav2_small_224", 0.3, True),
    "vmamba2_base_s2l5": ("vmambav2_base_224", 0.6, True),
}

_DIFFERENCES = (
    "best_by: VMamba keeps every epoch's checkpoint and no best one; best.pth here is picked by the metric of the "
    "weights the recipe releases",
)
_V2V = ("vmamba2_tiny", "vmamba2_small", "vmamba2_base")
_V2V_RELEASE = ("release_weights: the README does not say whether the s1l8/s1l20 numbers are the EMA's; ours "
                "releases the model's weights",)

RECIPES = {
    name: recipe(
        name,
        _SHARED,
        {"drop_path": (rate, f"{_YAML.format(config)} MODEL.DROP_PATH_RATE")},
        _EMA_RELEASE if ema_release else {},
        {"vmamba_tiny": _RELEASED_V0_TINY, "vmamba_base": _RELEASED_V0_BASE}.get(name, {}),
        differences=_DIFFERENCES + (_V2V_RELEASE if name in _V2V else ()),
        title=config,
    )
    for name, (config, rate, ema_release) in _VARIANTS.items()
}

# detection configs: v0 sets none and inherits 0.2 from mmdet's Swin-T Mask R-CNN config; v2 (s2l5):
# detection/configs/vssm1/mask_rcnn_vssm_fpn_coco_{tiny,small,base}.py; v2v (s1l8/s1l20): no configs of their own,
# the v2 sizes' values
_DET = "MzeroMiko/VMamba:detection/configs/"
DENSE = {
    "vmamba_tiny": DenseSettings(0.2, f"{_DET}vssm/ (inherits mmdet's Swin-T 0.2)"),
    "vmamba_small": DenseSettings(0.2, f"{_DET}vssm/ (inherits mmdet's Swin-T 0.2)"),
    "vmamba_base": DenseSettings(0.2, f"{_DET}vssm/ (inherits mmdet's Swin-T 0.2)"),
    "vmamba2_tiny_s2l5": DenseSettings(0.2, f"{_DET}vssm1/mask_rcnn_vssm_fpn_coco_tiny.py"),
    "vmamba2_small_s2l5": DenseSettings(0.3, f"{_DET}vssm1/mask_rcnn_vssm_fpn_coco_small.py"),
    "vmamba2_base_s2l5": DenseSettings(0.6, f"{_DET}vssm1/mask_rcnn_vssm_fpn_coco_base.py"),
    "vmamba2_tiny": DenseSettings(0.2, f"{_DET}vssm1/mask_rcnn_vssm_fpn_coco_tiny.py (the v2 size's value)"),
    "vmamba2_small": DenseSettings(0.3, f"{_DET}vssm1/mask_rcnn_vssm_fpn_coco_small.py (the v2 size's value)"),
    "vmamba2_base": DenseSettings(0.6, f"{_DET}vssm1/mask_rcnn_vssm_fpn_coco_base.py (the v2 size's value)"),
}

"""PlainMamba's official ImageNet-1k recipes (ChenhongyiYang/PlainMamba: plain_mamba_configs/
plain_mamba_l{1,2,3}_in1k_300e.py on mmcls, with configs/_base_/schedules/imagenet_bs1024_adamw_swin.py and
configs/_base_/datasets/imagenet_bs64_swin_224_lmdb.py).

8 GPUs x 256 = 2048 images a step at lr 5e-4 x 2048/512, a per-iteration cosine to 1% of the peak, a linear warmup
from 0.1% of the peak (15 epochs for L1, 20 for L2/L3), clipping at norm 5 (L1) or 1 (L2/L3), fp16 AMP for L1 only,
EMA (momentum 1e-4) for L2/L3 only.
"""

from __future__ import annotations

from . import DenseSettings, recipe

_CFG = "ChenhongyiYang/PlainMamba:plain_mamba_configs/plain_mamba_{}_in1k_300e.py"
_SCHED = "ChenhongyiYang/PlainMamba:configs/_base_/schedules/imagenet_bs1024_adamw_swin.py"
_DATA = "ChenhongyiYang/PlainMamba:configs/_base_/datasets/imagenet_bs64_swin_224_lmdb.py"
_ALL = _CFG.format("l*")

_SHARED = {
    "epochs": (300, f"{_SCHED} runner max_epochs"),
    "cooldown_epochs": (0, f"{_SCHED}: no cooldown"),
    "lr_scale": ("linear", f"{_ALL}: the lr is written as 5e-4 x 256 x world_size / 512 (the linear rule)"),
    "scale_warmup_and_min_lr": (True, f"{_SCHED}: min_lr_ratio and warmup_ratio are fractions of the lr"),
    "opt": ("adamw", f"{_SCHED} optimizer type AdamW"),
    "opt_eps": (1e-8, f"{_SCHED} optimizer eps"),
    "opt_betas": ((0.9, 0.999), f"{_SCHED} optimizer betas"),
    "momentum": (0.9, "unused by AdamW"),
    "weight_decay": (0.05, f"{_SCHED} optimizer weight_decay"),
    "no_weight_decay": ("mmcls", f"{_SCHED} paramwise_cfg (norms, biases, custom_keys)"),
    "sched": ("cosine", f"{_SCHED} lr_config policy CosineAnnealing"),
    "sched_on_updates": (True, f"{_SCHED} lr_config by_epoch=False"),
    "warmup_prefix": (False, f"{_SCHED}: mmcv's cosine runs over all iterations, the warmup at its start"),
    "warmup_staircase": (False, f"{_SCHED}: warmup by iteration"),
    "clip_mode": ("norm", f"{_ALL} optimizer_config grad_clip max_norm"),
    "drop": (0.0, f"{_ALL}: no head dropout"),
    "model_ema_decay": (None, f"{_CFG.format('l1')}: no EMA hook"),
    "model_ema_eval": (False, f"{_CFG.format('l1')}: no EMA hook"),
    "best_by": ("model", f"{_ALL}: no save_best; epoch_N.pth every 5 epochs, the README evaluates epoch_300.pth"),
    "release_weights": ("model", "ChenhongyiYang/PlainMamba:README.md: the trained model"),
    "smoothing": (0.1, f"{_ALL} head loss LabelSmoothLoss label_smooth_val 0.1"),
    "aug_repeats": (0, f"{_DATA}: no repeated augmentation"),
    "aa": ("rand-m9-mstd0.5-inc1", f"{_DATA} RandAugment rand_increasing_policies, 2 ops, magnitude 9, std 0.5"),
    "color_jitter": (0.0, f"{_DATA}: no ColorJitter in the pipeline"),
    "scale": ((0.08, 1.0), f"{_DATA} RandomResizedCrop default scale"),
    "ratio": ((3 / 4, 4 / 3), f"{_DATA} RandomResizedCrop default ratio"),
    "hflip": (0.5, f"{_DATA} RandomFlip flip_prob 0.5"),
    "train_interpolation": ("bicubic", f"{_DATA} RandomResizedCrop backend pillow, interpolation bicubic"),
    "reprob": (0.25, f"{_DATA} RandomErasing erase_prob 0.25"),
    "remode": ("pixel", f"{_DATA} RandomErasing mode rand (per-pixel normal noise: timm's pixel mode)"),
    "recount": (1, f"{_DATA} RandomErasing: one box"),
    "mixup": (0.8, f"{_ALL} train_cfg BatchMixup alpha 0.8, prob 0.5"),
    "cutmix": (1.0, f"{_ALL} train_cfg BatchCutMix alpha 1.0, prob 0.5"),
    "mixup_prob": (1.0, f"{_ALL}: the two probabilities add up to 1, so every batch gets one of them"),
    "mixup_switch_prob": (0.5, f"{_ALL}: BatchCutMix prob 0.5"),
    "mixup_mode": ("batch", f"{_ALL}: mmcls mixes whole batches"),
}

_VARIANTS = {  # GPUs (the config's world_size), drop path, warmup epochs, clip max_norm, EMA, fp16
    "l1": (8, 0.2, 15, 5.0, False, True),
    "l2": (8, 0.2, 20, 1.0, True, False),
    "l3": (4, 0.4, 20, 1.0, True, False),
}


_EMA_AFTER_250 = ("EMA (L2/L3): the committed EMACheckpointHook has no momentum from epoch 250 on (its "
                  "_decay_momentum returns None there, so that code cannot have run to 300); ours keeps 1e-4 to the "
                  "end",)


def _variant(size: str, gpus: int, drop_path: float, warmup: int, clip: float, ema: bool, fp16: bool) -> dict:
    cfg = _CFG.format(size)
    lr = 5e-4 * 256 * gpus / 512
    values = {
        "global_batch_size": (256 * gpus, f"{cfg}: samples_per_gpu 256 x world_size {gpus}"),
        "lr": (lr, f"{cfg} optimizer lr 5e-4 x 256 x {gpus} / 512"),
        "warmup_lr": (lr * 1e-3, f"{_SCHED} warmup_ratio 1e-3 x the lr"),
        "min_lr": (lr * 1e-2, f"{_SCHED} min_lr_ratio 1e-2 x the lr"),
        "drop_path": (drop_path, f"{cfg} model backbone drop_path_rate"),
        "warmup_epochs": (warmup, f"{cfg} lr_config warmup_iters (warmup_by_epoch)"),
        "clip_grad": (clip, f"{cfg} optimizer_config grad_clip max_norm"),
        "amp": ("fp16" if fp16 else None, f"{cfg} runner {'AmpEpochBasedRunner' if fp16 else 'EpochBasedRunner'}"),
    }
    if ema:
        values.update({
            "model_ema_decay": (0.9999, f"{cfg} custom_hooks EMACheckpointHook momentum 1e-4"),
            "model_ema_eval": (True, f"{cfg} EMACheckpointHook swaps the EMA weights in before evaluation"),
            "best_by": ("ema", f"{cfg}: the EMA weights are the ones evaluated (no save_best)"),
            "release_weights": ("ema", f"{cfg}: the EMA weights are swapped in before each epoch_N.pth is saved"),
        })
    return values


_DIFFERENCES = (
    "warmup: mmcv multiplies the cosine's lr by the warmup factor; timm's warmup goes linearly from warmup_lr to "
    "the lr (the cosine at the end of warmup is 0.99 of the peak, so the two differ by under 1%)",
    "RandAugment: mmcls's rand_increasing_policies op set runs as timm's rand-m9-mstd0.5-inc1 (the same 2 ops at "
    "magnitude 9 +- 0.5 with increasing severities; mmcls's op list is close to, not the same as, timm's)",
    "remode: mmcls's RandomErasing mode 'rand' draws per-pixel normal noise in pixel space before Normalize, clipped "
    "to 0-255; timm's 'pixel' mode draws it after Normalize, unclipped",
    "best_by: mmcls keeps no best checkpoint (epoch_N.pth every 5 epochs, the README evaluates the last); best.pth "
    "here is picked by the metric of the weights the recipe releases, and last.pth is the official one",
    "EMA (L2/L3): mmcls evaluates only the EMA weights; we validate the model too (summary.csv has both)",
)

RECIPES = {
    f"plainmamba_{size}": recipe(f"plainmamba_{size}", _SHARED, _variant(size, *values),
                                 differences=_DIFFERENCES + (_EMA_AFTER_250 if values[4] else ()),
                                 title=f"plain_mamba_{size}_in1k_300e")
    for size, values in _VARIANTS.items()
}

_DET = "ChenhongyiYang/PlainMamba:downstream/mmdetection/plain_mamba_det_configs/maskrcnn/{}_maskrcnn_1x.py"
DENSE = {
    f"plainmamba_{size}": DenseSettings(rate, _DET.format(size) + " (with a ViT-Adapter there; here the simple "
                                        "feature pyramid)")
    for size, rate in (("l1", 0.1), ("l2", 0.2), ("l3", 0.3))
}

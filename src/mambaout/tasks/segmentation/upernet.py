"""UperNet (Xiao et al., 2018) as mmsegmentation defines it: the head the MambaOut paper's ADE20K numbers come from.

mmseg's `UPerHead`: a pyramid pooling module (scales 1, 2, 3, 6) on the last level, 1x1 lateral convs on the
others, a top-down path adding each coarser level (bilinear, align_corners=False) before a 3x3 conv, every level
resized to the finest (stride 4) and fused by a 3x3 bottleneck; then Dropout2d(0.1) and a 1x1 classifier. Its
auxiliary `FCNHead` (one 3x3 conv, concat_input=False, 256 channels) reads stage 3 and is weighted 0.4 in training.
Every conv is mmseg's ConvModule: conv without bias, BatchNorm, ReLU. Module names follow mmseg's (`psp_modules`,
`lateral_convs`, `fpn_convs`, `fpn_bottleneck`, `conv_seg`, `.conv`/`.bn`), so an mmseg UperNet head's weights
load by name. The head is tested against transformers' port of mmseg's head with the same weights.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import nn

from ...dense.backbone import DenseBackbone, create_backbone

POOL_SCALES = (1, 2, 3, 6)


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize with align_corners=False, as every resize in mmseg's UperNet."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ConvModule(nn.Sequential):
    """mmcv's ConvModule with BatchNorm and ReLU: conv (no bias) -> bn -> activate."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")  # mmcv's ConvModule init


class DecodeHead(nn.Module):
    """mmseg's BaseDecodeHead: every head ends in cls_seg, Dropout2d then a 1x1 conv to the classes."""

    def _classifier(self, channels: int, num_classes: int, dropout: float) -> None:
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)  # mmseg's BaseDecodeHead init
        nn.init.zeros_(self.conv_seg.bias)

    def cls_seg(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))


class UperHead(DecodeHead):
    """mmseg's UPerHead: maps at strides 4/8/16/32 -> class logits at stride 4."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = POOL_SCALES, dropout: float = 0.1) -> None:
        super().__init__()
        last = in_channels[-1]
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvModule(last, channels, 1)) for scale in pool_scales
        )
        self.bottleneck = ConvModule(last + len(pool_scales) * channels, channels, 3, padding=1)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3, padding=1) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3, padding=1)
        self._classifier(channels, num_classes, dropout)

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [resize(module(x), x.shape[-2:]) for module in self.psp_modules]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(features[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(features[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: each level gets the coarser one added
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([outs[0], *(resize(out, size) for out in outs[1:])], dim=1))
        return self.cls_seg(fused)


class FCNHead(DecodeHead):
    """mmseg's FCNHead as UperNet's auxiliary head: one 3x3 ConvModule (concat_input=False), then cls_seg."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, in_index: int = 2,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.in_index = in_index
        self.convs = nn.Sequential(ConvModule(in_channels, channels, 3, padding=1))
        self._classifier(channels, num_classes, dropout)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.cls_seg(self.convs(features[self.in_index]))


class Segmenter(nn.Module):
    """mmseg's EncoderDecoder: backbone -> UperNet head (+ the auxiliary FCN head in training), logits resized to
    the input. `forward(images)` gives (N, classes, H, W) logits; `with_aux=True` also gives the auxiliary ones."""

    def __init__(self, backbone: DenseBackbone, num_classes: int, channels: int = 512, aux_channels: int = 256,
                 aux_index: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.decode_head = UperHead(backbone.out_channels, num_classes, channels, dropout=dropout)
        self.auxiliary_head = FCNHead(backbone.out_channels[aux_index], num_classes, aux_channels, aux_index, dropout)

    def forward(self, images: torch.Tensor, with_aux: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(images)
        size = images.shape[-2:]
        logits = resize(self.decode_head(features), size)
        if not with_aux:
            return logits
        return logits, resize(self.auxiliary_head(features), size)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{name}" for name in self.backbone.no_weight_decay()}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm over the global batch of all processes on CPU (gloo), where torch's SyncBatchNorm does not run.

    Two all-reduces (sums and counts, then squared deviations), differentiable through
    `torch.distributed.nn.functional.all_reduce`, so the gradient is the global batch's, as with SyncBatchNorm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        count = torch.full((1,), x.numel() / channels, dtype=x.dtype, device=x.device)
        sums = dist_fn.all_reduce(torch.cat([x.sum(dim=(0, 2, 3)), count]))
        total = sums[-1]
        mean = sums[:channels] / total
        centred = x - mean.view(1, -1, 1, 1)
        var = dist_fn.all_reduce(centred.square().sum(dim=(0, 2, 3))) / total
        if self.track_running_stats:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * total / max(float(total) - 1, 1.0), momentum)
                self.num_batches_tracked.add_(1)
        y = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1) if self.affine else y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm2d -> torch's SyncBatchNorm on GPUs, `CPUSyncBatchNorm` on CPU (weights and statistics kept)."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CPUSyncBatchNorm):
        synced = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                  module.track_running_stats)
        synced.load_state_dict(module.state_dict())
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device))
    return module


def create_segmenter(
    backbone_name: str,
    num_classes: int,
    pretrained: bool = False,
    checkpoint: str | os.PathLike | None = None,
    drop_path_rate: float | None = None,
    channels: int = 512,
    aux_channels: int = 256,
    dropout: float = 0.1,
    **overrides: Any,
) -> Segmenter:
    """UperNet on a registered backbone; `pretrained`/`checkpoint` are classification weights for the backbone."""
    backbone = create_backbone(backbone_name, out_indices=(0, 1, 2, 3), pretrained=pretrained, checkpoint=checkpoint,
                               drop_path_rate=drop_path_rate, **overrides)
    return Segmenter(backbone, num_classes, channels, aux_channels, dropout=dropout)

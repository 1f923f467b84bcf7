"""ViTDet's simple feature pyramid (Li et al., 2022): multi-scale maps from a plain model's single-stride map.

Finer strides come from stride-2 transposed convolutions (each halving the channels, LayerNorm + GELU between two
of them), the model's own stride is kept as it is, coarser strides come from max pooling. ViTDet builds it from the
last block alone; the strides are computed from the model's patch stride, so a stride-8 model (Vim's "+" weights)
gets one deconvolution fewer and one more pooling, as in Vim's segmentation backbone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import LayerNorm2d
from torch import nn


def _doublings(numerator: int, denominator: int) -> int:
    """log2(numerator / denominator), which must be a whole power of two."""
    ratio, rest = divmod(numerator, denominator)
    if rest or ratio < 1 or ratio & (ratio - 1):
        raise ValueError(f"strides must differ by powers of two, got {numerator} and {denominator}")
    return ratio.bit_length() - 1


def _upsampler(dim: int, steps: int) -> tuple[nn.Module, int]:
    """`steps` stride-2 transposed convolutions, each halving the channels; LayerNorm + GELU between them."""
    layers: list[nn.Module] = []
    for step in range(steps):
        if step > 0:
            layers += [LayerNorm2d(dim), nn.GELU()]
        layers.append(nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2))
        dim //= 2
    return nn.Sequential(*layers), dim


class SimpleFeaturePyramid(nn.Module):
    """One (B, dim, H, W) map at `source_stride` -> one map per entry of `strides`, each a power-of-two multiple."""

    def __init__(self, dim: int, source_stride: int, strides: Sequence[int]):
        super().__init__()
        self.strides = list(strides)
        self.out_channels: list[int] = []
        levels: list[nn.Module] = []
        for stride in self.strides:
            if stride < source_stride:
                steps = _doublings(source_stride, stride)
                if dim % 2**steps:
                    raise ValueError(f"{dim} channels cannot be halved {steps} times for stride {stride}")
                level, channels = _upsampler(dim, steps)
            elif stride == source_stride:
                level, channels = nn.Identity(), dim
            else:
                factor = 2 ** _doublings(stride, source_stride)
                level, channels = nn.MaxPool2d(kernel_size=factor, stride=factor), dim
            levels.append(level)
            self.out_channels.append(channels)
        self.levels = nn.ModuleList(levels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [level(x) for level in self.levels]

"""Any registered classification model as a dense-prediction backbone: NCHW maps at strides 4/8/16/32.

A thin adapter over the model's own `forward_intermediates`, never a copy of it. Hierarchical models (MambaOut,
VMamba, ...) give their stage outputs; plain models (DeiT, Vim, ...: every feature_info entry at one stride) give
their last block, through the model's final norm, to ViTDet's simple feature pyramid. Which one a model is, is read
from its feature_info, so a new family needs no change here. Each output gets a channels-first LayerNorm, as the
official dense backbones add (VMamba's `outnorm{i}`); the input is zero-padded (bottom and right) to the stride
multiple the model needs and the outputs are cropped back to ceil(size / stride), so any input size works.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from timm.models._features import feature_take_indices
from torch import nn

from ..checkpoints import Weights, check_fits
from ..factory import create_model, is_plain, read_requested_weights
from ..registry import get_model_spec
from .simple_pyramid import SimpleFeaturePyramid

log = logging.getLogger("mambaout")

PYRAMID_STRIDES = (4, 8, 16, 32)  # what the simple feature pyramid's four levels give a plain model

def dense_drop_path_rate(name: str) -> float:
    """The drop path rate for fine-tuning `name` on a dense task: its registration's `dense` settings."""
    return get_model_spec(name).dense.drop_path


def _ceil_div(size: int, stride: int) -> int:
    return -(-size // stride)


class DenseBackbone(nn.Module):
    """A classification model (head dropped) giving one normalised NCHW map per output index.

    `out_indices` index the model's stages (hierarchical models) or the pyramid levels at strides 4/8/16/32
    (plain models). Attributes: `out_channels`, `strides`; `body` is the pruned model itself.
    """

    def __init__(self, model: nn.Module, out_indices: Sequence[int] = (0, 1, 2, 3), norm_outputs: bool = True):
        super().__init__()
        out_indices = list(out_indices)
        if not out_indices or out_indices != sorted(set(out_indices)):
            raise ValueError(f"out_indices must be distinct and increasing, got {out_indices}")
        feature_info = list(model.feature_info)
        self.plain = is_plain(model)
        self.pyramid: SimpleFeaturePyramid | None = None
        if self.plain:
            _check_range(out_indices, len(PYRAMID_STRIDES), "pyramid levels")
            # the last block, through the model's final norm: the scale its pretrained head saw
            self.take = _prune(model, [len(feature_info) - 1], prune_norm=False)
            last = feature_info[-1]
            self.pyramid = SimpleFeaturePyramid(
                last["num_chs"], last["reduction"], [PYRAMID_STRIDES[i] for i in out_indices]
            )
            self.out_channels = list(self.pyramid.out_channels)
            self.strides = list(self.pyramid.strides)
        else:
            _check_range(out_indices, len(feature_info), "stages")
            self.take = _prune(model, out_indices, prune_norm=True)
            self.out_channels = [feature_info[i]["num_chs"] for i in out_indices]
            self.strides = [feature_info[i]["reduction"] for i in out_indices]
        self.body = model
        self.norms = nn.ModuleList(LayerNorm2d(c) if norm_outputs else nn.Identity() for c in self.out_channels)
        patch_size = getattr(model, "patch_size", 1)
        patch_size = patch_size if isinstance(patch_size, int) else 1
        finest = min(info["reduction"] for info in feature_info)
        self.size_multiple = math.lcm(
            *self.strides,
            *(info["reduction"] for info in feature_info),
            getattr(model, "input_multiple", 1),
            patch_size,
        )
        # overlapping patches (Vim's "+" models: 16-pixel patches every 8) give (size - patch) / stride + 1 of them,
        # one row short of size / stride: one more multiple of padding covers that at every level
        self.extra_padding = self.size_multiple if patch_size > finest else 0

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        height, width = x.shape[-2:]
        pad_h = -height % self.size_multiple + self.extra_padding
        pad_w = -width % self.size_multiple + self.extra_padding
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        features = self.body.forward_intermediates(
            x, indices=self.take, norm=self.plain, stop_early=True, output_fmt="NCHW", intermediates_only=True
        )
        if self.pyramid is not None:
            features = self.pyramid(features[-1])
        return [
            norm(feature[..., : _ceil_div(height, stride), : _ceil_div(width, stride)])
            for feature, stride, norm in zip(features, self.strides, self.norms)
        ]

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The model's own no-decay names that the pruned body still has, prefixed as this module names them."""
        kept = dict(self.body.named_parameters())
        return {f"body.{name}" for name in self.body.no_weight_decay() if name in kept}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.body.set_grad_checkpointing(enable)


def _check_range(out_indices: list[int], count: int, what: str) -> None:
    if out_indices[0] < 0 or out_indices[-1] >= count:
        raise ValueError(f"out_indices {out_indices} out of range: the model has {count} {what}")


def _prune(model: nn.Module, indices: list[int], prune_norm: bool) -> list[int]:
    """Drop the head (and what comes after the last index) where the family can; the indices to take."""
    if hasattr(model, "prune_intermediate_layers"):
        return model.prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=True)
    model.reset_classifier(0)  # a family without timm's pruning hook: at least its classifier goes
    return feature_take_indices(len(model.feature_info), indices)[0]


def create_backbone(
    name: str,
    out_indices: Sequence[int] = (0, 1, 2, 3),
    norm_outputs: bool = True,
    pretrained: bool = False,
    checkpoint: str | os.PathLike | None = None,
    drop_path_rate: float | None = None,
    **overrides: Any,
) -> DenseBackbone:
    """A registered model as a dense backbone, with classification weights (release or `checkpoint`) if asked.

    forward(x: (N, 3, H, W), any H and W) -> list of (N, out_channels[i], ceil(H / strides[i]), ...) maps.
    """
    weights = read_requested_weights(name, pretrained, checkpoint)
    model = create_model(name, drop_path_rate=drop_path_rate, **overrides)
    classifier_keys = set(model.state_dict())
    backbone = DenseBackbone(model, out_indices, norm_outputs)
    if weights is not None:
        _load_into_body(backbone.body, weights, classifier_keys - set(backbone.body.state_dict()))
    cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in ("num_classes", "classifier", "label_names")}
    backbone.pretrained_cfg = backbone.default_cfg = cfg
    backbone.model_name = name
    return backbone


def _load_into_body(body: nn.Module, weights: Weights, unused: set[str]) -> None:
    """Load strictly, except for the keys of what the backbone dropped (the head, later stages): said once."""
    dropped = sorted(key for key in weights.state_dict if key in unused)
    state_dict = {k: v for k, v in weights.state_dict.items() if k not in unused}
    check_fits(body.state_dict(), state_dict, weights.source)
    body.load_state_dict(state_dict, strict=True)
    if dropped:
        shown = ", ".join(dropped[:6]) + (", ..." if len(dropped) > 6 else "")
        log.info(
            "%s: %d keys the backbone does not use (the classification head, anything after the last output) "
            "dropped: %s",
            weights.source,
            len(dropped),
            shown,
        )

"""Mask R-CNN with an FPN over any registered backbone: torchvision's detector, our backbone.

torchvision's `MaskRCNN` supplies the RPN, anchors (32-512 pixels over five levels, ratios 0.5/1/2), RoIAlign, box
and mask heads, losses and post-processing, and `GeneralizedRCNNTransform`, which resizes each image so that its short
side is `min_size` and its long side at most `max_size` (mmdetection's keep-ratio (1333, 800) rescale), normalises it
with the backbone's pretrained mean/std and pads the batch to a multiple of 32 (or of the backbone's own stride
multiple, whichever is coarser); predictions come back in the original image's pixels. torchvision's
`FeaturePyramidNetwork` (256 channels, a max-pooled fifth level, as mmdetection's FPN with num_outs=5) sits on the
backbone's four maps at strides 4/8/16/32 (`create_backbone`: stage outputs, or ViTDet's simple feature pyramid for
plain models).

`num_classes` counts object classes without the background, as mmdetection and COCO's 80 do; labels are 1..K.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ...dense.backbone import DenseBackbone, create_backbone
from ...engine.checkpointing import load_trained_model

FPN_CHANNELS = 256
PAD_MULTIPLE = 32  # mmdetection's and torchvision's batch padding


class FeaturePyramidBackbone(nn.Module):
    """A `DenseBackbone` and torchvision's FPN: an image batch -> {'0'..'3', 'pool'} maps of `out_channels`."""

    def __init__(self, body: DenseBackbone, channels: int = FPN_CHANNELS) -> None:
        super().__init__()
        if len(body.out_channels) != 4:
            raise ValueError(f"Mask R-CNN takes four backbone maps, got {len(body.out_channels)}")
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.out_channels), channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = channels

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        if self.fpn.layer_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last):
            images = images.contiguous(memory_format=torch.channels_last)  # the model was made channels-last
        return self.fpn(OrderedDict((str(i), feature) for i, feature in enumerate(self.body(images))))


class MaskRCNNDetector(MaskRCNN):
    """torchvision's MaskRCNN plus the timm-style hooks the training engine uses."""

    backbone: FeaturePyramidBackbone

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Position embeddings and the like (full parameter names); norms and biases are 1-D and skipped anyway."""
        return {f"backbone.body.{name}" for name in self.backbone.body.no_weight_decay()}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.body.set_grad_checkpointing(enable)


def create_detector(
    backbone_name: str,
    num_classes: int,
    *,
    pretrained_backbone: bool = False,
    backbone_checkpoint: str | os.PathLike | None = None,
    drop_path_rate: float | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    fpn_channels: int = FPN_CHANNELS,
    box_head_dim: int = 1024,
    mask_head_channels: int = 256,
    **maskrcnn_options: Any,
) -> MaskRCNNDetector:
    """Mask R-CNN + FPN on a registered backbone, `num_classes` object classes (background not counted).

    `pretrained_backbone` / `backbone_checkpoint`: classification weights for the backbone (the head is dropped).
    The heads are torchvision's (and mmdetection's): two 1024-wide fully connected layers for boxes, four 3x3
    convolutions of 256 channels and a deconvolution for masks; the widths are parameters for small experiments.
    `maskrcnn_options` go to torchvision's `MaskRCNN` (e.g. box_score_thresh, box_detections_per_img,
    rpn_post_nms_top_n_train, rpn_batch_size_per_image, box_batch_size_per_image).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    body = create_backbone(backbone_name, out_indices=(0, 1, 2, 3), pretrained=pretrained_backbone,
                           checkpoint=backbone_checkpoint, drop_path_rate=drop_path_rate)
    cfg = body.pretrained_cfg
    classes = num_classes + 1  # torchvision counts the background
    roi = 7  # MaskRCNN's default box RoIAlign output size
    detector = MaskRCNNDetector(
        FeaturePyramidBackbone(body, fpn_channels),
        num_classes=None,
        min_size=min_size,
        max_size=max_size,
        image_mean=list(cfg["mean"]),
        image_std=list(cfg["std"]),
        box_head=TwoMLPHead(fpn_channels * roi * roi, box_head_dim),
        box_predictor=FastRCNNPredictor(box_head_dim, classes),
        mask_head=MaskRCNNHeads(fpn_channels, [mask_head_channels] * 4, 1),
        mask_predictor=MaskRCNNPredictor(mask_head_channels, mask_head_channels, classes),
        **maskrcnn_options,
    )
    detector.transform.size_divisible = math.lcm(PAD_MULTIPLE, body.size_multiple)
    detector.backbone_name = backbone_name
    return detector


def load_detector(path: str | os.PathLike, use_ema: bool = False,
                  **maskrcnn_options: Any) -> tuple[MaskRCNNDetector, dict[str, Any]]:
    """The detector a `detect-train` checkpoint holds (on CPU, eval mode) and its metadata ('detector' key).

    The RPN and post-processing settings are the training run's (as its validation used them) unless overridden."""

    def build(meta: dict[str, Any]) -> MaskRCNNDetector:
        long_side, short_side = meta["img_scale"]
        return create_detector(meta["backbone"], len(meta["class_names"]), min_size=short_side, max_size=long_side,
                               **meta["architecture"], **{**meta.get("inference", {}), **maskrcnn_options})

    return load_trained_model(path, "DetectionTask", "detector", "detect-train", build, use_ema)

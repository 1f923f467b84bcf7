"""Segmentation inference as mmseg's EncoderDecoder does it: whole image or sliding window, multi-scale with flip;
dataset evaluation (mIoU, reduced over torchrun ranks); loading a trained segmenter; colour-coded predictions.

Whole: the image resized to the test scale (keeping its aspect ratio, long side <= 2048 and short side <= 512 for
ADE20K) goes through the model at once. Slide: 512x512 windows every 341 pixels (the last window of a row or column
is moved back to end at the edge), logits averaged where windows overlap (mmseg's slide_inference). Either way the
logits are resized to the original image (bilinear) and softmaxed; multi-scale resizes to each ratio of the test
scale, flip adds the mirrored image, and the probabilities are averaged (mmseg's aug_test).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from ...data.images import ImageReadError, readable_images
from ...data.segmentation import normalize, rescale_size
from ...data.sizes import Size, height_width
from ...engine import distributed
from ...engine.checkpointing import load_trained_model
from ...engine.device import resolve_device
from .metrics import SegmentationAreas, SegmentationMetrics
from .upernet import Segmenter, create_segmenter, resize

log = logging.getLogger("mambaout")

MULTI_SCALE_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
MODES = ("whole", "slide")


@dataclass(frozen=True)
class InferenceSettings:
    """How an image is segmented: mode, test scale, scale ratios, flip, sliding-window size and stride."""

    mode: str = "whole"
    img_scale: tuple[int, int] = (2048, 512)
    ratios: tuple[float, ...] = (1.0,)
    flip: bool = False
    crop_size: Size = 512  # one number (a square) or (H, W), as mmseg's crop_size; held as (H, W)
    stride: Size = 341
    window_batch: int = 4  # windows run through the model together (memory vs. speed; the result is the same)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        object.__setattr__(self, "crop_size", height_width(self.crop_size))
        object.__setattr__(self, "stride", height_width(self.stride))
        if not all(0 < step <= side for step, side in zip(self.stride, self.crop_size)):
            raise ValueError(f"the window stride {self.stride} must be in 1..the window size {self.crop_size} "
                             "(H and W)")


def slide_logits(model: nn.Module, image: torch.Tensor, crop_size: Size, stride: Size,
                 window_batch: int = 4) -> torch.Tensor:
    """mmseg's slide_inference: (1, 3, H, W) -> (1, classes, H, W) logits averaged over the overlapping windows
    (window and stride: one number, or (H, W))."""
    height, width = image.shape[-2:]
    (window_h, window_w), (stride_h, stride_w) = height_width(crop_size), height_width(stride)
    crop_h, crop_w = min(window_h, height), min(window_w, width)
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    boxes = []
    for row in range(rows):
        for col in range(cols):
            bottom, right = min(row * stride_h + crop_h, height), min(col * stride_w + crop_w, width)
            boxes.append((bottom - crop_h, right - crop_w))
    summed: torch.Tensor | None = None
    count = torch.zeros(1, 1, height, width, device=image.device)
    for start in range(0, len(boxes), window_batch):
        chunk = boxes[start : start + window_batch]
        windows = torch.cat([image[..., top : top + crop_h, left : left + crop_w] for top, left in chunk])
        logits = model(windows).float()
        if summed is None:
            summed = torch.zeros(1, logits.shape[1], height, width, device=image.device)
        for (top, left), window_logits in zip(chunk, logits):
            summed[0, :, top : top + crop_h, left : left + crop_w] += window_logits
            count[..., top : top + crop_h, left : left + crop_w] += 1
    return summed / count


def image_logits(model: nn.Module, image: torch.Tensor, settings: InferenceSettings) -> torch.Tensor:
    """Logits of a (1, 3, h, w) image at its own size, whole or by sliding window."""
    if settings.mode == "slide":
        return slide_logits(model, image, settings.crop_size, settings.stride, settings.window_batch)
    return model(image).float()


@torch.no_grad()
def segment_probabilities(model: nn.Module, image: torch.Tensor, settings: InferenceSettings) -> torch.Tensor:
    """Class probabilities (1, classes, H, W) of a normalized (1, 3, H, W) image at its original size, averaged over
    the test scales (and flips)."""
    height, width = image.shape[-2:]
    total: torch.Tensor | None = None
    count = 0
    for ratio in settings.ratios:
        scale = (int(settings.img_scale[0] * ratio), int(settings.img_scale[1] * ratio))
        new_w, new_h = rescale_size(width, height, scale)
        scaled = resize(image, (new_h, new_w)) if (new_h, new_w) != (height, width) else image
        for flip in (False, True) if settings.flip else (False,):
            logits = image_logits(model, scaled.flip(-1) if flip else scaled, settings)
            probs = resize(logits, (height, width)).softmax(dim=1)
            probs = probs.flip(-1) if flip else probs
            total = probs if total is None else total + probs
            count += 1
    return total / count


def evaluate_segmentation(
    model: nn.Module,
    loader: Any,
    num_classes: int,
    settings: InferenceSettings,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
    class_names: Sequence[str] | None = None,
) -> tuple[SegmentationMetrics, int]:
    """mIoU/mAcc/aAcc over every image `loader` gives this process, summed over all processes (every process gets
    the same result), and the number of images skipped on all processes."""
    was_training = model.training
    model.eval()
    areas = SegmentationAreas(num_classes)
    skipped = 0
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        for batch in tqdm(loader, desc="eval", disable=not progress, leave=False):
            skipped += len(batch.skipped)
            for image, label in zip(batch.inputs, batch.targets):
                probs = segment_probabilities(model, image[None].to(device), settings)
                areas.add(probs.argmax(dim=1)[0].cpu(), label)
    model.train(was_training)
    areas.reduce(device)
    skipped = int(distributed.all_reduce_sum([skipped], device)[0])
    return areas.result(class_names), skipped


# ---- trained segmenters


def load_segmenter(path: str | os.PathLike, use_ema: bool = False) -> tuple[Segmenter, dict[str, Any]]:
    """The segmenter a `segment-train` checkpoint holds (on CPU, eval mode) and its metadata."""

    def build(meta: dict[str, Any]) -> Segmenter:
        return create_segmenter(meta["backbone"], len(meta["class_names"]), channels=meta["channels"],
                                aux_channels=meta["aux_channels"])

    return load_trained_model(path, "SegmentationTask", "segmenter", "segment-train", build, use_ema)


def palette(num_classes: int) -> np.ndarray:
    """A fixed colour per class ((classes, 3) uint8, well spread, the same in every run); ignore is black."""
    rng = np.random.default_rng(2024)
    colours = rng.integers(40, 256, size=(max(num_classes, 1), 3), dtype=np.uint8)
    return colours[:num_classes]


def label_image(labels: np.ndarray, num_classes: int) -> Image.Image:
    """A palette PNG: pixel values are class indices (255 ignore), the palette shows them in colour."""
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:num_classes] = palette(num_classes)
    image.putpalette(table.flatten().tolist())
    return image


def overlay(image: Image.Image, labels: np.ndarray, num_classes: int, alpha: float = 0.5) -> Image.Image:
    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[:num_classes] = palette(num_classes)
    painted = colours[labels]
    blended = (1 - alpha) * np.asarray(image, dtype=np.float32) + alpha * painted
    return Image.fromarray(blended.round().astype(np.uint8))


@dataclass
class SegmentedImage:
    path: str
    labels: Path  # colour-coded label map (palette PNG whose values are the class indices)
    overlay: Path
    classes: dict[str, float]  # share of the image per predicted class, largest first

    def format(self) -> str:
        shares = ", ".join(f"{name} {share:.0%}" for name, share in list(self.classes.items())[:5])
        return f"{self.path}: {shares}\n  {self.labels}\n  {self.overlay}"


def segment_files(
    model: Segmenter,
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    class_names: Sequence[str],
    settings: InferenceSettings,
    device: str | torch.device | None = None,
) -> tuple[list[SegmentedImage], list[ImageReadError]]:
    """Segment image files, writing `<stem>_labels.png` and `<stem>_overlay.png` for each into `out_dir`."""
    device = resolve_device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.to(device).eval()
    done, errors = [], []
    for path, image in readable_images(tqdm(paths, desc="segment", disable=not sys.stderr.isatty(), leave=False),
                                       errors):
        pixels = normalize(torch.from_numpy(np.array(image)).permute(2, 0, 1))[None].to(device)
        labels = segment_probabilities(model, pixels, settings).argmax(dim=1)[0].cpu().numpy()
        stem = Path(path).stem
        label_path, overlay_path = out / f"{stem}_labels.png", out / f"{stem}_overlay.png"
        label_image(labels, len(class_names)).save(label_path)
        overlay(image, labels, len(class_names)).save(overlay_path)
        counts = np.bincount(labels.flatten(), minlength=len(class_names)) / labels.size
        shares = {class_names[i]: float(counts[i]) for i in np.argsort(-counts) if counts[i] > 0}
        done.append(SegmentedImage(path, label_path, overlay_path, shares))
    return done, errors


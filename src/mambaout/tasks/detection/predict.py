"""Detections for image files, drawn with torchvision's `draw_segmentation_masks` and `draw_bounding_boxes`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ...data.images import ImageReadError, readable_images
from ...engine.device import resolve_device
from .coco_eval import MASK_THRESHOLD


@dataclass
class Detection:
    label: str
    score: float
    box: list[float]  # x1, y1, x2, y2 in pixels of the original image
    mask_area: int  # pixels of the binarised mask


@dataclass
class ImageDetections:
    path: str
    drawn: str  # the PNG written
    detections: list[Detection]

    def to_dict(self) -> dict:
        return {"image": self.path, "drawn": self.drawn, "detections": [vars(d) for d in self.detections]}

    def format(self) -> str:
        return "\n".join([f"{self.path}: {len(self.detections)} detections -> {self.drawn}",
                          *(f"  {d.score:6.3f}  {d.label:<16} box {d.box}" for d in self.detections)])


def _colours(count: int) -> list[tuple[int, int, int]]:
    """A fixed, well spread colour per class."""
    generator = torch.Generator().manual_seed(2024)
    return [tuple(int(v) for v in torch.randint(40, 256, (3,), generator=generator)) for _ in range(count)]


@torch.no_grad()
def detect_image(model: nn.Module, image: Image.Image, class_names: Sequence[str], score_threshold: float,
                 device: torch.device) -> tuple[list[Detection], Image.Image]:
    """The detections of one image above `score_threshold`, and the image with them drawn."""
    pixels = F.pil_to_tensor(image)
    output = model.eval()([pixels.to(device).float().div_(255)])[0]
    keep = output["scores"] >= score_threshold
    boxes, scores = output["boxes"][keep].float().cpu(), output["scores"][keep].float().cpu()
    labels = output["labels"][keep].cpu()
    masks = (output["masks"][keep][:, 0] > MASK_THRESHOLD).cpu()
    names = [class_names[label - 1] for label in labels.tolist()]
    detections = [Detection(name, round(float(s), 4), [round(float(v), 1) for v in b], int(m.sum()))
                  for name, s, b, m in zip(names, scores, boxes, masks)]
    palette = _colours(len(class_names))
    colours = [palette[label - 1] for label in labels.tolist()]
    drawn = pixels
    if len(detections):
        drawn = draw_segmentation_masks(drawn, masks, alpha=0.45, colors=colours)
        texts = [f"{d.label} {d.score:.2f}" for d in detections]
        drawn = draw_bounding_boxes(drawn, boxes, labels=texts, colors=colours, width=2)
    return detections, F.to_pil_image(drawn)


def detect_files(model: nn.Module, paths: Sequence[str | os.PathLike], class_names: Sequence[str],
                 out: str | os.PathLike, score_threshold: float = 0.5, device: str | None = None
                 ) -> tuple[list[ImageDetections], list[ImageReadError]]:
    """Detect in each file, write `<out>/<stem>_detections.png`; unreadable files are returned as errors."""
    target = resolve_device(device)
    model = model.to(target)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    done: list[ImageDetections] = []
    errors: list[ImageReadError] = []
    for path, image in readable_images(paths, errors):
        detections, drawn = detect_image(model, image, class_names, score_threshold, target)
        written = folder / f"{Path(path).stem}_detections.png"
        drawn.save(written)
        done.append(ImageDetections(path, str(written), detections))
    return done, errors

"""A small instance-segmentation dataset drawn procedurally, in COCO's format, deterministic from a seed.

Each image is a textured background with a few filled shapes (disks, boxes, triangles, stars), each class with its
own colour (jittered per instance) and stripe texture. Shapes may overlap: a later shape hides part of an earlier one,
and the earlier instance's mask is what stays visible. Masks are exact: every shape is rasterised by pycocotools from
its polygon and the image is painted from those very masks. Unoccluded shapes are annotated with their polygon,
occluded ones with a compressed RLE of the visible part, and some training images get a crowd region (a cluster of
dots, `iscrowd` 1, uncompressed RLE as COCO writes crowds), so the real COCO reading path is exercised. Category ids
have a gap, as COCO's do.

Written as `annotations/instances_{train,val}.json` and `{train,val}/*.jpg`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

# (category id, name, RGB colour in 0-1); the ids skip 4, as COCO's skip some
CATEGORIES: tuple[tuple[int, str, tuple[float, float, float]], ...] = (
    (1, "disk", (0.9, 0.2, 0.2)),
    (2, "box", (0.2, 0.75, 0.25)),
    (3, "triangle", (0.2, 0.35, 0.95)),
    (5, "star", (0.95, 0.8, 0.15)),
)
CLASS_NAMES = tuple(name for _, name, _ in CATEGORIES)
SPLITS = ("train", "val")
MIN_VISIBLE = 0.4  # a shape that would hide more than 60% of an earlier one is drawn elsewhere


def _polygon(rng: np.random.Generator, kind: str, cx: float, cy: float, radius: float) -> list[float]:
    turn = rng.uniform(0, 2 * math.pi)
    if kind == "disk":
        angles = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        along, across = radius * np.cos(angles), radius * rng.uniform(0.7, 1.0) * np.sin(angles)
        xs = along * math.cos(turn) - across * math.sin(turn)
        ys = along * math.sin(turn) + across * math.cos(turn)
    else:
        count = {"box": 4, "triangle": 3, "star": 10}[kind]
        angles = turn + np.linspace(0, 2 * math.pi, count, endpoint=False)
        radii = np.where(np.arange(count) % 2 == 1, 0.45, 1.0) if kind == "star" else np.ones(count)
        xs, ys = radius * radii * np.cos(angles), radius * radii * np.sin(angles)
    return [float(v) for point in zip(cx + xs, cy + ys) for v in point]


def _rasterize(polygon: list[float], height: int, width: int) -> np.ndarray:
    return mask_utils.decode(mask_utils.frPyObjects([polygon], height, width)[0]).astype(bool)


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's crowd encoding: run lengths over the column-major pixels, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    angle, period = rng.uniform(0, math.pi), rng.uniform(5, 10)
    return 0.85 + 0.15 * np.sin(2 * math.pi * (xs * math.cos(angle) + ys * math.sin(angle)) / period)


def draw_scene(rng: np.random.Generator, width: int, height: int, crowd: bool = False
               ) -> tuple[Image.Image, list[dict[str, Any]]]:
    """One image and its instances: dicts with category_id, mask (visible part), polygon (None if occluded), iscrowd."""
    full: list[np.ndarray] = []
    shapes: list[tuple[int, list[float]]] = []
    side = min(width, height)
    wanted = int(rng.integers(1, 5))
    for _ in range(wanted * 6):
        if len(shapes) == wanted:
            break
        category = int(rng.integers(len(CATEGORIES)))
        radius = rng.uniform(0.12, 0.3) * side
        if shapes and rng.random() < 0.5:  # next to an earlier shape, so that instances overlap
            anchor = np.array(shapes[int(rng.integers(len(shapes)))][1]).reshape(-1, 2).mean(0)
            cx, cy = anchor + rng.uniform(-1.2, 1.2, size=2) * radius
        else:
            cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
        polygon = _polygon(rng, CATEGORIES[category][1], cx, cy, radius)
        mask = _rasterize(polygon, height, width)
        if mask.sum() < 16:
            continue
        visible_after = [earlier & ~mask for earlier in _visible(full)]
        if any(after.sum() < MIN_VISIBLE * whole.sum() for after, whole in zip(visible_after, full)):
            continue
        full.append(mask)
        shapes.append((category, polygon))

    pixels = np.empty((height, width, 3))
    base = rng.uniform(0.25, 0.75, size=3)
    pixels[:] = base * (0.8 + 0.4 * np.linspace(0, 1, width))[None, :, None]
    instances: list[dict[str, Any]] = []
    if crowd:
        category = int(rng.integers(len(CATEGORIES)))
        dots = np.zeros((height, width), dtype=bool)
        ys, xs = np.mgrid[0:height, 0:width]
        cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
        for _ in range(12):
            x, y = cx + rng.normal(0, side * 0.08), cy + rng.normal(0, side * 0.08)
            dots |= (xs - x) ** 2 + (ys - y) ** 2 <= (side * 0.025) ** 2
        full.insert(0, dots)
        shapes.insert(0, (category, None))
    for (category, polygon), visible, whole in zip(shapes, _visible(full), full):
        colour = np.clip(np.array(CATEGORIES[category][2]) + rng.uniform(-0.1, 0.1, size=3), 0, 1)
        pixels[whole] = (colour * _texture(rng, height, width)[..., None])[whole]
        occluded = bool((whole & ~visible).any())
        instances.append({"category_id": CATEGORIES[category][0], "mask": visible,
                          "polygon": None if occluded else polygon, "iscrowd": int(polygon is None)})
    pixels = np.clip(pixels + rng.normal(0, 0.03, size=pixels.shape), 0, 1)
    return Image.fromarray((pixels * 255).round().astype(np.uint8)), instances


def _visible(masks: list[np.ndarray]) -> list[np.ndarray]:
    """Each mask minus every mask drawn after it."""
    covered = np.zeros_like(masks[0]) if masks else None
    visible = []
    for mask in reversed(masks):
        visible.append(mask & ~covered)
        covered = covered | mask
    return visible[::-1]


def _annotation(instance: dict[str, Any], annotation_id: int, image_id: int) -> dict[str, Any]:
    mask = instance["mask"]
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if instance["iscrowd"]:
        segmentation: Any = _uncompressed_rle(mask)
    elif instance["polygon"] is not None:
        segmentation = [instance["polygon"]]
    else:
        segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": instance["category_id"],
        "segmentation": segmentation,
        "area": float(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "iscrowd": instance["iscrowd"],
    }


def write_coco_dataset(
    out: str | os.PathLike, train_images: int = 64, val_images: int = 16, size: tuple[int, int] = (128, 96),
    seed: int = 0, crowd_every: int = 4,
) -> Path:
    """Write the dataset in COCO's format under `out` (`size` is width, height); the same seed gives the same files.

    Every `crowd_every`-th image (0: none) gets a crowd region besides its shapes.
    """
    root = Path(out)
    rng = np.random.default_rng(seed)
    width, height = size
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, name, _ in CATEGORIES]
    annotation_id = 1
    for split, count in zip(SPLITS, (train_images, val_images)):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            image_id = index + 1
            crowd = crowd_every > 0 and index % crowd_every == crowd_every - 1
            image, instances = draw_scene(rng, width, height, crowd)
            name = f"{split}_{image_id:06d}.jpg"
            image.save(folder / name, quality=95)
            images.append({"id": image_id, "file_name": name, "width": width, "height": height})
            for instance in instances:
                if instance["mask"].any():
                    annotations.append(_annotation(instance, annotation_id, image_id))
                    annotation_id += 1
        document = {"info": {"description": "mambaout synthetic shapes", "seed": seed}, "images": images,
                    "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(document), encoding="utf-8")
    return root

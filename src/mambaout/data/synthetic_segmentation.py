"""A small semantic-segmentation dataset drawn procedurally, in ADE20K's layout, deterministic from a seed.

Each image is a scene of textured regions: a background split into two classes by a wavy horizon, then a few
ellipses and polygons, each class with its own texture (gradient, noise, stripes, checks, dots, ...) and a colour
that varies from image to image. Thin outlines around the shapes are label 0 ("other"), which reduce_zero_label turns
into ignored pixels as in ADE20K. Written as `images/{training,validation}/*.jpg`, `annotations/.../*.png` and
`classes.txt`, so training and evaluation read it through the real ADE20K path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

Texture = Callable[[np.random.Generator, np.ndarray, np.ndarray], np.ndarray]  # (rng, ys, xs) -> (H, W) in [0, 1]


def _gradient(rng, ys, xs):
    return ys / max(ys.max(), 1) * rng.uniform(0.6, 1.0)


def _fine_noise(rng, ys, xs):
    return rng.random(ys.shape)


def _stripes(rng, ys, xs):
    period = rng.uniform(4, 7)
    return 0.5 + 0.5 * np.sin(2 * math.pi * ys / period + rng.uniform(0, 2 * math.pi))


def _checks(rng, ys, xs):
    cell = int(rng.integers(4, 7))
    return ((ys // cell + xs // cell) % 2).astype(np.float64)


def _dots(rng, ys, xs):
    cell = int(rng.integers(5, 8))
    dy, dx = ys % cell - cell / 2, xs % cell - cell / 2
    return (dy * dy + dx * dx < (cell / 3) ** 2).astype(np.float64)


def _diagonal(rng, ys, xs):
    period = rng.uniform(5, 9)
    return 0.5 + 0.5 * np.sin(2 * math.pi * (xs + ys) / period)


# class name, texture, base colour (RGB 0-1) and the colour the texture blends towards
CLASSES: tuple[tuple[str, Texture, tuple[float, ...], tuple[float, ...]], ...] = (
    ("sky", _gradient, (0.45, 0.65, 0.95), (0.85, 0.9, 1.0)),
    ("grass", _fine_noise, (0.15, 0.55, 0.15), (0.35, 0.75, 0.25)),
    ("water", _stripes, (0.1, 0.3, 0.7), (0.3, 0.6, 0.85)),
    ("brick", _checks, (0.6, 0.25, 0.15), (0.8, 0.45, 0.3)),
    ("sand", _dots, (0.85, 0.75, 0.45), (0.6, 0.5, 0.25)),
    ("fabric", _diagonal, (0.55, 0.2, 0.6), (0.9, 0.6, 0.9)),
)
CLASS_NAMES = tuple(name for name, *_ in CLASSES)
SPLITS = ("training", "validation")


def _paint(rng: np.random.Generator, index: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    _, texture, base, accent = CLASSES[index]
    jitter = rng.uniform(-0.12, 0.12, size=3)
    low, high = np.clip(np.array(base) + jitter, 0, 1), np.clip(np.array(accent) + jitter, 0, 1)
    t = texture(rng, ys, xs)[..., None]
    return (1 - t) * low + t * high


def draw_scene(rng: np.random.Generator, width: int, height: int) -> tuple[Image.Image, Image.Image]:
    """One RGB image and its label map (0 = other, class i is i + 1)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    upper, lower = rng.choice(len(CLASSES), size=2, replace=False)
    horizon = height * rng.uniform(0.3, 0.7) + height * 0.08 * np.sin(xs[0] / width * rng.uniform(2, 8))
    labels = np.where(ys < horizon[None, :], upper + 1, lower + 1).astype(np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        shape = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(shape)
        cx, cy = rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height
        rx, ry = rng.uniform(0.1, 0.3) * width, rng.uniform(0.1, 0.3) * height
        if rng.random() < 0.5:
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255, outline=128, width=1)
        else:
            sides = int(rng.integers(3, 7))
            turn = rng.uniform(0, 2 * math.pi)
            points = [(cx + rx * math.cos(turn + 2 * math.pi * k / sides), cy + ry * math.sin(turn + 2 * math.pi * k /
                       sides)) for k in range(sides)]
            draw.polygon(points, fill=255, outline=128)
        region = np.asarray(shape)
        labels[region == 255] = rng.integers(len(CLASSES)) + 1
        labels[region == 128] = 0  # the outline: unlabelled, as ADE20K's boundaries often are
    pixels = np.zeros((height, width, 3))
    for index in range(len(CLASSES)):
        where = labels == index + 1
        if where.any():
            pixels[where] = _paint(rng, index, ys, xs)[where]
    outline = labels == 0
    pixels[outline] = rng.uniform(0.0, 1.0, size=(int(outline.sum()), 3))
    pixels = np.clip(pixels + rng.normal(0, 0.03, size=pixels.shape), 0, 1)
    return Image.fromarray((pixels * 255).round().astype(np.uint8)), Image.fromarray(labels, mode="L")


def write_segmentation_dataset(
    out: str | os.PathLike, train_images: int = 64, val_images: int = 16, size: tuple[int, int] = (96, 64),
    seed: int = 0,
) -> Path:
    """Write the dataset in ADE20K's layout (plus classes.txt) under `out`; the same seed gives the same files."""
    root = Path(out)
    rng = np.random.default_rng(seed)
    width, height = size
    for split, count in zip(SPLITS, (train_images, val_images)):
        images, annotations = root / "images" / split, root / "annotations" / split
        images.mkdir(parents=True, exist_ok=True)
        annotations.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, labels = draw_scene(rng, width, height)
            name = f"synthetic_{split}_{i:05d}"
            image.save(images / f"{name}.jpg", quality=95)
            labels.save(annotations / f"{name}.png")
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in CLASS_NAMES), encoding="utf-8")
    return root

"""A small image-classification dataset drawn procedurally: shapes and textures, deterministic from a seed.

Written in ImageNet's folder layout (split/class_name/image.png) so the real data path is exercised.
Each image varies colour, position, scale, rotation, background and noise, so it takes real learning.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

Painter = Callable[[ImageDraw.ImageDraw, np.random.Generator, int, tuple[int, int, int]], None]


def _centre_and_radius(rng: np.random.Generator, size: int) -> tuple[float, float, float]:
    r = rng.uniform(0.18, 0.32) * size
    cx, cy = rng.uniform(r, size - r, size=2)
    return cx, cy, r


def _polygon(sides: int, star: bool = False) -> Painter:
    def paint(draw, rng, size, colour):
        cx, cy, r = _centre_and_radius(rng, size)
        turn = rng.uniform(0, 2 * math.pi)
        count = sides * (2 if star else 1)
        points = []
        for k in range(count):
            radius = r * (0.45 if star and k % 2 else 1.0)
            angle = turn + 2 * math.pi * k / count
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=colour)

    return paint


def _circle(draw, rng, size, colour):
    cx, cy, r = _centre_and_radius(rng, size)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)


def _ring(draw, rng, size, colour):
    cx, cy, r = _centre_and_radius(rng, size)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colour, width=max(2, int(r * 0.3)))


def _cross(draw, rng, size, colour):
    cx, cy, r = _centre_and_radius(rng, size)
    w = max(2, int(r * 0.35))
    draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
    draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)


def _stripes(angle_choices: tuple[float, ...]) -> Painter:
    def paint(draw, rng, size, colour):
        angle = rng.choice(angle_choices) + rng.uniform(-0.15, 0.15)
        period = rng.uniform(0.12, 0.22) * size
        dx, dy = math.cos(angle), math.sin(angle)
        for k in range(-2 * size, 2 * size, max(2, int(period))):
            # a long thick line perpendicular to (dx, dy), offset k along it
            ox, oy = size / 2 + k * dx, size / 2 + k * dy
            draw.line(
                (ox - 2 * size * dy, oy + 2 * size * dx, ox + 2 * size * dy, oy - 2 * size * dx),
                fill=colour,
                width=max(1, int(period / 2)),
            )

    return paint


def _checker(draw, rng, size, colour):
    cell = int(rng.uniform(0.12, 0.25) * size) or 1
    ox, oy = rng.integers(0, cell, size=2)
    for i in range(-1, size // cell + 2):
        for j in range(-1, size // cell + 2):
            if (i + j) % 2 == 0:
                x, y = ox + i * cell, oy + j * cell
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=colour)


def _dots(draw, rng, size, colour):
    for _ in range(int(rng.integers(8, 16))):
        r = rng.uniform(0.03, 0.06) * size
        cx, cy = rng.uniform(r, size - r, size=2)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)


CLASSES: dict[str, Painter] = {
    "circle": _circle,
    "ring": _ring,
    "square": _polygon(4),
    "triangle": _polygon(3),
    "star": _polygon(5, star=True),
    "cross": _cross,
    "stripes_horizontal": _stripes((0.0, math.pi)),
    "stripes_diagonal": _stripes((math.pi / 4, -math.pi / 4)),
    "checkerboard": _checker,
    "dots": _dots,
}


def render(class_name: str, seed: int, size: int = 64) -> Image.Image:
    """One image of a class; the same (class, seed, size) always gives the same pixels."""
    rng = np.random.default_rng(seed)
    background = tuple(int(c) for c in rng.integers(0, 256, size=3))
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    while sum(abs(a - b) for a, b in zip(colour, background)) < 150:  # keep the figure visible
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    img = Image.new("RGB", (size, size), background)
    CLASSES[class_name](ImageDraw.Draw(img), rng, size, colour)
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, rng.uniform(4, 16), size=(size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def write_dataset(
    root: str | Path,
    train_per_class: int = 200,
    val_per_class: int = 50,
    size: int = 64,
    seed: int = 0,
    classes: tuple[str, ...] = tuple(CLASSES),
    test_per_class: int = 0,
) -> Path:
    """Write root/{train,val[,test]}/<class>/<n>.png; seeds never repeat across splits."""
    root = Path(root)
    splits = [("train", train_per_class, 0), ("val", val_per_class, train_per_class)]
    if test_per_class:
        splits.append(("test", test_per_class, train_per_class + val_per_class))
    for split, count, offset in splits:
        for class_index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(count):
                image_seed = (seed * 1_000_003 + class_index) * 100_003 + offset + n
                render(name, image_seed, size).save(folder / f"{name}_{offset + n:05d}.png")
    return root

"""Effective receptive field (ERF) heat maps, measured as RepLKNet (Ding et al., 2022) and the MambaOut paper do.

For each image: take one feature map (NCHW, from `forward_intermediates`; the last stage by default), sum the
positive part of the features at its central position over channels, backpropagate to the input and keep the
absolute input gradient summed over the colour channels. The maps are averaged over the images.

Choices, against RepLKNet's `erf/visualize_erf.py`: the target is the same (ReLU of the centre features, summed),
because a plain sum lets channels of opposite sign cancel. The gradient's absolute value is kept where RepLKNet keeps
its positive part, so pixels that push the centre down count as contributing too. The display and the area ratios
use RepLKNet's scaling in its order: log10(mean + 1), then divided by the maximum.
Token models (DeiT, Vim) give their patch-token grid: the centre patch token of the chosen block.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..data.images import ImageReadError, open_rgb
from ..data.synthetic import CLASSES, render
from ..errors import InputSizeError, MambaoutError, check_input_size
from ..tasks.classification.predict import eval_transform

logger = logging.getLogger("mambaout")

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)  # RepLKNet reports the area holding 20%, 30%, 50% and 99% of the contribution


class ERFError(MambaoutError, ValueError):
    """An ERF request that cannot be carried out (bad stage, no usable images, wrong output name)."""

    exit_code = 12


@dataclass(frozen=True)
class FeatureLevel:
    """The feature map an ERF is taken from."""

    index: int
    module: str
    stride: int


@dataclass(frozen=True)
class ERFReport:
    model: str
    input_size: tuple[int, int]
    level: FeatureLevel
    num_images: int
    source: str
    area_ratios: dict[float, float]
    png: Path
    npy: Path

    def format(self) -> str:
        height, width = self.input_size
        lines = [
            f"{self.model} ERF at {height}x{width}, {self.level.module} (stride {self.level.stride}), "
            f"{self.num_images} {self.source}",
            "high-contribution area ratio (smallest square around the ERF's centroid holding t of the log-scaled sum):",
        ]
        lines += [f"  {t:>4.0%}: {ratio:.4f}" for t, ratio in self.area_ratios.items()]
        lines.append(f"wrote {self.png} and {self.npy}")
        return "\n".join(lines)


def feature_level(model: nn.Module, stage: int = -1) -> FeatureLevel:
    """The feature map `stage` names (negative counts from the end), checked against the model's feature_info."""
    info = model.feature_info
    if not -len(info) <= stage < len(info):
        kind = info[0]["module"].split(".")[0]
        raise ERFError(
            f"stage {stage} is out of range: {_name(model)} has {len(info)} feature maps ({kind} 0..{len(info) - 1}, "
            f"or -{len(info)}..-1 counted from the end)"
        )
    index = stage % len(info)
    return FeatureLevel(index, info[index]["module"], info[index]["reduction"])


def input_gradient(model: nn.Module, image: torch.Tensor, level: FeatureLevel) -> torch.Tensor:
    """|d relu(centre features).sum() / d image| summed over colour channels: an (H, W) map for one (3, H, W) image."""
    x = image.unsqueeze(0).detach().requires_grad_(True)
    with torch.enable_grad():
        features = model.forward_intermediates(x, indices=[level.index], intermediates_only=True, stop_early=True)[0]
        fh, fw = features.shape[-2:]
        target = features[0, :, fh // 2, fw // 2].relu().sum()
        (grad,) = torch.autograd.grad(target, x)
    return grad[0].abs().sum(0)


def _accumulate(
    model: nn.Module, images: Iterable[torch.Tensor], level: FeatureLevel, total: int | None = None
) -> tuple[np.ndarray | None, int]:
    """(sum of the per-image maps, None when there was no image; number of images)."""
    param = next(model.parameters())
    total_map, count, shape = None, 0, None
    for image in tqdm(images, total=total, desc="ERF", unit="image", disable=not sys.stdout.isatty()):
        if shape is None:
            shape = tuple(image.shape)
            _check_model_input(model, shape[-2:])
        elif tuple(image.shape) != shape:
            raise ERFError(f"images must all have one shape: got {tuple(image.shape)} after {shape}")
        grad = input_gradient(model, image.to(param.device, param.dtype), level).double().cpu().numpy()
        total_map = grad if total_map is None else total_map + grad
        count += 1
    return total_map, count


def effective_receptive_field(
    model: nn.Module, images: Iterable[torch.Tensor], stage: int = -1, total: int | None = None
) -> np.ndarray:
    """The ERF: the (H, W) mean over `images` (each (3, H, W), normalised) of the input-gradient map.

    The model is put in eval mode. `total` only sizes the progress bar.
    """
    model.eval()
    total_map, count = _accumulate(model, images, feature_level(model, stage), total)
    if total_map is None:
        raise ERFError("no images to measure the effective receptive field on")
    return total_map / count


def log_scale(erf: np.ndarray) -> np.ndarray:
    """RepLKNet's display scaling: log10(erf + 1), divided by its maximum (all zeros stay zeros)."""
    scaled = np.log10(erf + 1.0)
    peak = scaled.max()
    return scaled / peak if peak > 0 else scaled


def centroid(erf: np.ndarray) -> tuple[float, float]:
    """The (y, x) centre of mass of a non-negative map (the middle of the image for an all-zero one)."""
    total = erf.sum()
    if total <= 0:
        return ((erf.shape[0] - 1) / 2, (erf.shape[1] - 1) / 2)
    rows, cols = erf.sum(1), erf.sum(0)
    return float(rows @ np.arange(len(rows)) / total), float(cols @ np.arange(len(cols)) / total)


def area_ratio(scaled: np.ndarray, threshold: float) -> float:
    """Fraction of the image covered by the smallest square around the map's centroid holding `threshold` of its sum.

    The square grows one pixel per side as in RepLKNet's get_rectangle, clipped at the borders; 0.0 for an all-zero
    map. RepLKNet centres it on the image centre; the centroid is that for a centred ERF, and it also follows the
    half-stride offset that padded strided convolutions or a patch grid put between the image centre and the
    receptive field of the centre feature (at 224, MambaOut's centre feature is centred on pixel 96, not 112).
    """
    height, width = scaled.shape
    total = scaled.sum()
    if total <= 0:
        return 0.0
    cy, cx = (round(c) for c in centroid(scaled))
    # The square's sum for every half-side r at once, from a summed-area table.
    table = np.pad(scaled, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    r = np.arange(max(height, width))
    top, bottom = np.maximum(cy - r, 0), np.minimum(cy + r + 1, height)
    left, right = np.maximum(cx - r, 0), np.minimum(cx + r + 1, width)
    sums = table[bottom, right] - table[top, right] - table[bottom, left] + table[top, left]
    first = int(np.argmax(sums >= threshold * total - 1e-12 * total))
    return float((bottom[first] - top[first]) * (right[first] - left[first]) / (height * width))


def plot_erf(scaled: np.ndarray, path: str | os.PathLike, title: str) -> None:
    """Save a log-scaled ERF as a PNG heat map with a colour bar (matplotlib's Agg canvas, no pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 5.4), dpi=120)
    ax = fig.add_subplot()
    image = ax.imshow(scaled, cmap="RdYlGn", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    fig.colorbar(image, ax=ax, label="log10(ERF + 1), scaled to max 1")
    fig.tight_layout()
    fig.savefig(path, format="png")


def generated_images(model: nn.Module, size: tuple[int, int], count: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """`count` procedural images (mambaout.data.synthetic, every class in turn) through the model's eval transform."""
    transform = eval_transform(model, size)
    names = list(CLASSES)
    for k in range(count):
        yield transform(render(names[k % len(names)], seed + k, max(size)))


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Every non-hidden file under `folder`, sorted; a missing or empty folder is an error."""
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"no such folder: {os.fspath(folder)!r}")
    if not root.is_dir():
        raise ERFError(f"expected a folder of images, {os.fspath(folder)!r} is a file")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise ERFError(f"the folder {os.fspath(folder)!r} holds no files")
    return files


def folder_images(
    model: nn.Module, files: Sequence[str | os.PathLike], size: tuple[int, int], count: int
) -> Iterator[torch.Tensor]:
    """The first `count` readable images of `files` through the model's eval transform; unreadable ones are skipped."""
    transform = eval_transform(model, size)
    produced = 0
    for path in files:
        if produced == count:
            return
        try:
            image = open_rgb(path, exif_transpose=True)
        except ImageReadError as e:
            logger.warning("skipped: %s", e)
            continue
        produced += 1
        yield transform(image)


def save_erf(
    model: nn.Module,
    out: str | os.PathLike,
    images: str | os.PathLike | None = None,
    size: tuple[int, int] | None = None,
    num_images: int = 50,
    stage: int = -1,
    device: str | torch.device = "cpu",
) -> ERFReport:
    """Measure a model's ERF on a folder of images (or generated ones), write `out` (PNG) and its .npy beside it.

    The .npy holds the raw map (the mean over images, before log scaling); the report holds RepLKNet's
    high-contribution area ratios of the log-scaled map.
    """
    png = Path(out)
    if png.suffix.lower() != ".png":
        raise ERFError(f"the output must be a .png file, got {os.fspath(out)!r}")
    if num_images < 1:
        raise ERFError(f"the number of images must be at least 1, got {num_images}")
    size = tuple(size) if size else tuple(model.pretrained_cfg["input_size"][1:])
    check_input_size(*size)
    level = feature_level(model, stage)
    model = model.eval().to(device)
    if images is None:
        source = f"generated images (no image folder given: procedural shapes from {render.__module__})"
        stream, total = generated_images(model, size, num_images), num_images
    else:
        files = image_files(images)
        source = f"images from {os.fspath(images)}"
        stream, total = folder_images(model, files, size, num_images), min(num_images, len(files))
    total_map, count = _accumulate(model, stream, level, total)
    if total_map is None:  # every file was tried and skipped
        raise ERFError(f"none of the {len(files)} files in {os.fspath(images)!r} is a readable image")
    erf = total_map / count
    scaled = log_scale(erf)

    name = _name(model)
    png.parent.mkdir(parents=True, exist_ok=True)
    npy = png.with_suffix(".npy")
    np.save(npy, erf)
    kind = "generated images" if images is None else "images"
    title = f"{name}: ERF at {size[0]}x{size[1]}\n{level.module} (stride {level.stride}), {count} {kind}"
    plot_erf(scaled, png, title)
    ratios = {t: area_ratio(scaled, t) for t in THRESHOLDS}
    return ERFReport(name, size, level, count, source, ratios, png, npy)


def _check_model_input(model: nn.Module, size: Sequence[int]) -> None:
    """Token models need whole patches; say so here rather than from inside the patch embedding."""
    patch = getattr(model, "patch_size", None)
    if isinstance(patch, int) and (size[0] % patch or size[1] % patch):
        raise InputSizeError(
            f"{_name(model)} needs an input height and width divisible by its patch size {patch}, "
            f"got {size[0]}x{size[1]}"
        )


def _name(model: nn.Module) -> str:
    return getattr(model, "model_name", type(model).__name__)

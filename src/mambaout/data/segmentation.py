"""Semantic-segmentation data: ADE20K's layout and a generic one, with mmseg's ADE20K training pipeline.

Layouts (found automatically):

- ADE20K (ADEChallengeData2016): `images/{training,validation}/*.jpg` and `annotations/{training,validation}/*.png`;
  its 150 class names (or `classes.txt` at the root); label 0 is "other" and `reduce_zero_label` is on.
- generic: `classes.txt` (one class name per line; line i is label value i) and `<split>/images/*` with
  `<split>/labels/*.png` (splits `train` and `val`); `reduce_zero_label` is off.

Label maps are single-channel PNGs of class indices (mode L or P); 255 is ignored. With `reduce_zero_label`,
0 becomes 255 and every other value goes down by one (mmseg's). What cannot be used is skipped and listed
(`Skipped`): an image without a label file, an unreadable image or label, an RGB label map, an image and label of
different sizes, label values outside the classes. A missing folder or class list, or no pairs at all, is an error.

Training pipeline (mmseg's ADE20K config): resize to a random ratio in [0.5, 2.0] of (2048, 512) keeping the aspect
ratio, random 512x512 crop at most 75% one class (10 tries), flip with probability 0.5, PhotoMetricDistortion,
normalize, pad to the crop size (image 0, label 255). Random draws use torch's generator, which the engine saves
and DataLoader workers derive from, so runs resume exactly. Images are resized bilinearly without antialiasing,
labels with nearest neighbours, as mmcv's cv2 resize does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import tv_tensors
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .folder import DatasetError, Skipped
from .images import ImageReadError, open_rgb
from .sizes import Size, height_width

IGNORE_INDEX = 255
CLASSES_FILE = "classes.txt"
# mmseg's img_norm_cfg for every ADE20K config (ImageNet's statistics on the 0-255 scale)
MEAN = tuple(255 * m for m in IMAGENET_DEFAULT_MEAN)
STD = tuple(255 * s for s in IMAGENET_DEFAULT_STD)

# mmseg's ADE20KDataset classes, in label order (label value i + 1 before reduce_zero_label)
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
_IMAGE_EXTENSIONS = frozenset(IMG_EXTENSIONS)


@dataclass(frozen=True)
class SegmentationLayout:
    """Where a split's images and labels are, the class names, and the layout's reduce_zero_label default."""

    kind: str  # "ade20k" or "generic"
    root: Path
    class_names: tuple[str, ...]
    reduce_zero_label: bool
    train_split: str
    val_split: str

    def folders(self, split: str) -> tuple[Path, Path]:
        if self.kind == "ade20k":
            return self.root / "images" / split, self.root / "annotations" / split
        return self.root / split / "images", self.root / split / "labels"


def find_layout(root: str | os.PathLike) -> SegmentationLayout:
    """The layout of `root` (ADE20K's or the generic one), or a DatasetError saying what is expected."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data folder {str(root)!r} {'is not a folder' if root.exists() else 'does not exist'}")
    names_file = root / CLASSES_FILE
    if (root / "images").is_dir() and (root / "annotations").is_dir():
        names = read_class_names(names_file) if names_file.is_file() else ADE20K_CLASSES
        return SegmentationLayout("ade20k", root, names, True, "training", "validation")
    if names_file.is_file():
        return SegmentationLayout("generic", root, read_class_names(names_file), False, "train", "val")
    raise DatasetError(
        f"{str(root)!r} is neither in ADE20K's layout (images/<split>/*.jpg and annotations/<split>/*.png) nor in "
        f"the generic one ({CLASSES_FILE} with <split>/images/* and <split>/labels/*.png)"
    )


def read_class_names(path: Path) -> tuple[str, ...]:
    names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if not names:
        raise DatasetError(f"{str(path)!r} names no classes (one class name per line)")
    if len(names) > IGNORE_INDEX:
        raise DatasetError(f"{str(path)!r} names {len(names)} classes; label maps hold at most {IGNORE_INDEX}")
    return names


class SegmentationDataset(torch.utils.data.Dataset):
    """(image, label) pairs of one split; `transform(image: PIL RGB, label: (H, W) uint8) -> sample`.

    Items that cannot be used come back as `Skipped` (read time) or are listed in `.skipped` (scan time).
    """

    def __init__(self, layout: SegmentationLayout, split: str, transform: Any = None,
                 reduce_zero_label: bool | None = None) -> None:
        self.layout, self.split, self.transform = layout, split, transform
        self.class_names = layout.class_names
        self.reduce_zero_label = layout.reduce_zero_label if reduce_zero_label is None else reduce_zero_label
        image_dir, label_dir = layout.folders(split)
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                raise DatasetError(f"no {split!r} split in {str(layout.root)!r}: {str(folder)!r} is not a folder")
        labels = {p.stem: p for p in _files(label_dir) if p.suffix.lower() == ".png"}
        self.samples: list[tuple[str, str]] = []
        self.skipped: list[Skipped] = []
        for path in _files(image_dir):
            if path.suffix.lower() not in _IMAGE_EXTENSIONS:
                continue
            label = labels.get(path.stem)
            if label is None:
                self.skipped.append(Skipped(str(path), f"no label map {path.stem}.png in {label_dir}"))
            else:
                self.samples.append((str(path), str(label)))
        if not self.samples:
            raise DatasetError(f"no image with a label map in {str(image_dir)!r} and {str(label_dir)!r}")

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> tuple[Image.Image, np.ndarray] | Skipped:
        """The image and its label map (reduced, checked), or why they cannot be used."""
        image_path, label_path = self.samples[index]
        try:
            image = open_rgb(image_path)
            label = read_label(label_path)
        except ImageReadError as e:
            return Skipped(e.path, e.reason)
        if label.shape != (image.height, image.width):
            return Skipped(image_path, f"image is {image.width}x{image.height} but its label map is "
                                       f"{label.shape[1]}x{label.shape[0]}")
        if self.reduce_zero_label:
            label = label - 1  # uint8: 0 wraps to 255 (ignore), as mmseg's reduce_zero_label
            label[label == 254] = IGNORE_INDEX
        outside = np.unique(label[(label != IGNORE_INDEX) & (label >= len(self.class_names))])
        if outside.size:
            shift = " (after reduce_zero_label)" if self.reduce_zero_label else ""
            return Skipped(label_path, f"label values {', '.join(map(str, outside[:8].tolist()))}{shift} outside "
                                       f"the {len(self.class_names)} classes")
        return image, label

    def __getitem__(self, index: int) -> Any:
        read = self.read(index)
        if isinstance(read, Skipped) or self.transform is None:
            return read
        try:
            return self.transform(*read)
        except Exception as e:  # a transform failing on one sample: skipped and listed, the engine counts these
            return Skipped(self.samples[index][0], f"{type(e).__name__}: {e}", in_transform=True)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def read_label(path: str | os.PathLike) -> np.ndarray:
    """A single-channel label map as (H, W) uint8 class indices (ImageReadError if it is not one)."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("L", "P", "I", "I;16"):
                raise ImageReadError(path, f"a label map must be single-channel (mode L or P), not {img.mode}")
            values = np.asarray(img)
    except ImageReadError:
        raise
    except FileNotFoundError as e:
        raise ImageReadError(path, "no such file") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(path, f"unreadable label map ({str(e).splitlines()[0] if str(e) else e})") from e
    if values.max(initial=0) > IGNORE_INDEX:
        raise ImageReadError(path, f"label value {int(values.max())} is over {IGNORE_INDEX}")
    return values.astype(np.uint8)


# ---- transforms


def rescale_size(width: int, height: int, scale: Sequence[float]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest size with long side <= max(scale) and short side <= min(scale)."""
    factor = min(max(scale) / max(width, height), min(scale) / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def to_tensors(image: Image.Image, label: np.ndarray) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
    return tv_tensors.Image(pixels), tv_tensors.Mask(torch.from_numpy(label)[None])


def normalize(image: torch.Tensor) -> torch.Tensor:
    """mmseg's Normalize: (pixels - mean) / std on the 0-255 scale, RGB."""
    return TF.normalize(image.float(), list(MEAN), list(STD))


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


def _coin() -> bool:
    return bool(torch.randint(2, ()).item())


def photometric_distortion(image: torch.Tensor) -> torch.Tensor:
    """mmseg's PhotoMetricDistortion on a float (3, H, W) 0-255 image: brightness +-32, contrast 0.5-1.5 (before or
    after the HSV steps, at random), saturation 0.5-1.5, hue +-18 in OpenCV's 0-180 units; each with p = 0.5."""
    if _coin():
        image = (image + _uniform(-32, 32)).clamp(0, 255)
    contrast_first = _coin()
    if contrast_first and _coin():
        image = (image * _uniform(0.5, 1.5)).clamp(0, 255)
    saturation = _uniform(0.5, 1.5) if _coin() else None
    hue = int(torch.randint(-18, 18, ()).item()) if _coin() else None
    if saturation is not None or hue is not None:
        from matplotlib.colors import hsv_to_rgb, rgb_to_hsv  # here: importing matplotlib costs every CLI command 1 s

        hsv = rgb_to_hsv((image / 255).permute(1, 2, 0).numpy())
        if saturation is not None:
            hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 1)
        if hue is not None:
            hsv[..., 0] = (hsv[..., 0] + hue / 180) % 1.0
        image = torch.from_numpy(hsv_to_rgb(hsv) * 255).permute(2, 0, 1).float()
    if not contrast_first and _coin():
        image = (image * _uniform(0.5, 1.5)).clamp(0, 255)
    return image


def _resize(image: tv_tensors.Image, mask: tv_tensors.Mask | None, width: int,
            height: int) -> tuple[tv_tensors.Image, tv_tensors.Mask | None]:
    size = [height, width]
    image = TF.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=False)
    return image, None if mask is None else TF.resize(mask, size)  # masks: nearest neighbours


@dataclass
class TrainTransform:
    """mmseg's ADE20K training pipeline: (PIL image, (H, W) label) -> (normalized (3, h, w), (h, w) long label) with
    (h, w) the crop size (one number for a square)."""

    img_scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    crop_size: Size = 512
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True

    def __call__(self, pil_image: Image.Image, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = to_tensors(pil_image, label)
        ratio = _uniform(*self.ratio_range)
        scale = (self.img_scale[0] * ratio, self.img_scale[1] * ratio)
        image, mask = _resize(image, mask, *rescale_size(image.shape[-1], image.shape[-2], scale))
        top, left, height, width = self._crop_box(mask)
        image, mask = TF.crop(image, top, left, height, width), TF.crop(mask, top, left, height, width)
        if torch.rand(()) < self.flip_prob:
            image, mask = TF.horizontal_flip(image), TF.horizontal_flip(mask)
        pixels = image.as_subclass(torch.Tensor).float()
        if self.photometric:
            pixels = photometric_distortion(pixels)
        pixels = normalize(pixels)
        crop_h, crop_w = height_width(self.crop_size)
        pad_h, pad_w = crop_h - pixels.shape[-2], crop_w - pixels.shape[-1]
        if pad_h or pad_w:
            pixels = TF.pad(pixels, [0, 0, pad_w, pad_h], fill=0)
            mask = TF.pad(mask, [0, 0, pad_w, pad_h], fill=IGNORE_INDEX)
        return pixels, mask.as_subclass(torch.Tensor)[0].long()

    def _crop_box(self, mask: torch.Tensor) -> tuple[int, int, int, int]:
        """mmseg's RandomCrop: redraw up to 10 times while one class covers >= cat_max_ratio of the crop."""
        height, width = mask.shape[-2:]
        window_h, window_w = height_width(self.crop_size)
        crop_h, crop_w = min(window_h, height), min(window_w, width)

        def draw() -> tuple[int, int, int, int]:
            top = int(torch.randint(height - crop_h + 1, ()).item())
            left = int(torch.randint(width - crop_w + 1, ()).item())
            return top, left, crop_h, crop_w

        box = draw()
        if self.cat_max_ratio < 1:
            for _ in range(10):
                top, left, _, _ = box
                values = mask[0, top : top + crop_h, left : left + crop_w]
                counts = torch.bincount(values.flatten().long(), minlength=256)[:IGNORE_INDEX]
                counts = counts[counts > 0]
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                box = draw()
        return box


@dataclass
class EvalTransform:
    """Evaluation input: the normalized image at its own size and the label as it is (metrics are computed at the
    label's resolution; inference resizes the image to the test scales itself). -> (image, (H, W) long label, path)"""

    def __call__(self, pil_image: Image.Image, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = to_tensors(pil_image, label)
        return normalize(image.as_subclass(torch.Tensor)), mask.as_subclass(torch.Tensor)[0].long()

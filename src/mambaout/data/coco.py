"""COCO-format instance segmentation data: `annotations/instances_<split>.json` and the images in `<split>/`.

Read with pycocotools and torchvision's `CocoDetection`, wrapped for `transforms.v2` (`wrap_dataset_for_transforms_v2`),
which turns polygons and RLE (compressed or not) into masks and flips image, boxes and masks together. What this
module adds is what real annotation files need:

- a malformed file (not JSON, or without images/annotations/categories) fails with a message naming it;
- annotations that cannot be used are dropped and counted by reason: an unknown image or category, a box or area of
  zero, a box wholly outside its image (a box partly outside is clipped to it), no usable segmentation;
- in training, crowd regions are left out (COCO's evaluation treats them as "ignore" regions) and images with no
  annotation left are not drawn, as mmdetection's `filter_empty_gt` does;
- images that cannot be read (missing, empty, truncated, not an image, a size other than the file says) come back as
  `Skipped` markers, which the collate functions take out of the batch and the engine lists.

Category ids (COCO's have gaps) map to contiguous labels 1..K in sorted id order; 0 is the background.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

try:
    from pycocotools.coco import COCO
except ImportError as e:  # the `dense` extra
    raise ImportError("COCO-format data needs pycocotools: pip install 'mambaout[dense]'") from e
from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2
from torchvision.datasets.vision import VisionDataset
from torchvision.transforms import v2

from .folder import DatasetError, Skipped
from .images import ImageReadError, open_rgb

log = logging.getLogger("mambaout")

TRAIN_SPLITS = ("train2017", "train")  # the first whose annotation file exists is the default
VAL_SPLITS = ("val2017", "val")
CROWD = "crowd region (ignored in training)"


def annotation_file(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}.json"


def default_split(root: str | os.PathLike, candidates: Sequence[str]) -> str | None:
    """The first of `candidates` with an annotation file under `root`, or None."""
    return next((split for split in candidates if annotation_file(root, split).is_file()), None)


def require_split(root: str | os.PathLike, split: str | None, what: str) -> str:
    """`split` (or the default for `what`: train or val) after checking its annotation file and image folder exist."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data folder {str(root)!r} {'is not a folder' if root.exists() else 'does not exist'}")
    candidates = TRAIN_SPLITS if what == "train" else VAL_SPLITS
    chosen = split or default_split(root, candidates)
    if chosen is None or not annotation_file(root, chosen).is_file():
        found = sorted(p.name for p in (root / "annotations").glob("instances_*.json"))
        expected = " or ".join(str(annotation_file(root, s)) for s in ([chosen] if chosen else candidates))
        raise DatasetError(
            f"no {what} annotations in {str(root)!r}: expected {expected} (COCO's layout: annotations/"
            f"instances_<split>.json and the images in <split>/); found: {', '.join(found) or 'none'}"
        )
    if not (root / chosen).is_dir():
        raise DatasetError(f"the images of split {chosen!r} should be in {str(root / chosen)!r}, which is not a folder")
    return chosen


def read_annotations(path: str | os.PathLike) -> COCO:
    """A pycocotools COCO index of `path`; DatasetError naming the file if it is not a COCO annotation file."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"annotation file {str(path)!r} is not valid JSON: {e}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read annotation file {str(path)!r}: {e}") from e
    if not isinstance(document, dict):
        raise DatasetError(f"annotation file {str(path)!r} must hold a JSON object (COCO's format)")
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(document.get(key), list)]
    if missing:
        raise DatasetError(f"annotation file {str(path)!r} has no list of {', '.join(missing)} (COCO's format)")
    for key, fields in (("images", ("id", "file_name", "width", "height")), ("categories", ("id", "name"))):
        bad = [entry for entry in document[key] if not isinstance(entry, dict) or any(f not in entry for f in fields)]
        if bad:
            raise DatasetError(f"annotation file {str(path)!r}: {len(bad)} {key} entries lack one of "
                               f"{', '.join(fields)}, e.g. {str(bad[0])[:200]}")
    if not document["categories"]:
        raise DatasetError(f"annotation file {str(path)!r} lists no categories")
    coco = COCO()
    coco.dataset = document
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def _clean_segmentation(segmentation: Any, height: int, width: int) -> Any | None:
    """The segmentation if pycocotools can rasterise it at (height, width), else None."""
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        return polygons or None
    rle = isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, list))
    if rle and list(segmentation.get("size", ())) == [height, width]:
        return segmentation
    return None


def clean_annotations(coco: COCO, training: bool) -> Counter:
    """Drop unusable annotations (and crowds, in training), clip boxes to their image; the drops by reason."""
    dropped: Counter = Counter()
    kept = []
    for annotation in coco.dataset["annotations"]:
        reason = _problem(coco, annotation, training)
        if reason is None:
            kept.append(annotation)
        else:
            dropped[reason] += 1
    coco.dataset["annotations"] = kept
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return dropped


def _problem(coco: COCO, annotation: Any, training: bool) -> str | None:
    """Why `annotation` cannot be used (None: it can; its box is clipped to the image in place)."""
    if not isinstance(annotation, dict) or not isinstance(annotation.get("bbox"), list) or len(annotation["bbox"]) != 4:
        return "no [x, y, w, h] box"
    image = coco.imgs.get(annotation.get("image_id"))
    if image is None:
        return "unknown image id"
    if annotation.get("category_id") not in coco.cats:
        return "unknown category id"
    if training and annotation.get("iscrowd", 0):
        return CROWD
    x, y, w, h = (float(v) for v in annotation["bbox"])
    if w <= 0 or h <= 0 or float(annotation.get("area", 1)) <= 0:
        return "zero area"
    left, top = max(x, 0.0), max(y, 0.0)
    right, bottom = min(x + w, float(image["width"])), min(y + h, float(image["height"]))
    if right <= left or bottom <= top:
        return "box outside the image"
    segmentation = _clean_segmentation(annotation.get("segmentation"), image["height"], image["width"])
    if segmentation is None:
        return "no usable segmentation"
    annotation["bbox"] = [left, top, right - left, bottom - top]
    annotation["segmentation"] = segmentation
    annotation.setdefault("iscrowd", 0)
    annotation.setdefault("area", w * h)
    return None


class _CocoImages(CocoDetection):
    """CocoDetection over an already-read COCO index, decoding images with `open_rgb` (bombs refused, sizes checked)."""

    def __init__(self, image_folder: Path, coco: COCO, ids: list[int], transforms: Any) -> None:
        VisionDataset.__init__(self, str(image_folder), transforms=transforms)
        self.coco, self.ids = coco, ids

    def _load_image(self, id: int) -> Image.Image:
        info = self.coco.imgs[id]
        path = os.path.join(self.root, info["file_name"])
        image = open_rgb(path)
        if image.size != (info["width"], info["height"]):
            raise ImageReadError(path, f"the image is {image.size[0]}x{image.size[1]} but the annotation file says "
                                       f"{info['width']}x{info['height']}")
        return image


@dataclass
class Instances:
    """One image as a uint8 (3, H, W) tensor and its targets in torchvision's detection format."""

    image: torch.Tensor
    image_id: int
    boxes: torch.Tensor  # (N, 4) float32, x1 y1 x2 y2 in pixels
    labels: torch.Tensor  # (N,) int64 in 1..K
    masks: torch.Tensor  # (N, H, W) uint8


class CocoInstances(torch.utils.data.Dataset):
    """One split of a COCO-format dataset; items are `Instances`, or `Skipped` for images that cannot be read.

    `training`: crowds dropped, images without annotations left out, `hflip` applied; otherwise every image of the
    file is an item (targets included when `with_targets`), and `coco` is the ground truth for COCOeval.
    """

    def __init__(self, root: str | os.PathLike, split: str, training: bool, hflip: float = 0.5,
                 with_targets: bool | None = None, category_ids: Sequence[int] | None = None) -> None:
        self.root, self.split, self.training = Path(root), split, training
        self.annotation_file = annotation_file(root, split)
        self.coco = read_annotations(self.annotation_file)
        self.dropped = clean_annotations(self.coco, training)
        self.category_ids = sorted(self.coco.cats) if category_ids is None else list(category_ids)
        unknown = sorted(set(self.coco.cats) - set(self.category_ids))
        if unknown:
            raise DatasetError(f"{str(self.annotation_file)!r} has categories {unknown} that the model does not know "
                               f"(it knows {self.category_ids})")
        self.class_names = [self.coco.cats[c]["name"] if c in self.coco.cats else str(c) for c in self.category_ids]
        self._label_of = {category: label for label, category in enumerate(self.category_ids, start=1)}
        ids = sorted(self.coco.imgs)
        self.without_annotations = 0
        if training:
            annotated = [i for i in ids if self.coco.imgToAnns.get(i)]
            self.without_annotations = len(ids) - len(annotated)
            ids = annotated
        if not ids:
            raise DatasetError(f"{str(self.annotation_file)!r} has no {'annotated ' if training else ''}images")
        self.with_targets = training if with_targets is None else with_targets
        steps = [v2.ToImage()] + ([v2.RandomHorizontalFlip(hflip)] if training and hflip > 0 else [])
        keys = {"image_id", "boxes", "labels", "masks"} if self.with_targets else {"image_id"}
        images = _CocoImages(self.root / split, self.coco, ids, v2.Compose(steps))
        self.images = wrap_dataset_for_transforms_v2(images, target_keys=keys)
        self.ids = ids
        self.skipped: list[Skipped] = []  # nothing is known unreadable before reading
        self._report()

    def _report(self) -> None:
        problems = Counter({reason: count for reason, count in self.dropped.items() if reason != CROWD})
        if problems:
            reasons = ", ".join(f"{reason}: {count}" for reason, count in problems.most_common())
            log.warning("%s: dropped %d annotations (%s)", self.annotation_file, problems.total(), reasons)
        if self.dropped[CROWD]:
            log.info("%s: %d crowd regions are not used in training", self.annotation_file, self.dropped[CROWD])
        if self.without_annotations:
            log.info("%s: %d images without annotations are not used in training", self.annotation_file,
                     self.without_annotations)

    def __len__(self) -> int:
        return len(self.ids)

    def path(self, index: int) -> str:
        return os.path.join(self.root, self.split, self.coco.imgs[self.ids[index]]["file_name"])

    def __getitem__(self, index: int) -> Instances | Skipped:
        try:
            image, target = self.images[index]
        except ImageReadError as e:
            return Skipped(e.path, e.reason)
        except Exception as e:  # a transform failing on one image: skipped and listed, the engine counts these
            return Skipped(self.path(index), f"{type(e).__name__}: {e}", in_transform=True)
        image = image.as_subclass(torch.Tensor)
        height, width = image.shape[-2:]
        if "boxes" in target:
            boxes = target["boxes"].as_subclass(torch.Tensor).float()
            labels = torch.tensor([self._label_of[int(c)] for c in target["labels"]], dtype=torch.int64)
            masks = target["masks"].as_subclass(torch.Tensor).to(torch.uint8)
        else:
            boxes, labels = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
            masks = torch.zeros(0, height, width, dtype=torch.uint8)
        return Instances(image, int(target["image_id"]), boxes, labels, masks)

    def __repr__(self) -> str:
        return (f"CocoInstances({str(self.root)!r}, {self.split!r}, {len(self)} images, "
                f"{len(self.category_ids)} categories)")


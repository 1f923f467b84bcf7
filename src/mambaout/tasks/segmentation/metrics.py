"""mIoU, mAcc and aAcc exactly as mmsegmentation computes them: per-class areas summed over the whole dataset.

For each image, pixels whose label is the ignore index are dropped; the areas of intersection, prediction, label
and union per class are added up over all images (and all processes); then IoU = intersection / union and
Acc = intersection / label per class, mIoU and mAcc are their means over the classes where they are defined
(nan-mean: a class absent from both predictions and labels has no IoU and does not count as 0), and
aAcc = all intersections / all labelled pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...engine import distributed

IGNORE_INDEX = 255


class SegmentationAreas:
    """Running per-class areas (intersection, union, prediction, label) over a dataset."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.areas = torch.zeros(4, num_classes, dtype=torch.float64)  # intersect, union, pred, label

    def add(self, prediction: torch.Tensor, label: torch.Tensor) -> None:
        """One image (or a batch): integer class maps of the same shape."""
        if prediction.shape != label.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and label {tuple(label.shape)} differ in shape")
        keep = label != self.ignore_index
        pred, lab = prediction[keep].long().cpu(), label[keep].long().cpu()
        bins = self.num_classes
        intersect = torch.bincount(pred[pred == lab], minlength=bins)[:bins].double()
        area_pred = torch.bincount(pred, minlength=bins)[:bins].double()
        area_label = torch.bincount(lab, minlength=bins)[:bins].double()
        self.areas += torch.stack([intersect, area_pred + area_label - intersect, area_pred, area_label])

    def reduce(self, device: torch.device) -> None:
        """Sum the areas over all torchrun processes (in place; identity in a single process)."""
        summed = distributed.all_reduce_sum(self.areas.flatten().tolist(), device)
        self.areas = torch.tensor(summed, dtype=torch.float64).view(4, self.num_classes)

    def result(self, class_names: Sequence[str] | None = None) -> SegmentationMetrics:
        intersect, union, _, label = self.areas.numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = intersect / union
            acc = intersect / label
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        total = label.sum()
        return SegmentationMetrics(
            mIoU=_nanmean(iou),
            mAcc=_nanmean(acc),
            aAcc=float(intersect.sum() / total) if total else float("nan"),
            class_iou=dict(zip(names, iou.tolist())),
            class_acc=dict(zip(names, acc.tolist())),
        )


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


@dataclass
class SegmentationMetrics:
    mIoU: float
    mAcc: float
    aAcc: float
    class_iou: dict[str, float]  # nan where the class is in neither predictions nor labels
    class_acc: dict[str, float]  # nan where the class is in no label

    def summary(self) -> dict[str, float]:
        return {"mIoU": self.mIoU, "mAcc": self.mAcc, "aAcc": self.aAcc}

    def format(self) -> str:
        """A per-class table (IoU, Acc in %) and the summary line, as mmseg prints it."""
        width = max([5, *(len(name) for name in self.class_iou)])
        lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}"]
        for name, iou in self.class_iou.items():
            lines.append(f"{name:<{width}}  {_percent(iou):>6}  {_percent(self.class_acc[name]):>6}")
        lines.append(f"aAcc {_percent(self.aAcc)}  mIoU {_percent(self.mIoU)}  mAcc {_percent(self.mAcc)}")
        return "\n".join(lines)


def _percent(value: float) -> str:
    return "nan" if value != value else f"{100 * value:.2f}"

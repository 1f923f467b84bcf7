"""COCO box and mask AP of a detector through pycocotools' `COCOeval`, over all torchrun processes.

Each process predicts its shard of the images; the detections (in COCO's results format: `bbox` as x, y, w, h in
original-image pixels, `segmentation` as compressed RLE of the mask thresholded at 0.5, the original category ids)
are gathered on every process, rank 0 runs COCOeval for 'bbox' and 'segm' and broadcasts the numbers, so every
process returns the same metrics. Names follow mmdetection: bbox_mAP, bbox_mAP_50, bbox_mAP_75, bbox_mAP_s/m/l and
the same for segm (COCOeval's stats[0:6]; -1 where the ground truth has no object of that size, as COCO reports).
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from tqdm import tqdm

from ...data.folder import Skipped
from ...engine import distributed

STAT_NAMES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")  # COCOeval.stats[0:6]
IOU_TYPES = ("bbox", "segm")
MASK_THRESHOLD = 0.5  # torchvision's and mmdetection's binarisation of the pasted mask probabilities


def to_coco_results(output: dict[str, torch.Tensor], image_id: int,
                    category_ids: Sequence[int]) -> tuple[list[dict], list[dict]]:
    """One image's torchvision detections -> (bbox results, segm results) in COCO's submission format."""
    boxes = output["boxes"].detach().float().cpu()
    scores = output["scores"].detach().float().cpu().tolist()
    categories = [int(category_ids[label - 1]) for label in output["labels"].tolist()]
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    bbox = [{"image_id": image_id, "category_id": c, "bbox": [round(v, 2) for v in b], "score": s}
            for c, b, s in zip(categories, xywh, scores)]
    segm: list[dict] = []
    if "masks" in output and len(categories):
        binary = (output["masks"].detach()[:, 0] > MASK_THRESHOLD).cpu().numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        segm = [{"image_id": image_id, "category_id": c, "segmentation": {"size": r["size"],
                 "counts": r["counts"].decode("ascii")}, "score": s}
                for c, r, s in zip(categories, rles, scores)]
    return bbox, segm


def coco_metrics(coco_gt: COCO, results: dict[str, list[dict]], image_ids: Sequence[int]) -> dict[str, float]:
    """COCOeval's AP numbers for each IoU type in `results` ('bbox', 'segm'), over `image_ids` only."""
    metrics: dict[str, float] = {}
    for iou_type, detections in results.items():
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it goes
            found = coco_gt.loadRes(copy.deepcopy(detections)) if detections else _no_detections(coco_gt)
            evaluation = COCOeval(coco_gt, found, iou_type)
            evaluation.params.imgIds = sorted(image_ids)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        metrics.update({f"{iou_type}_{name}": float(v) for name, v in zip(STAT_NAMES, evaluation.stats)})
    return metrics


def _no_detections(coco_gt: COCO) -> COCO:
    empty = COCO()
    empty.dataset = {"images": list(coco_gt.dataset["images"]), "categories": list(coco_gt.dataset["categories"]),
                     "annotations": []}
    empty.createIndex()
    return empty


@dataclass
class DetectionEvaluation:
    metrics: dict[str, float]  # bbox_mAP, ..., segm_mAP_l
    results: dict[str, list[dict]]  # 'bbox' and 'segm' detections in COCO's format (every process's)
    images: int  # images evaluated
    skipped: list[Skipped] = field(default_factory=list)  # images that could not be read


@torch.no_grad()
def predict_detections(model: nn.Module, loader: Any, category_ids: Sequence[int], device: torch.device,
                       amp_dtype: torch.dtype | None = None, progress: bool = False
                       ) -> tuple[dict[str, list[dict]], list[int], list[Skipped]]:
    """This process's detections over `loader` (batches of uint8 images and image ids), its image ids, skips."""
    model.eval()
    results: dict[str, list[dict]] = {iou_type: [] for iou_type in IOU_TYPES}
    image_ids: list[int] = []
    skipped: list[Skipped] = []
    for batch in tqdm(loader, desc="detect", disable=not progress, leave=False):
        skipped += batch.skipped
        if not batch.size:
            continue
        images = [image.to(device, non_blocking=True).float().div_(255) for image in batch.inputs]
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = model(images)
        for output, image_id in zip(outputs, batch.targets):
            bbox, segm = to_coco_results(output, int(image_id), category_ids)
            results["bbox"] += bbox
            results["segm"] += segm
            image_ids.append(int(image_id))
    return results, image_ids, skipped


def evaluate_detector(model: nn.Module, loader: Any, coco_gt: COCO, category_ids: Sequence[int],
                      env: distributed.Distributed, amp_dtype: torch.dtype | None = None,
                      progress: bool = False) -> DetectionEvaluation:
    """COCO AP of `model` on the images of `loader` (every process calls this and gets the same numbers)."""
    local = predict_detections(model, loader, category_ids, env.device, amp_dtype, progress)
    gathered = distributed.all_gather_object(local)
    results = {iou_type: [d for part, _, _ in gathered for d in part[iou_type]] for iou_type in IOU_TYPES}
    image_ids = [i for _, ids, _ in gathered for i in ids]
    skipped = [s for _, _, items in gathered for s in items]
    metrics = coco_metrics(coco_gt, results, image_ids) if env.is_main else None
    metrics = distributed.broadcast_object(metrics)
    return DetectionEvaluation(metrics, results, len(image_ids), skipped)

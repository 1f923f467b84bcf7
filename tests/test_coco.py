"""COCO-format data: the generated dataset (exact, overlapping, deterministic), reading it through pycocotools and
torchvision (crowds and empty images out of training, joint flips), bad annotations dropped and counted, unreadable
images skipped and named, malformed files named; COCOeval: AP 1 for the ground truth, hand-computed AP for known
perturbations."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader

from mambaout.cli import main
from mambaout.data.coco import CocoInstances, read_annotations
from mambaout.data.folder import DatasetError
from mambaout.data.synthetic_coco import CATEGORIES, write_coco_dataset
from mambaout.tasks.detection.coco_eval import coco_metrics, to_coco_results
from mambaout.tasks.detection.task import collate_train


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_coco_dataset(tmp_path_factory.mktemp("coco"), train_images=12, val_images=8, size=(96, 72))


def _document(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def test_generated_dataset_is_deterministic_exact_and_overlapping(data, tmp_path):
    again = write_coco_dataset(tmp_path, train_images=12, val_images=8, size=(96, 72))
    for split in ("train", "val"):
        assert _document(data, split) == _document(again, split)
    assert (data / "train" / "train_000003.jpg").read_bytes() == (again / "train" / "train_000003.jpg").read_bytes()

    document = _document(data, "train")
    annotations = document["annotations"]
    kinds = {"polygon" if isinstance(a["segmentation"], list) else "rle" if not a["iscrowd"] else "crowd"
             for a in annotations}
    assert kinds == {"polygon", "rle", "crowd"}
    assert {a["category_id"] for a in annotations} <= {c for c, _, _ in CATEGORIES}
    coco = read_annotations(data / "annotations" / "instances_train.json")
    overlapping_boxes = 0
    for image_id in coco.imgs:
        masks = [coco.annToMask(a).astype(bool) for a in coco.imgToAnns[image_id]]
        total = sum(m.astype(int) for m in masks)
        assert total.max() <= 1  # visible parts are disjoint: each pixel belongs to one instance at most
        for a, m in zip(coco.imgToAnns[image_id], masks):
            assert a["area"] == m.sum() > 0
            x, y, w, h = a["bbox"]
            ys, xs = np.nonzero(m)
            assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # the mask's tight box
        boxes = [a["bbox"] for a in coco.imgToAnns[image_id]]
        overlapping_boxes += sum(_intersect(p, q) for i, p in enumerate(boxes) for q in boxes[i + 1 :])
    assert overlapping_boxes > 0


def _intersect(p, q) -> bool:
    return p[0] < q[0] + q[2] and q[0] < p[0] + p[2] and p[1] < q[1] + q[3] and q[1] < p[1] + p[3]


def test_training_items_are_torchvision_targets_without_crowds(data):
    dataset = CocoInstances(data, "train", training=True, hflip=0.0)
    document = _document(data, "train")
    crowds = sum(a["iscrowd"] for a in document["annotations"])
    assert crowds > 0 and dataset.dropped == {"crowd region (ignored in training)": crowds}
    item = dataset[0]
    expected = [a for a in document["annotations"] if a["image_id"] == item.image_id and not a["iscrowd"]]
    assert item.image.dtype == torch.uint8 and item.image.shape == (3, 72, 96)
    assert item.masks.shape == (len(expected), 72, 96) and item.boxes.shape == (len(expected), 4)
    order = [c for c, _, _ in CATEGORIES]
    assert item.labels.tolist() == [order.index(a["category_id"]) + 1 for a in expected]  # contiguous, 0 background
    for mask, annotation in zip(item.masks, expected):
        assert torch.equal(mask.bool(), torch.from_numpy(dataset.coco.annToMask(annotation).astype(bool)))

    flipped = CocoInstances(data, "train", training=True, hflip=1.0)[0]
    assert torch.equal(flipped.image, item.image.flip(-1)) and torch.equal(flipped.masks, item.masks.flip(-1))
    x1, y1, x2, y2 = item.boxes.unbind(1)
    assert torch.allclose(flipped.boxes, torch.stack([96 - x2, y1, 96 - x1, y2], dim=1))


def test_images_without_annotations_are_left_out_of_training_only(tmp_path):
    root = write_coco_dataset(tmp_path, train_images=4, val_images=2, size=(64, 48), crowd_every=0)
    path = root / "annotations" / "instances_train.json"
    document = json.loads(path.read_text())
    document["annotations"] = [a for a in document["annotations"] if a["image_id"] != 2]
    path.write_text(json.dumps(document))
    training = CocoInstances(root, "train", training=True)
    assert len(training) == 3 and training.without_annotations == 1 and 2 not in training.ids
    evaluation = CocoInstances(root, "train", training=False)
    assert len(evaluation) == 4 and evaluation[evaluation.ids.index(2)].boxes.shape == (0, 4)


def test_bad_annotations_are_dropped_and_counted(tmp_path, caplog):
    root = write_coco_dataset(tmp_path, train_images=2, val_images=1, size=(64, 48), crowd_every=0)
    path = root / "annotations" / "instances_train.json"
    document = json.loads(path.read_text())
    good = document["annotations"][0]
    square = [[10, 10, 20, 10, 20, 20, 10, 20]]

    def bad(**changes):
        return {**good, "id": 1000 + len(document["annotations"]), "segmentation": square, **changes}

    document["annotations"] += [
        bad(bbox=[70, 50, 10, 10]),  # wholly outside the 64x48 image
        bad(bbox=[10, 10, 0, 5]),  # zero width
        bad(area=0),
        bad(category_id=99),
        bad(image_id=99),
        bad(segmentation=[[1, 2, 3, 4]]),  # a polygon of two points
        bad(segmentation={"size": [10, 10], "counts": "abc"}),  # RLE of another size
        bad(bbox=[50, 40, 30, 20]),  # partly outside: clipped, kept
    ]
    path.write_text(json.dumps(document))
    dataset = CocoInstances(root, "train", training=True)
    assert dataset.dropped == {"box outside the image": 1, "zero area": 2, "unknown category id": 1,
                               "unknown image id": 1, "no usable segmentation": 2}
    assert "dropped 7 annotations" in caplog.text and str(path) in caplog.text
    clipped = dataset.coco.anns[document["annotations"][-1]["id"]]
    assert clipped["bbox"] == [50.0, 40.0, 14.0, 8.0]


def test_unreadable_images_are_skipped_and_named(tmp_path):
    root = write_coco_dataset(tmp_path, train_images=5, val_images=1, size=(64, 48), crowd_every=0)
    folder = root / "train"
    (folder / "train_000001.jpg").write_bytes(b"not a jpeg at all")
    data = (folder / "train_000002.jpg").read_bytes()
    (folder / "train_000002.jpg").write_bytes(data[: len(data) // 2])  # truncated
    (folder / "train_000003.jpg").write_bytes(b"")
    (folder / "train_000004.jpg").unlink()
    from PIL import Image

    Image.new("RGB", (32, 48)).save(folder / "train_000005.jpg")  # not the size the annotation file says
    dataset = CocoInstances(root, "train", training=True)
    loader = DataLoader(dataset, batch_size=5, collate_fn=collate_train)
    (batch,) = list(loader)
    assert batch.size == 0 and batch.inputs == []
    reasons = {Path(s.path).name: s.reason for s in batch.skipped}
    assert set(reasons) == {f"train_00000{i}.jpg" for i in range(1, 6)}
    assert "not an image" in reasons["train_000001.jpg"] and "truncated" in reasons["train_000002.jpg"]
    assert "0 bytes" in reasons["train_000003.jpg"] and "no such file" in reasons["train_000004.jpg"]
    assert "32x48" in reasons["train_000005.jpg"] and "64x48" in reasons["train_000005.jpg"]


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "not valid JSON"), ('["a list"]', "JSON object"), ('{"images": []}', "annotations, categories")],
)
def test_a_malformed_annotation_file_fails_naming_it(tmp_path, capsys, content, message):
    root = write_coco_dataset(tmp_path, train_images=1, val_images=1, size=(32, 32))
    path = root / "annotations" / "instances_train.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message) as error:
        CocoInstances(root, "train", training=True)
    assert str(path) in str(error.value)
    assert main(["detect-train", str(root), "--backbone", "mambaout_test", "--workers", "0"]) == 5
    err = capsys.readouterr().err
    assert str(path) in err and message in err and "Traceback" not in err


def test_a_missing_split_names_what_was_expected(tmp_path, capsys):
    assert main(["detect-train", str(tmp_path), "--backbone", "mambaout_test"]) == 5
    assert "instances_train" in capsys.readouterr().err


# ---- COCOeval


def _ground_truth_outputs(coco, image_id: int, height: int, width: int, category_ids: list[int]) -> dict:
    """The image's non-crowd annotations as torchvision Mask R-CNN outputs (score 1)."""
    annotations = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in annotations)]).reshape(-1, 4)
    masks = torch.stack([torch.from_numpy(coco.annToMask(a)).float() for a in annotations]) if annotations else (
        torch.zeros(0, height, width))
    labels = torch.tensor([category_ids.index(a["category_id"]) + 1 for a in annotations], dtype=torch.int64)
    return {"boxes": boxes.float(), "scores": torch.ones(len(annotations)), "labels": labels, "masks": masks[:, None]}


def _results(data: Path, keep=lambda annotation_index, category: True, shift=None) -> tuple:
    coco = read_annotations(data / "annotations" / "instances_val.json")
    category_ids = sorted(coco.cats)
    results = {"bbox": [], "segm": []}
    seen: dict[int, int] = {}
    for image_id, info in coco.imgs.items():
        outputs = _ground_truth_outputs(coco, image_id, info["height"], info["width"], category_ids)
        bbox, segm = to_coco_results(outputs, image_id, category_ids)
        for b, s in zip(bbox, segm):
            index = seen.get(b["category_id"], 0)
            seen[b["category_id"]] = index + 1
            if keep(index, b["category_id"]):
                if shift is not None and b["category_id"] == shift:
                    b["bbox"][0] += b["bbox"][2]  # moved by its own width: IoU 0 with every ground truth box
                results["bbox"].append(b)
                results["segm"].append(s)
    return coco, results, seen


def test_ground_truth_as_predictions_scores_ap_1(data):
    coco, results, _ = _results(data)
    metrics = coco_metrics(coco, results, list(coco.imgs))
    assert metrics["bbox_mAP"] == metrics["segm_mAP"] == 1.0
    assert metrics["bbox_mAP_50"] == metrics["bbox_mAP_75"] == metrics["segm_mAP_75"] == 1.0
    json.dumps(results)  # COCO's submission format is plain JSON


def test_known_perturbations_give_hand_computed_ap(data):
    # every other instance of each class missing: recall k/n with precision 1, so COCO's 101-point AP of a class is
    # (the recall thresholds 0, 0.01, ..., 1 at or below k/n) / 101, at every IoU threshold; mAP averages the classes
    coco, results, counts = _results(data, keep=lambda index, category: index % 2 == 0)
    expected = np.mean([(np.floor(100 * ((n + 1) // 2) / n + 1e-9) + 1) / 101 for n in counts.values()])
    metrics = coco_metrics(coco, results, list(coco.imgs))
    assert metrics["bbox_mAP"] == pytest.approx(expected, abs=1e-9)
    assert metrics["segm_mAP"] == pytest.approx(expected, abs=1e-9)
    assert expected < 0.7  # well below 1: the missing half counts

    # every box of one class moved off its object: that class scores 0 for boxes, its masks are still exact
    first = sorted(counts)[0]
    coco, results, counts = _results(data, shift=first)
    metrics = coco_metrics(coco, results, list(coco.imgs))
    assert metrics["bbox_mAP"] == pytest.approx((len(counts) - 1) / len(counts))
    assert metrics["segm_mAP"] == 1.0

    # no detections at all
    metrics = coco_metrics(coco, {"bbox": [], "segm": []}, list(coco.imgs))
    assert metrics["bbox_mAP"] == metrics["segm_mAP"] == 0.0


def test_crowd_regions_are_ignore_regions_in_evaluation(data):
    coco, results, _ = _results(data)
    crowd = next(a for a in coco.dataset["annotations"] if a["iscrowd"])
    rle = mask_utils.frPyObjects(crowd["segmentation"], *crowd["segmentation"]["size"])
    spurious = {"image_id": crowd["image_id"], "category_id": crowd["category_id"], "score": 1.0,
                "bbox": list(crowd["bbox"]), "segmentation": {"size": rle["size"],
                "counts": rle["counts"].decode("ascii")}}
    with_crowd = {key: [*value, spurious] for key, value in results.items()}
    metrics = coco_metrics(coco, with_crowd, list(coco.imgs))
    assert metrics["bbox_mAP"] == metrics["segm_mAP"] == 1.0  # a detection on a crowd is neither right nor wrong

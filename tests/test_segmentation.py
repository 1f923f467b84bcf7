"""Segmentation metrics (mmseg's dataset-level mIoU) and data: layouts, reduce_zero_label, the training pipeline,
bad files skipped and named, clear errors for what cannot be skipped."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from mambaout.data.folder import DatasetError, Skipped
from mambaout.data.segmentation import (
    ADE20K_CLASSES,
    EvalTransform,
    SegmentationDataset,
    TrainTransform,
    find_layout,
    rescale_size,
)
from mambaout.data.synthetic_segmentation import CLASS_NAMES, write_segmentation_dataset
from mambaout.tasks.segmentation.metrics import SegmentationAreas


def _areas(pairs, num_classes):
    areas = SegmentationAreas(num_classes)
    for prediction, label in pairs:
        areas.add(torch.tensor(prediction), torch.tensor(label))
    return areas.result()


def test_metrics_equal_hand_computed_values_summed_over_the_dataset():
    first = ([[0, 0, 1], [1, 2, 2]], [[0, 1, 1], [255, 2, 0]])  # one ignored pixel; class 3 nowhere
    second = ([[1]], [[1]])
    result = _areas([first, second], num_classes=4)
    # kept (prediction, label): (0,0) (0,1) (1,1) (2,2) (2,0) and (1,1)
    # intersection 1, 2, 1, 0; prediction 2, 2, 2, 0; label 2, 3, 1, 0; union 3, 3, 2, 0
    iou = [1 / 3, 2 / 3, 1 / 2]
    acc = [1 / 2, 2 / 3, 1 / 1]
    assert result.mIoU == pytest.approx(sum(iou) / 3)  # class 3 is excluded, not counted as 0
    assert result.mAcc == pytest.approx(sum(acc) / 3)
    assert result.aAcc == pytest.approx(4 / 6)
    assert list(result.class_iou.values())[:3] == pytest.approx(iou) and math.isnan(result.class_iou["3"])
    # the mean of per-image mIoUs would differ: the areas are summed first
    per_image = (_areas([first], 4).mIoU + _areas([second], 4).mIoU) / 2
    assert per_image != pytest.approx(result.mIoU)


def test_a_class_predicted_but_never_labelled_counts_as_zero_iou_and_has_no_accuracy():
    result = _areas([([[0, 1]], [[0, 0]])], num_classes=2)
    assert result.class_iou == {"0": pytest.approx(0.5), "1": 0.0}
    assert result.mIoU == pytest.approx(0.25) and result.mAcc == pytest.approx(0.5)
    assert math.isnan(result.class_acc["1"])


def test_perfect_predictions_give_one():
    label = torch.randint(0, 5, (2, 16, 16))
    label[0, 0] = 255
    prediction = label.clone()
    prediction[0, 0] = 3  # whatever is predicted on ignored pixels does not count
    result = _areas([(prediction.tolist(), label.tolist())], num_classes=7)
    assert result.mIoU == result.mAcc == result.aAcc == 1.0
    assert "mIoU 100.00" in result.format()


def _write_pair(root, split, name, image, label, generic=False):
    images = root / split / "images" if generic else root / "images" / split
    labels = root / split / "labels" if generic else root / "annotations" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(images / f"{name}.png")
    Image.fromarray(label).save(labels / f"{name}.png")


def test_ade20k_layout_reduces_the_zero_label(tmp_path):
    root = tmp_path
    _write_pair(root, "training", "a", np.zeros((4, 4, 3), np.uint8), np.array([[0, 1, 2, 150]] * 4, np.uint8))
    layout = find_layout(root)
    assert layout.kind == "ade20k" and layout.class_names == ADE20K_CLASSES and len(ADE20K_CLASSES) == 150
    _, label = SegmentationDataset(layout, "training").read(0)
    assert label[0].tolist() == [255, 0, 1, 149]


def test_generic_layout_keeps_labels_and_reads_class_names(tmp_path):
    (tmp_path / "classes.txt").write_text("background\ncat\n\n")
    _write_pair(tmp_path, "train", "a", np.zeros((4, 4, 3), np.uint8), np.array([[0, 1, 255, 1]] * 4, np.uint8),
                generic=True)
    layout = find_layout(tmp_path)
    assert layout.kind == "generic" and layout.class_names == ("background", "cat") and layout.train_split == "train"
    _, label = SegmentationDataset(layout, "train").read(0)
    assert label[0].tolist() == [0, 1, 255, 1]


def test_bad_pairs_are_skipped_and_named(tmp_path):
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    good = np.array([[1, 2], [3, 0]], np.uint8)
    image = np.zeros((2, 2, 3), np.uint8)
    _write_pair(tmp_path, "training", "good", image, good)
    _write_pair(tmp_path, "training", "big_label", image, np.ones((3, 2), np.uint8))
    _write_pair(tmp_path, "training", "outside", image, np.array([[1, 9], [7, 0]], np.uint8))
    _write_pair(tmp_path, "training", "rgb_label", image, np.zeros((2, 2, 3), np.uint8))
    Image.fromarray(image).save(tmp_path / "images" / "training" / "unlabelled.jpg")
    (tmp_path / "images" / "training" / "empty.jpg").write_bytes(b"")
    (tmp_path / "annotations" / "training" / "empty.png").write_bytes(b"")
    dataset = SegmentationDataset(find_layout(tmp_path), "training", EvalTransform())
    assert [s.path.rsplit("/", 1)[-1] for s in dataset.skipped] == ["unlabelled.jpg"]
    read = {path.rsplit("/", 1)[-1]: dataset[i] for i, (path, _) in enumerate(dataset.samples)}
    reasons = {name: item.reason for name, item in read.items() if isinstance(item, Skipped)}
    assert set(reasons) == {"big_label.png", "outside.png", "rgb_label.png", "empty.jpg"}
    assert "label map is 2x3" in reasons["big_label.png"]
    assert "label values 6, 8 (after reduce_zero_label) outside the 3 classes" in reasons["outside.png"]
    assert "single-channel" in reasons["rgb_label.png"] and "empty file" in reasons["empty.jpg"]
    image_tensor, label = read["good.png"]
    assert image_tensor.shape == (3, 2, 2) and label.tolist() == [[0, 1], [2, 255]]


def test_what_cannot_be_skipped_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        find_layout(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="neither in ADE20K's layout"):
        find_layout(tmp_path)
    (tmp_path / "classes.txt").write_text("\n")
    with pytest.raises(DatasetError, match="names no classes"):
        find_layout(tmp_path)
    (tmp_path / "classes.txt").write_text("a\n")
    layout = find_layout(tmp_path)
    with pytest.raises(DatasetError, match="no 'train' split"):
        SegmentationDataset(layout, "train")
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "labels").mkdir()
    with pytest.raises(DatasetError, match="no image with a label map"):
        SegmentationDataset(layout, "train")


def test_rescale_size_is_mmcvs_keep_ratio_rule():
    assert rescale_size(300, 100, (2048, 512)) == (1536, 512)
    assert rescale_size(683, 512, (2048, 512)) == (683, 512)
    assert rescale_size(4000, 1000, (1024, 256)) == (1024, 256)


def test_training_pipeline_gives_padded_crops_and_respects_cat_max_ratio():
    transform = TrainTransform(img_scale=(64, 32), ratio_range=(1.0, 1.0), crop_size=48, photometric=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8))
    label = np.zeros((32, 64), np.uint8)
    label[:, :16] = 1
    pixels, mask = transform(image, label)
    assert pixels.shape == (3, 48, 48) and mask.shape == (48, 48) and mask.dtype == torch.long
    assert (mask[32:] == 255).all() and (pixels[:, 32:] == 0).all()  # padded below the 32-pixel-high image
    assert set(mask[:32].unique().tolist()) <= {0, 1}

    def mixed_share(ratio: float) -> float:
        crop = TrainTransform(crop_size=24, cat_max_ratio=ratio)
        torch.manual_seed(0)
        boxes = [crop._crop_box(torch.from_numpy(label)[None]) for _ in range(200)]
        mixed = [(label[t : t + h, left : left + w] == 1).mean() for t, left, h, w in boxes]
        return float(np.mean([0.25 < share < 0.75 for share in mixed]))

    assert mixed_share(0.75) > mixed_share(1.0) + 0.2  # 10 redraws find crops no class dominates


def test_a_rectangular_crop_is_h_by_w_and_pads_each_axis():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 64, 3), dtype=np.uint8))
    label = np.ones((32, 64), np.uint8)
    keep = dict(img_scale=(64, 32), ratio_range=(1.0, 1.0), photometric=False, flip_prob=0.0)
    pixels, mask = TrainTransform(crop_size=(24, 40), **keep)(image, label)
    assert pixels.shape == (3, 24, 40) and mask.shape == (24, 40) and (mask == 1).all()
    pixels, mask = TrainTransform(crop_size=(16, 80), **keep)(image, label)  # wider than the image: padded right
    assert pixels.shape == (3, 16, 80) and (mask[:, 64:] == 255).all() and (mask[:, :64] == 1).all()


def test_generated_dataset_is_deterministic_and_in_ade20k_layout(tmp_path):
    a = write_segmentation_dataset(tmp_path / "a", train_images=3, val_images=2, size=(32, 24), seed=5)
    b = write_segmentation_dataset(tmp_path / "b", train_images=3, val_images=2, size=(32, 24), seed=5)
    layout = find_layout(a)
    assert layout.kind == "ade20k" and layout.class_names == CLASS_NAMES
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 11 and files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    labels = np.concatenate([np.asarray(Image.open(p)).ravel() for p in (a / "annotations").rglob("*.png")])
    assert labels.max() <= len(CLASS_NAMES) and len(np.unique(labels)) >= 4
    dataset = SegmentationDataset(layout, "validation", EvalTransform())
    assert all(not isinstance(dataset[i], Skipped) for i in range(len(dataset)))

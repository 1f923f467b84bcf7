"""FolderDataset: ImageNet's folder layout, class mapping, unreadable files skipped and reported, clear errors."""

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import functional as F

from mambaout.data.folder import DatasetError, FolderDataset, SkipLog, Skipped, collate_skipping, find_classes


def _image(path, colour=(200, 30, 40), size=(20, 16), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)
    return path


def _truncated(path, fmt):
    """The first half of a noisy image file: the header reads, the pixel data ends early."""
    noise = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


@pytest.fixture
def planted(tmp_path):
    """train/ with 2 classes, 5 good images in odd cases and places, 4 bad files and some non-images."""
    train = tmp_path / "train"
    good = [
        _image(train / "cat" / "a.png"),
        _image(train / "cat" / "B.JPG", fmt="JPEG"),
        _image(train / "cat" / "nested" / "c.Png"),
        _image(train / "dog" / "d.jpeg"),
        _image(train / "dog" / "e.webp", fmt="WEBP"),
    ]
    bad = {
        (train / "cat" / "text.jpg"): "not an image",
        _truncated(train / "dog" / "cut.png", "PNG"): "truncated",
        _truncated(train / "dog" / "cut.jpg", "JPEG"): "truncated",
    }
    (train / "cat" / "text.jpg").write_text("this is not a JPEG")
    empty = train / "dog" / "empty.png"
    empty.touch()
    (train / "dog" / "gone.png").symlink_to(tmp_path / "deleted.png")  # a broken link: skipped at scan time
    (train / "cat" / ".DS_Store").write_bytes(b"\0\1")
    _image(train / "cat" / "._hidden.png")  # macOS resource fork: hidden, never read
    _image(train / ".cache" / "x.png")  # a hidden folder is not a class
    (train / "dog" / "labels.txt").write_text("dog\n")
    (train / "dog" / "photo.heic").write_bytes(b"heic")
    (train / "cat" / "nested" / "loop").symlink_to(train / "cat")  # walked once, not forever
    return tmp_path, good, bad, empty


def test_scan_finds_images_by_extension_in_any_case_and_ignores_the_rest(planted, caplog):
    root, good, bad, empty = planted
    with caplog.at_level(logging.WARNING, logger="mambaout"):
        ds = FolderDataset(root, "train")
    assert find_classes(root, "train") == ["cat", "dog"]
    assert ds.classes == ["cat", "dog"] and ds.class_to_idx == {"cat": 0, "dog": 1}
    expected = sorted((str(p), 0 if p.parent.name in ("cat", "nested") else 1) for p in [*good, *bad])
    assert sorted(ds.samples) == expected
    assert ds.targets == [t for _, t in ds.samples]
    assert len(ds) == 8
    assert ds.skipped == [
        Skipped(str(empty), "empty file (0 bytes)"),
        Skipped(str(root / "train" / "dog" / "gone.png"), "cannot be opened (No such file or directory)"),
    ]
    # .txt is an obvious non-image (silent); .heic may be an image this reader does not take: listed and warned
    assert [s.path for s in ds.ignored] == [str(root / "train" / "dog" / "photo.heic")]
    assert "ignored 1 file(s)" in caplog.text and ".heic: 1" in caplog.text


def test_unreadable_files_come_back_as_markers_from_worker_processes(planted):
    root, _good, bad, _empty = planted
    ds = FolderDataset(root, "train", transform=lambda img: F.to_tensor(img.resize((8, 8))))
    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_skipping)
    images, targets, skipped = [], [], []
    for batch_images, batch_targets, batch_skipped in loader:
        assert len(batch_images) == len(batch_targets) and len(batch_targets) + len(batch_skipped) <= 3
        images.append(batch_images)
        targets.append(batch_targets)
        skipped += batch_skipped
    images = torch.cat([i for i in images if len(i)])
    assert images.shape == (5, 3, 8, 8)
    assert sorted(torch.cat(targets).tolist()) == [0, 0, 0, 1, 1]
    assert {s.path for s in skipped} == {str(p) for p in bad}
    for s in skipped:
        assert bad[Path(s.path)] in s.reason
    # a solid-colour image decodes to its colour: the good files really were read
    red = images[torch.cat(targets) == 0][0]
    torch.testing.assert_close(red[:, 4, 4], torch.tensor([200, 30, 40]) / 255, atol=1 / 255, rtol=0)


def test_skip_log_dedups_writes_and_sums_up(planted, tmp_path):
    root, _good, bad, empty = planted
    ds = FolderDataset(root, "train")
    log = SkipLog(ds.skipped)
    assert log.summary() == "skipped 2 unreadable files"
    for _ in range(2):  # two epochs meet the same bad files
        log.add([item for item in (ds[i] for i in range(len(ds))) if isinstance(item, Skipped)])
    assert len(log) == 5
    written = log.write(tmp_path / "out" / "skipped.txt")
    lines = written.read_text().splitlines()
    expected = sorted([str(empty), str(empty.parent / "gone.png"), *map(str, bad)])
    assert [line.split("\t")[0] for line in lines] == expected
    assert all(len(line.split("\t")) == 2 and line.split("\t")[1] for line in lines)
    assert log.summary() == f"skipped 5 unreadable files (listed in {written})"
    assert SkipLog().summary() == "no unreadable files"


def test_a_batch_of_only_skipped_files_collates_to_empty_tensors():
    markers = [Skipped("a.jpg", "not an image"), Skipped("b.png", "truncated")]
    images, targets, skipped = collate_skipping(markers)
    assert images.shape == (0,) and targets.shape == (0,) and targets.dtype == torch.long
    assert skipped == markers
    images, targets, skipped = collate_skipping([(torch.ones(3, 2, 2), 4), markers[0], (torch.zeros(3, 2, 2), 1)])
    assert images.shape == (2, 3, 2, 2) and targets.tolist() == [4, 1] and skipped == [markers[0]]


def test_val_maps_to_train_classes_and_may_lack_some(tmp_path):
    for name in ("ant", "bee", "cow"):
        _image(tmp_path / "train" / name / "0.png")
    _image(tmp_path / "val" / "cow" / "0.png")
    val = FolderDataset(tmp_path, "val", classes=find_classes(tmp_path, "train"), classes_from="train")
    assert val.classes == ["ant", "bee", "cow"] and val.targets == [2]


def test_val_class_not_in_train_is_named(tmp_path):
    _image(tmp_path / "train" / "ant" / "0.png")
    _image(tmp_path / "val" / "ant" / "0.png")
    _image(tmp_path / "val" / "wasp" / "0.png")
    with pytest.raises(DatasetError, match=r"class folder\(s\) in .*val' that are not in train: wasp"):
        FolderDataset(tmp_path, "val", classes=find_classes(tmp_path, "train"), classes_from="train")


def test_missing_split_names_the_path_and_the_splits_there(tmp_path):
    _image(tmp_path / "train" / "ant" / "0.png")
    (tmp_path / "test").mkdir()
    with pytest.raises(DatasetError, match=r"no 'val' split in .*expected .*val'; the folders there are: test, train"):
        FolderDataset(tmp_path, "val")
    with pytest.raises(DatasetError, match=r"data folder .*nowhere' does not exist"):
        find_classes(tmp_path / "nowhere", "val")


def test_empty_class_folder_is_named(tmp_path):
    _image(tmp_path / "train" / "ant" / "0.png")
    (tmp_path / "train" / "bee").mkdir()
    (tmp_path / "train" / "cow").mkdir()
    (tmp_path / "train" / "cow" / "empty.jpg").touch()  # only a zero-byte file: nothing to learn from
    with pytest.raises(DatasetError, match=r"2 class folder\(s\) .*without a single non-empty image file.*: bee, cow"):
        FolderDataset(tmp_path, "train")


def test_no_class_folders_is_an_error_with_a_hint_for_unsorted_images(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match=r"no class folders in .*train'$"):
        FolderDataset(tmp_path, "train")
    _image(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG", fmt="JPEG")
    with pytest.raises(DatasetError, match="1 images directly inside it: put each image in a folder named after"):
        FolderDataset(tmp_path, "val")

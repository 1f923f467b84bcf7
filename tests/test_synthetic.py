import hashlib

import numpy as np
import pytest
from PIL import Image

from mambaout.data.images import open_rgb
from mambaout.data.synthetic import CLASSES, render, write_dataset


def _pixel_hash(img):
    return hashlib.sha256(np.asarray(img).tobytes()).hexdigest()


def test_there_are_several_classes():
    assert len(CLASSES) >= 2
    assert all(callable(paint) for paint in CLASSES.values())


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("name", list(CLASSES))
def test_render_every_class(name, size):
    img = render(name, seed=3, size=size)
    assert img.mode == "RGB"
    assert img.size == (size, size)
    pixels = np.asarray(img, dtype=np.float64)
    assert pixels.std() > 10  # something was drawn, not a flat background


@pytest.mark.parametrize("name", list(CLASSES))
def test_render_is_deterministic(name):
    assert render(name, 11, 32).tobytes() == render(name, 11, 32).tobytes()


@pytest.mark.parametrize("name", list(CLASSES))
def test_render_seeds_differ(name):
    hashes = {_pixel_hash(render(name, seed, 32)) for seed in range(8)}
    assert len(hashes) == 8


def test_render_unknown_class():
    with pytest.raises(KeyError):
        render("no_such_shape", 0, 32)


def _split_files(root, split):
    return {name: sorted((root / split / name).glob("*.png")) for name in CLASSES}


def test_write_dataset_layout_and_counts(tmp_path):
    root = write_dataset(tmp_path / "data", train_per_class=4, val_per_class=2, size=32, seed=5)
    assert root == tmp_path / "data"
    assert sorted(p.name for p in root.iterdir()) == ["train", "val"]
    for split, count in (("train", 4), ("val", 2)):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(CLASSES)
        for name, files in _split_files(root, split).items():
            assert len(files) == count, (split, name)
            assert len(list((root / split / name).iterdir())) == count  # nothing but the PNGs
            for path in files:
                with Image.open(path) as img:
                    assert img.format == "PNG" and img.mode == "RGB" and img.size == (32, 32)


def test_write_dataset_class_subset(tmp_path):
    root = write_dataset(tmp_path, train_per_class=1, val_per_class=1, size=32, classes=("ring", "dots"))
    assert sorted(p.name for p in (root / "train").iterdir()) == ["dots", "ring"]
    assert sorted(p.name for p in (root / "val").iterdir()) == ["dots", "ring"]


def test_write_dataset_is_reproducible_and_seeded(tmp_path):
    def contents(root):
        return {p.relative_to(root).as_posix(): _pixel_hash(open_rgb(p)) for p in sorted(root.rglob("*.png"))}

    kwargs = {"train_per_class": 2, "val_per_class": 1, "size": 32, "classes": ("circle", "stripes_diagonal")}
    first = contents(write_dataset(tmp_path / "a", seed=1, **kwargs))
    again = contents(write_dataset(tmp_path / "b", seed=1, **kwargs))
    other = contents(write_dataset(tmp_path / "c", seed=2, **kwargs))
    assert first == again
    assert first.keys() == other.keys()
    assert set(first.values()).isdisjoint(other.values())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return write_dataset(root, train_per_class=20, val_per_class=10, size=32, seed=0)


def test_no_image_in_both_splits(dataset):
    hashes = {}
    for split in ("train", "val"):
        hashes[split] = [_pixel_hash(open_rgb(p)) for files in _split_files(dataset, split).values() for p in files]
    assert len(hashes["train"]) == 20 * len(CLASSES) and len(hashes["val"]) == 10 * len(CLASSES)
    assert len(set(hashes["train"])) == len(hashes["train"])  # no repeats inside a split either
    assert len(set(hashes["val"])) == len(hashes["val"])
    assert set(hashes["train"]).isdisjoint(hashes["val"])


def _shape_signature(img):
    """Log power spectrum of the standardised grey image, unit length.

    Colours are drawn at random per image and the figure moves around, so raw class-average images all blur
    to the same grey; the power spectrum ignores position and the figure/background colour swap, and keeps the
    shape's scale and texture.
    """
    grey = np.asarray(img, dtype=np.float64).mean(axis=2)
    grey = (grey - grey.mean()) / (grey.std() + 1e-9)
    spectrum = np.log1p(np.abs(np.fft.fft2(grey)) ** 2).ravel()
    return spectrum / np.linalg.norm(spectrum)


def test_classes_are_learnable(dataset):
    """A nearest-centroid classifier fit on train must beat chance by far on val: the labels carry signal."""
    names = list(CLASSES)
    features = {
        split: {name: np.stack([_shape_signature(open_rgb(p)) for p in files]) for name, files in by_class.items()}
        for split, by_class in ((s, _split_files(dataset, s)) for s in ("train", "val"))
    }
    centroids = np.stack([features["train"][name].mean(axis=0) for name in names])
    predictions, labels = [], []
    for label, name in enumerate(names):
        distances = ((features["val"][name][:, None, :] - centroids[None]) ** 2).sum(axis=2)
        predictions.extend(distances.argmin(axis=1))
        labels.extend([label] * len(distances))
    accuracy = np.mean(np.asarray(predictions) == np.asarray(labels))
    chance = 1 / len(names)
    assert accuracy > 3 * chance, accuracy
    assert accuracy > 3 * chance, accuracy
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    recall = {name: np.mean(predictions[labels == k] == k) for k, name in enumerate(names)}
    assert all(r > chance for r in recall.values()), recall  # no class is indistinguishable from the rest

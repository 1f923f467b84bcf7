"""Training augmentation: every auto-augment policy --aa accepts runs at every magnitude on every Pillow; a transform
that raises is skipped and listed, or stops the run when it raises often; the default recipe trains end to end."""

import csv
import random

import numpy as np
import PIL
import pytest
import torch
from PIL import Image, ImageOps
from timm.data import auto_augment, create_transform
from torchvision.transforms import Compose

from mambaout.data import augment
from mambaout.data.augment import TransformError, apply_transform, harden, policy_transform
from mambaout.data.folder import DatasetError
from mambaout.data.images import to_rgb
from mambaout.data.synthetic import write_dataset
from mambaout.engine.config import ConfigError
from mambaout.tasks.classification import task as train_module
from mambaout.tasks.classification.config import TrainConfig
from mambaout.tasks.classification.task import train

RECIPE = TrainConfig().aa  # the official recipe's policy, rand-m9-mstd0.5-inc1
POLICIES = [
    RECIPE, "rand-m9-mstd0.5", "rand-m9-inc1", "rand-m9", "rand-m10-mstd1.0-inc1", "rand-m9-n3-mstd101-inc1",
    "rand-m9-mstd0.5-inc1-mmax15", "augmix-m5-w4-d2", "augmix-m9-mstd0.5-w3-b1", "original", "originalr", "v0",
    "v0r", "3a",
]
HPARAMS = {"translate_const": 100, "img_mean": (124, 116, 104)}
PILLOW_13 = int(PIL.__version__.split(".")[0]) >= 13


@pytest.fixture
def pillow_13_posterize(monkeypatch):
    """Posterize as Pillow 13 has it (bits outside 1..8 raise), whatever Pillow is installed."""
    if PILLOW_13:
        return
    original = ImageOps.posterize

    def strict(image, bits):
        if not 1 <= bits <= 8:
            raise ValueError("bits must be between or equal to 1 and 8")
        return original(image, bits)

    monkeypatch.setattr(ImageOps, "posterize", strict)


def _images():
    """Small images of several sizes, read from several modes the way the training loader reads them (to RGB)."""
    rng = np.random.default_rng(0)
    rgb = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 40), (17, 29), (64, 8))]
    grey = Image.fromarray(rng.integers(0, 256, (33, 21), dtype=np.uint8))
    wide = Image.fromarray(rng.integers(0, 65536, (12, 15), dtype=np.uint16))
    others = [grey, wide, rgb[0].convert("RGBA"), rgb[1].convert("P"), rgb[2].convert("CMYK")]
    return rgb + [to_rgb(image) for image in others]


def test_timm_alone_fails_where_the_hardened_transform_does_not(pillow_13_posterize):
    """The issue's reproduction: the recipe's transform, 3,000 draws on one 40x40 image."""
    image = _images()[0]
    failures = {}
    for hardened in (False, True):
        random.seed(0)
        torch.manual_seed(0)
        transform = create_transform(32, is_training=True, auto_augment=RECIPE, re_prob=0.25,
                                     interpolation="random")
        if hardened:
            transform = harden(transform)
        failures[hardened] = 0
        for _ in range(3000):
            try:
                transform(image)
            except ValueError:
                failures[hardened] += 1
    assert failures[False] > 0 and failures[True] == 0


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_runs_thousands_of_draws_on_several_image_kinds(policy, pillow_13_posterize):
    random.seed(1)
    np.random.seed(1)
    transform = policy_transform(policy, HPARAMS)
    for image in _images():
        for _ in range(500):
            out = transform(image)
            assert out.size == image.size and out.mode == image.mode


@pytest.mark.parametrize("name", sorted(auto_augment.NAME_TO_OP))
@pytest.mark.parametrize("magnitude", [0, 9, 10, 15])
def test_every_op_runs_at_the_extremes_of_its_range(name, magnitude, pillow_13_posterize):
    """Each op at the lowest level, the recipe's, the clipped top (10) and an mmax top (15), deterministically."""
    hparams = {**HPARAMS, "magnitude_max": 15} if magnitude > 10 else HPARAMS
    op = harden(auto_augment.AugmentOp(name, prob=1.0, magnitude=magnitude, hparams=hparams))
    for image in _images():
        assert op(image).size == image.size


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_posterize_to_zero_bits_is_a_black_image(mode, pillow_13_posterize):
    image = _images()[0].convert(mode)  # posterize takes L and RGB
    op = harden(auto_augment.AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10))
    assert op.level_fn(10, op.hparams) == (0,)  # timm asks for 0 bits at the clipped top
    out = op(image)
    assert out.mode == mode and not np.asarray(out).any()
    assert np.array_equal(np.asarray(op.aug_fn(image, 4)), np.asarray(ImageOps.posterize(image, 4)))


def test_harden_leaves_timm_unchanged_for_other_code():
    before = dict(auto_augment.NAME_TO_OP)
    transform = harden(policy_transform(RECIPE, HPARAMS))
    assert before == auto_augment.NAME_TO_OP
    assert all(getattr(op.aug_fn, "wrapped", None) is not None for op in transform.ops)
    assert harden(transform) is transform and all(not hasattr(op.aug_fn.wrapped, "wrapped") for op in transform.ops)


def test_a_failing_op_is_named_with_its_step_and_level():
    op = auto_augment.AugmentOp("Rotate", prob=1.0, magnitude=9)
    op.aug_fn = lambda img, *args, **kwargs: (_ for _ in ()).throw(OSError("decoder broke"))
    transform = auto_augment.RandAugment([harden(op)], num_layers=1)
    with pytest.raises(TransformError, match=r"^RandAugment: op Rotate\(-?27\) raised OSError: decoder broke"):
        apply_transform(Compose([transform]), _images()[0])


def test_an_unknown_policy_is_refused_before_training():
    with pytest.raises(ConfigError, match="'rand-x9' is not an auto-augment policy"):
        TrainConfig(aa="rand-x9")


# ---- training: the default recipe end to end, and transforms that raise


def _recipe_config(data, tmp_path, **changes):
    """Every default of the recipe (RandAugment, mixup/cutmix, smoothing, random erasing), at a tiny scale."""
    options = dict(data_dir=str(data), model="mambaout_test", img_size=24, batch_size=16, epochs=4, warmup_epochs=1,
                   cooldown_epochs=0, workers=0, output=str(tmp_path), experiment="run", log_interval=1000)
    return TrainConfig(**{**options, **changes})


def test_the_default_recipe_trains_epochs_on_a_generated_dataset(tmp_path, pillow_13_posterize, monkeypatch):
    """Enough draws that the rare 0-bit posterize comes up (checked), under Pillow 13's rule: nothing skipped."""
    data = write_dataset(tmp_path / "data", train_per_class=100, val_per_class=4, size=24)
    zero_bit_draws = []

    def recording(img, bits, **kwargs):
        zero_bit_draws.append(bits <= 0)
        return augment.posterize(img, bits, **kwargs)

    monkeypatch.setitem(augment._REPLACEMENTS, auto_augment.posterize, recording)
    result = train(_recipe_config(data, tmp_path))
    rows = list(csv.DictReader((result.output_dir / "summary.csv").read_text().splitlines()))
    assert len(rows) == 4 and all(int(r["train_skipped"]) == 0 for r in rows)
    assert not (result.output_dir / "skipped.txt").exists()
    assert sum(zero_bit_draws) >= 1, f"{len(zero_bit_draws)} posterize draws, none at 0 bits: draw more images"


class Flaky:
    """A transform step that raises on a seeded fraction of the images it sees."""

    def __init__(self, rate):
        self.rate = rate

    def __call__(self, image):
        if random.random() < self.rate:
            raise RuntimeError("flaky step")
        return image


def _with_flaky_step(rate, monkeypatch):
    real = train_module._train_transform
    monkeypatch.setattr(train_module, "_train_transform", lambda config, data_config: Compose(
        [Flaky(rate), real(config, data_config)]))


def test_a_transform_that_raises_now_and_then_is_skipped_and_listed(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data", train_per_class=20, val_per_class=2, size=24)
    _with_flaky_step(0.05, monkeypatch)
    result = train(_recipe_config(data, tmp_path, epochs=1))
    listed = (result.output_dir / "skipped.txt").read_text().splitlines()
    assert listed and all("Flaky raised RuntimeError: flaky step" in line for line in listed)
    row = next(csv.DictReader((result.output_dir / "summary.csv").read_text().splitlines()))
    assert int(row["train_skipped"]) == len(listed)


def test_a_transform_that_raises_often_stops_the_run_with_the_files_named(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data", train_per_class=20, val_per_class=2, size=24)
    train(_recipe_config(data, tmp_path, epochs=1))
    last = (tmp_path / "run" / "last.pth").read_bytes()
    _with_flaky_step(0.5, monkeypatch)
    with pytest.raises(DatasetError, match=r"failed on \d+ of the \d+ samples(.|\n)*Flaky raised RuntimeError"):
        train(_recipe_config(data, tmp_path, epochs=2, resume="auto"))
    assert (tmp_path / "run" / "last.pth").read_bytes() == last

"""LocalMamba's own training augmentation: its op table is the toolbox's, every op and the whole transform give the
toolbox's pixels draw for draw, thousands of draws of odd images never raise, and bad policies are ValueErrors.

The toolbox: github:hunto/LocalMamba@75e5d1f007c303509c77d179df38f7fa19c0d05c, classification/lib/dataset/
(augment_ops.py, transform.py). The oracles below restate its formulas directly on PIL/numpy/torch.
"""

# ruff: noqa: RUF046  (the oracles keep the toolbox's int(round(...)) and int(math.floor(...)) as written)

from __future__ import annotations

import math
import random
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from torchvision.transforms import InterpolationMode

from mambaout.data import local_mamba_augment as lm
from mambaout.data.augment import TransformError, apply_transform

COMMIT = "hunto/LocalMamba@75e5d1f007c303509c77d179df38f7fa19c0d05c"
AUGMENT_OPS = f"{COMMIT}:classification/lib/dataset/augment_ops.py"
TRANSFORM = f"{COMMIT}:classification/lib/dataset/transform.py"

# AUGMENT_OPS:18-38 `_RAND_TRANSFORMS`
TOOLBOX_OPS = [
    "Distort", "Zoom", "Blur", "Skew", "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeTpu", "Solarize",
    "SolarizeAdd", "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
    "TranslateYRel",
]
# AUGMENT_OPS:40-60 `_RAND_CHOICE_WEIGHTS_0`
TOOLBOX_WEIGHTS_0 = {
    "Rotate": 0.3, "ShearX": 0.2, "ShearY": 0.2, "TranslateXRel": 0.1, "TranslateYRel": 0.1, "Color": .025,
    "Sharpness": 0.025, "AutoContrast": 0.025, "Solarize": .005, "SolarizeAdd": .005, "Contrast": .005,
    "Brightness": .005, "Equalize": .005, "PosterizeTpu": 0, "Invert": 0, "Distort": 0, "Zoom": 0, "Blur": 0,
    "Skew": 0,
}
# AUGMENT_OPS:199-277 level functions, bound to op names at AUGMENT_OPS:471-495 `LEVEL_TO_ARG`:
# name -> (kind, scale, offset); the argument is (level / 10) * scale + offset, `int(...)` for "int",
# negated on random.random() > 0.5 for "signed", no argument for "none"
TOOLBOX_LEVELS = {
    "Distort": ("int", 10, 10),  # _distort_level_to_arg :260
    "Zoom": ("float", 0.4, 0),  # _zoom_level_to_arg :264
    "Blur": ("signed", 0.5, 0),  # _blur_level_to_arg :268
    "Skew": ("signed", 0.3, 0),  # _skew_level_to_arg :274
    "AutoContrast": ("none", 0, 0),
    "Equalize": ("none", 0, 0),
    "Invert": ("none", 0, 0),
    "Rotate": ("signed", 30.0, 0),  # _rotate_level_to_arg :199
    "PosterizeTpu": ("int", 4, 0),  # _posterize_tpu_level_to_arg :244
    "Solarize": ("int", 256, 0),  # _solarize_level_to_arg :250
    "SolarizeAdd": ("int", 110, 0),  # _solarize_add_level_to_arg :255
    "Color": ("float", 1.8, 0.1),  # _enhance_level_to_arg :206
    "Contrast": ("float", 1.8, 0.1),
    "Brightness": ("float", 1.8, 0.1),
    "Sharpness": ("float", 1.8, 0.1),
    "ShearX": ("signed", 0.3, 0),  # _shear_level_to_arg :211
    "ShearY": ("signed", 0.3, 0),
    "TranslateXRel": ("signed", 0.45, 0),  # _translate_rel_level_to_arg :225
    "TranslateYRel": ("signed", 0.45, 0),
}
# AUGMENT_OPS:429 prob=0.5 for every op; :442-443 defaults m 10, n 2; TRANSFORM:31-35 fill = the rounded ImageNet
# mean, the configured interpolation (bicubic for LocalMamba); AUGMENT_OPS:117 Rotate forces bicubic
TOOLBOX_PROB, TOOLBOX_FILL = 0.5, (124, 116, 104)
BICUBIC = Image.Resampling.BICUBIC
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """Gradients plus noise (so every op changes something), in `mode`."""
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + 3 * yy) * 11 % 256], -1)
    rgb = (20 + (rgb + rs.randint(-30, 30, rgb.shape)).clip(0, 255) * 200 // 255).astype(np.uint8)  # 20..220
    image = Image.fromarray(rgb)
    if mode == "RGBA":
        alpha = Image.fromarray(rs.randint(0, 256, (height, width)).astype(np.uint8))
        image = image.copy()
        image.putalpha(alpha)
        return image
    if mode == "P":
        return image.quantize(17)
    return image.convert(mode)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


# --- (a) the op set and magnitude -> argument table ------------------------------------------------------------


def test_op_set_and_weights_are_the_toolbox_s():
    assert list(lm.OP_NAMES) == TOOLBOX_OPS  # same order too: ops are drawn by index
    assert lm.CHOICE_WEIGHTS_0 == TOOLBOX_WEIGHTS_0
    expected = np.array([TOOLBOX_WEIGHTS_0[n] for n in TOOLBOX_OPS]) / sum(TOOLBOX_WEIGHTS_0[n] for n in TOOLBOX_OPS)
    np.testing.assert_allclose(lm.choice_weights(0), expected, rtol=0, atol=1e-15)
    assert lm.choice_weights(None) is None
    assert lm.TOOLBOX_FILL == TOOLBOX_FILL
    augment = lm.local_mamba_rand_augment("localmamba-rand")
    assert [op.name for op in augment.ops] == TOOLBOX_OPS
    assert {(op.prob, op.magnitude, op.magnitude_std) for op in augment.ops} == {(TOOLBOX_PROB, 10, 0.0)}
    assert augment.num_layers == 2 and augment.choice_weights is None


def expected_args(name: str, level: float) -> tuple:
    """The table's argument for `level`, with the sign drawn from `random` like the toolbox."""
    kind, scale, offset = TOOLBOX_LEVELS[name]
    value = (level / 10.0) * scale + offset
    if kind == "none":
        return ()
    if kind == "int":
        return (int(value),)
    if kind == "signed":
        return (-value if random.random() > 0.5 else value,)
    return (value,)


@pytest.mark.parametrize("name", TOOLBOX_OPS)
def test_magnitude_to_argument_is_the_toolbox_s(name):
    assert set(lm.LEVEL_TO_ARGS) == set(TOOLBOX_LEVELS)
    signs = set()
    for level in (0.0, 3.0, 8.7, 9.0, 9.49, 10.0, 10.6, 13.2, -0.4):  # unclipped: the toolbox never clips
        for seed in range(6):
            random.seed(seed)
            got = lm.LEVEL_TO_ARGS[name](level)
            random.seed(seed)
            assert got == expected_args(name, level), (name, level, seed)
            signs |= {math.copysign(1, a) for a in got if a}
    if TOOLBOX_LEVELS[name][0] == "signed":
        assert signs == {-1.0, 1.0}  # both branches drawn


def test_recipe_policy_parses_to_the_config():
    assert lm.parse_local_mamba_policy("localmamba-rand-m9-mstd0.5") == lm.LocalMambaPolicy(9, 2, 0.5, None)
    assert lm.parse_local_mamba_policy("localmamba-rand-mstd1-n3-m7-w0") == lm.LocalMambaPolicy(7, 3, 1.0, 0)
    assert lm.parse_local_mamba_policy("localmamba-rand") == lm.LocalMambaPolicy(10, 2, 0.0, None)
    assert lm.is_local_mamba_policy(lm.RECIPE_POLICY) and not lm.is_local_mamba_policy("rand-m9-mstd0.5-inc1")
    assert not lm.is_local_mamba_policy(None)


# --- (b) every op, and the whole transform, against a restatement of the toolbox's formulas --------------------


def official_distort(img, v):
    """AUGMENT_OPS:280-359: tiles = int(0.1 v); inner grid points of the source mesh move by (v, v)."""
    w, h = img.size
    n = int(0.1 * v)
    tw, th = int(math.floor(w / float(n))), int(math.floor(h / float(n)))
    last_w, last_h = w - tw * (n - 1), h - th * (n - 1)
    boxes = []
    for r in range(n):
        for c in range(n):
            bw = last_w if c == n - 1 else tw
            bh = last_h if r == n - 1 else th
            boxes.append([c * tw, r * th, c * tw + bw, r * th + bh])
    polygons = [[x1, y1, x1, y2, x2, y2, x2, y1] for x1, y1, x2, y2 in boxes]
    last_column = [(n - 1) + n * i for i in range(n)]
    last_row = range(n * n - n, n * n)
    for i in range(n * n - 1):
        if i in last_row or i in last_column:
            continue
        a, b, c, d = i, i + 1, i + n, i + 1 + n
        polygons[a][4] += v
        polygons[a][5] += v
        polygons[b][2] += v
        polygons[b][3] += v
        polygons[c][6] += v
        polygons[c][7] += v
        polygons[d][0] += v
        polygons[d][1] += v
    mesh = [[boxes[k], polygons[k]] for k in range(len(boxes))]
    return img.transform(img.size, Image.MESH, mesh, resample=BICUBIC)


def official_zoom(img, v):
    """AUGMENT_OPS:362-373."""
    w, h = img.size
    z = img.resize((int(round(w * v)), int(round(h * v))), resample=BICUBIC)
    zw, zh = z.size
    return z.crop((math.floor(zw / 2 - w / 2), math.floor(zh / 2 - h / 2), math.floor(zw / 2 + w / 2),
                   math.floor(zh / 2 + h / 2)))


def official_skew(img, v):
    """AUGMENT_OPS:392-418 (np.matrix, float32 pseudo-inverse)."""
    w, h = img.size
    s = int(math.ceil(max(w, h) * v))
    original = [(0, 0), (w, 0), (w, h), (0, h)]
    new = [(-s, 0), (w, -s), (w + s, h), (0, h + s)]
    rows = []
    for p1, p2 in zip(new, original):
        rows.append([p1[0], p1[1], 1, 0, 0, 0, -p2[0] * p1[0], -p2[0] * p1[1]])
        rows.append([0, 0, 0, p1[0], p1[1], 1, -p2[1] * p1[0], -p2[1] * p1[1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # np.matrix
        a = np.matrix(rows, dtype=np.float32)
        coefficients = np.array(np.dot(np.linalg.pinv(a), np.array(original).reshape(8))).reshape(8)
    return img.transform(img.size, Image.PERSPECTIVE, coefficients, resample=BICUBIC)


def official_blur(img, v):
    """AUGMENT_OPS:421-423, a possibly negative radius (a Pillow that refuses one: the same blur at |v|)."""
    try:
        return img.filter(ImageFilter.GaussianBlur(v))
    except ValueError:
        return img.filter(ImageFilter.GaussianBlur(abs(v)))


def official_solarize_add(img, add):
    """AUGMENT_OPS:163-174."""
    lut = [min(255, i + add) if i < 128 else i for i in range(256)]
    return img.point(lut * 3)


def affine(img, matrix):
    """AUGMENT_OPS:82-101: the configured interpolation (bicubic) and the mean fill."""
    return img.transform(img.size, Image.AFFINE, matrix, resample=BICUBIC, fillcolor=TOOLBOX_FILL)


OFFICIAL = {
    "Distort": official_distort,
    "Zoom": official_zoom,
    "Blur": official_blur,
    "Skew": official_skew,
    "AutoContrast": ImageOps.autocontrast,
    "Equalize": ImageOps.equalize,
    "Invert": ImageOps.invert,
    "Rotate": lambda img, d: img.rotate(d, resample=BICUBIC, fillcolor=TOOLBOX_FILL),  # AUGMENT_OPS:114-119
    "PosterizeTpu": lambda img, b: img if b >= 8 else ImageOps.posterize(img, b),  # :177-180
    "Solarize": ImageOps.solarize,
    "SolarizeAdd": official_solarize_add,
    "Color": lambda img, f: ImageEnhance.Color(img).enhance(f),
    "Contrast": lambda img, f: ImageEnhance.Contrast(img).enhance(f),
    "Brightness": lambda img, f: ImageEnhance.Brightness(img).enhance(f),
    "Sharpness": lambda img, f: ImageEnhance.Sharpness(img).enhance(f),
    "ShearX": lambda img, f: affine(img, (1, f, 0, 0, 1, 0)),
    "ShearY": lambda img, f: affine(img, (1, 0, 0, f, 1, 0)),
    "TranslateXRel": lambda img, p: affine(img, (1, 0, p * img.size[0], 0, 1, 0)),
    "TranslateYRel": lambda img, p: affine(img, (1, 0, 0, 0, 1, p * img.size[1])),
}


def official_op(name, img, level):
    return OFFICIAL[name](img, *expected_args(name, level))


def official_augment_op(name, img, magnitude, std):
    """AUGMENT_OPS:538-545: p 0.5, then random.gauss(m, std) (unclipped), then the op."""
    if random.random() > TOOLBOX_PROB:
        return img
    level = random.gauss(magnitude, std) if std > 0 else magnitude
    return official_op(name, img, level)


def official_rand_augment(img, magnitude, std, n):
    """AUGMENT_OPS:554-559: n ops drawn with replacement by numpy, then each applied."""
    for index in np.random.choice(len(TOOLBOX_OPS), n, replace=True):
        img = official_augment_op(TOOLBOX_OPS[index], img, magnitude, std)
    return img


@pytest.mark.parametrize("name", TOOLBOX_OPS)
def test_each_op_gives_the_toolbox_s_pixels(name):
    images = [make_image(37, 29, seed=1), make_image(16, 23, seed=2)]
    changed = False
    for level in (9.0, 4.0, 10.4, 12.5):  # 10.4 and up: Distort's 2 x 2 mesh
        for image in images:
            for seed in range(3):
                random.seed(seed)
                mine = lm.apply_op(name, image, level)
                random.seed(seed)
                theirs = official_op(name, image, level)
                assert mine.size == theirs.size == image.size and mine.mode == "RGB"
                assert np.array_equal(pixels(mine), pixels(theirs)), (name, level, image.size, seed)
                changed |= not np.array_equal(pixels(mine), pixels(image))
    assert changed  # the comparison saw the op at work


def test_blur_sign_is_the_same_blur():
    image = make_image(21, 17)
    try:
        negative = image.filter(ImageFilter.GaussianBlur(-0.45))
    except ValueError:
        pytest.skip("this Pillow refuses a negative radius (the module blurs at |radius|)")
    assert np.array_equal(pixels(negative), pixels(image.filter(ImageFilter.GaussianBlur(0.45))))


def test_op_draws_and_rand_augment_sampling_are_the_toolbox_s():
    image = make_image(31, 27, seed=3)
    # the recipe, and a noise wide enough that unclipped magnitudes (< 0, > 10) are drawn often
    toolbox_raised = 0
    for policy, magnitude, std, n in (
        ("localmamba-rand-m9-mstd0.5", 9, 0.5, 2),
        ("localmamba-rand-m9-n3-mstd5", 9, 5, 3),
    ):
        augment = lm.local_mamba_rand_augment(policy)
        for seed in range(120):
            random.seed(seed)
            np.random.seed(seed)
            mine = augment(image)
            random.seed(seed)
            np.random.seed(seed)
            try:
                theirs = official_rand_augment(image, magnitude, std, n)
            except ValueError:  # Zoom below magnitude ~0.4 resizes to 0 pixels; the module keeps 1 (never raises)
                toolbox_raised += 1
                continue
            assert np.array_equal(pixels(mine), pixels(theirs)), (policy, seed)
    assert toolbox_raised <= 3
    augment = lm.local_mamba_rand_augment("localmamba-rand-m9-mstd0.5")
    random.seed(7)
    np.random.seed(7)
    augment(image)
    after_mine = (random.random(), np.random.rand())
    random.seed(7)
    np.random.seed(7)
    official_rand_augment(image, 9, 0.5, 2)
    assert after_mine == (random.random(), np.random.rand())


def test_weighted_policy_draws_without_replacement_by_the_weights():
    augment = lm.local_mamba_rand_augment("localmamba-rand-m9-n2-w0")
    np.random.seed(0)
    expected = np.random.choice(TOOLBOX_OPS, 2, replace=False, p=lm.choice_weights(0))
    np.random.seed(0)
    picks = np.random.choice(len(augment.ops), 2, replace=False, p=augment.choice_weights)
    assert [augment.ops[i].name for i in picks] == list(expected)


def official_crop_params(img, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """AUGMENT_OPS:607-647 (`RandomResizedCropAndInterpolation.get_params`)."""
    area = img.size[0] * img.size[1]
    for _ in range(10):
        target_area = random.uniform(*scale) * area
        aspect = math.exp(random.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
        if w <= img.size[0] and h <= img.size[1]:
            return random.randint(0, img.size[1] - h), random.randint(0, img.size[0] - w), h, w
    in_ratio = img.size[0] / img.size[1]
    if in_ratio < min(ratio):
        w, h = img.size[0], int(round(img.size[0] / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = img.size[1], int(round(img.size[1] * max(ratio)))
    else:
        w, h = img.size
    return (img.size[1] - h) // 2, (img.size[0] - w) // 2, h, w


def official_erase(x, probability=0.25):
    """AUGMENT_OPS:704-722, mode pixel, one box (TRANSFORM:45), on the normalised image."""
    if random.random() > probability:
        return x
    _, img_h, img_w = x.shape
    for _ in range(10):
        target_area = random.uniform(0.02, 1 / 3) * img_h * img_w
        aspect = math.exp(random.uniform(math.log(0.3), math.log(1 / 0.3)))
        h, w = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
        if w < img_w and h < img_h:
            top, left = random.randint(0, img_h - h), random.randint(0, img_w - w)
            x[:, top : top + h, left : left + w] = torch.empty((3, h, w)).normal_()
            break
    return x


def official_transform(img, size, policy=(9, 0.5, 2)):
    """TRANSFORM:14-46 with the LocalMamba config, then the prefetcher's float + normalise (DataPrefetcher)."""
    img = img.convert("RGB")
    i, j, h, w = official_crop_params(img)
    img = TF.resized_crop(img, i, j, h, w, size, InterpolationMode.BICUBIC)
    if torch.rand(1) < 0.5:  # torchvision's RandomHorizontalFlip
        img = TF.hflip(img)
    img = official_rand_augment(img, *policy)
    chw = torch.from_numpy(np.rollaxis(np.array(img, dtype=np.uint8), 2)).float()
    mean = torch.tensor([x * 255 for x in MEAN]).view(3, 1, 1)
    std = torch.tensor([x * 255 for x in STD]).view(3, 1, 1)
    return official_erase((chw - mean) / std)


@pytest.mark.parametrize("size", [33, (27, 35)])
def test_whole_transform_is_the_toolbox_s_bit_for_bit(size):
    transform = lm.local_mamba_train_transform(size, MEAN, STD)
    crop = (size, size) if isinstance(size, int) else size
    images = [make_image(61, 40, 4), make_image(23, 47, 5, "L"), make_image(50, 50, 6, "RGBA")]
    for seed in range(120):
        image = images[seed % len(images)]
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        mine = transform(image)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        theirs = official_transform(image, list(crop))
        assert torch.equal(mine, theirs), seed


def test_colour_jitter_only_without_auto_augment():
    with_aa = lm.local_mamba_train_transform(32, color_jitter=0.3)
    without = lm.local_mamba_train_transform(32, auto_augment=None, color_jitter=0.3, re_prob=0)
    names = [type(t).__name__ for t in with_aa.transforms]
    assert names == ["ToRGB", "RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "LocalMambaRandAugment",
                     "ScaledNormalize", "RandomErasing"]
    assert [type(t).__name__ for t in without.transforms][3:] == ["ColorJitter", "ScaledNormalize"]
    erasing = with_aa.transforms[-1]
    assert (erasing.probability, erasing.per_pixel, erasing.max_count, erasing.device) == (0.25, True, 1, "cpu")


# --- (c) thousands of draws never raise -----------------------------------------------------------------------


def test_thousands_of_draws_of_odd_images_never_raise(monkeypatch):
    applied = Counter()
    for name, function in list(lm.OPS.items()):

        def counting(img, *args, _name=name, _function=function, **kwargs):
            applied[_name] += 1
            return _function(img, *args, **kwargs)

        monkeypatch.setitem(lm.OPS, name, counting)
    images = [make_image(w, h, seed, mode) for seed, (w, h, mode) in enumerate([
        (1, 1, "RGB"), (3, 7, "L"), (17, 5, "RGBA"), (33, 21, "P"), (45, 61, "RGB"), (2, 90, "L"), (71, 3, "P"),
    ])]
    transforms = [  # the recipe, and a noisy policy that reaches magnitudes below 0 and above 15
        (lm.local_mamba_train_transform(24), (3, 24, 24)),
        (lm.local_mamba_train_transform((19, 27), auto_augment="localmamba-rand-m9-n3-mstd3"), (3, 19, 27)),
    ]
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    draws = 0
    for i in range(3600):
        transform, shape = transforms[i % 2]
        out = transform(images[i % len(images)])
        assert out.shape == shape and out.dtype == torch.float32 and bool(torch.isfinite(out).all())
        draws += 1
    assert draws >= 3000
    assert set(applied) == set(TOOLBOX_OPS) and min(applied.values()) >= 100, applied


@pytest.mark.parametrize("size", [(9, 13), (37, 29), (224, 224)])
def test_every_op_at_every_magnitude_keeps_the_size(size):
    image = make_image(*size, seed=8)
    for name in TOOLBOX_OPS:
        for level in (-1.0, 0.0, 0.5, 2.5, 5.0, 9.0, 9.99, 10.0, 12.0, 15.0, 20.0):
            random.seed(int(level * 10) + 3)
            out = lm.apply_op(name, image, level)
            assert out.size == image.size and out.mode == "RGB", (name, level)


def test_a_failing_op_is_named(monkeypatch):
    def broken(img, *args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setitem(lm.OPS, "Zoom", broken)
    transform = lm.local_mamba_train_transform(16, auto_augment="localmamba-rand-m9-n30")
    transform.transforms[3].ops = [op for op in transform.transforms[3].ops if op.name == "Zoom"]
    with pytest.raises(TransformError, match=r"LocalMambaRandAugment: op Zoom\(0\.36\) raised OSError: disk on fire"):
        apply_transform(transform, make_image(20, 20))


# --- (d) bad policies and options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("rand-m9-mstd0.5", "must start with 'localmamba-rand'"),
        ("localmamba-augmix-m9", "must start with 'localmamba-rand'"),
        ("localmamba-rand-m9-mstd0.5-inc1", "unknown section 'inc1'.*no increasing ops"),
        ("localmamba-rand-m9-p0.5", "unknown section 'p0.5'"),
        ("localmamba-rand-m9-", "unknown section ''"),
        ("localmamba-rand-m", "section 'm' has no value"),
        ("localmamba-rand-m9.5", "m needs an integer, got '9.5'"),
        ("localmamba-rand-mstd0.5x", "mstd needs a number"),
        ("localmamba-rand-m9-m10", "sets m twice"),
        ("localmamba-rand-w1", "one weight table, w0"),
        ("localmamba-rand-n14-w0", "from 13 ops, n is 14"),
    ],
)
def test_bad_policy_is_a_clear_value_error(policy, message):
    with pytest.raises(ValueError, match=message):
        lm.check_local_mamba_policy(policy)
    with pytest.raises(ValueError, match=message):
        lm.local_mamba_train_transform(32, auto_augment=policy)


def test_bad_options_are_value_errors():
    with pytest.raises(ValueError, match="bilinear or bicubic only, not 'random'"):
        lm.local_mamba_train_transform(32, interpolation="random")
    with pytest.raises(ValueError, match="input_size"):
        lm.local_mamba_train_transform((3, 0, 32))
    with pytest.raises(ValueError, match="not a LocalMamba RandAugment op"):
        lm.LocalMambaOp("PosterizeIncreasing", 9)
    assert lm.local_mamba_train_transform((3, 20, 24))(make_image(30, 30)).shape == (3, 20, 24)

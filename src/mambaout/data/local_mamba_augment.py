"""LocalMamba's own training augmentation, as its image-classification toolbox runs it (not timm's train.py).

Source: github:hunto/LocalMamba@75e5d1f007c303509c77d179df38f7fa19c0d05c, classification/ (a vendored copy of
hunto/image_classification_sota): lib/dataset/transform.py `build_train_transforms`, lib/dataset/augment_ops.py
(an early fork of timm's auto_augment.py), lib/dataset/dataloader.py `DataPrefetcher`, lib/dataset/builder.py.

The pipeline, per image (PIL in, float32 CHW tensor out):

1. RGB: the toolbox's dataset opens every image with `.convert("RGB")`.
2. Random resized crop to `input_size`, scale (0.08, 1), ratio (3/4, 4/3), bilinear or bicubic; timm's
   `RandomResizedCropAndInterpolation` is the same code (same draws, same resize).
3. Horizontal flip, p 0.5.
4. The toolbox's RandAugment (below) when a policy is given; colour jitter only when none is (as in timm).
5. uint8 -> float32 and (x - 255 mean) / (255 std): the toolbox normalises the 0..255 batch on the GPU this way.
6. Random erasing (timm's class, which the toolbox copies), one box, after normalisation.

Mixup/cutmix then run on the batch (the toolbox's `Mixup` is timm's, batch mode).

The toolbox's RandAugment differs from timm's `rand-m9-mstd0.5-inc1`:

* 19 ops, timm's 15 non-increasing ones (Posterize is the TPU variant) plus Distort, Zoom, Blur and Skew;
  no `inc` variants exist.
* The magnitude noise is `random.gauss(m, mstd)` and is never clipped (timm clips to [0, 10]).
* Rotate always resamples bicubic; Distort, Zoom and Skew resample bicubic and fill black; Rotate, Shear and
  Translate fill the ImageNet mean (124, 116, 104) whatever `mean` is.
* Every op is applied with p 0.5; 2 ops (`n`) are drawn with replacement (weighted draws, `w0`, without).

Policy grammar (sections separated by '-', in any order, each at most once)::

    localmamba-rand[-m<int>][-n<int>][-mstd<float>][-w0]

`m` magnitude (default 10), `n` ops per image (default 2), `mstd` std of the magnitude's gaussian noise (default 0),
`w0` the toolbox's only op-weight table (draws without replacement). `localmamba-rand-m9-mstd0.5` is the recipe's.
Anything else is a ValueError (the toolbox ignores sections without a digit; this parser names them).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from timm.data import auto_augment as timm_aa
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import transforms

from .augment import TransformError

PREFIX = "localmamba-"
RECIPE_POLICY = "localmamba-rand-m9-mstd0.5"
# the toolbox fills with the ImageNet mean (in 0..255) even when other normalisation stats are given
TOOLBOX_FILL = tuple(round(x * 255) for x in IMAGENET_DEFAULT_MEAN)
_MAX_LEVEL = 10.0
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}

# the toolbox's op list, in its order (the order matters: ops are drawn by index)
OP_NAMES = (
    "Distort", "Zoom", "Blur", "Skew", "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeTpu", "Solarize",
    "SolarizeAdd", "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
    "TranslateYRel",
)
# `w0`: the toolbox's only weight table (unnormalised)
CHOICE_WEIGHTS_0 = {
    "Rotate": 0.3, "ShearX": 0.2, "ShearY": 0.2, "TranslateXRel": 0.1, "TranslateYRel": 0.1, "Color": 0.025,
    "Sharpness": 0.025, "AutoContrast": 0.025, "Solarize": 0.005, "SolarizeAdd": 0.005, "Contrast": 0.005,
    "Brightness": 0.005, "Equalize": 0.005, "PosterizeTpu": 0, "Invert": 0, "Distort": 0, "Zoom": 0, "Blur": 0,
    "Skew": 0,
}


# --- magnitude -> op arguments (the magnitude is not clipped, as in the toolbox) -----------------------------------


def _randomly_negate(value: float) -> float:
    """The value or its negative, one `random.random()` draw (the toolbox's order of draws)."""
    return -value if random.random() > 0.5 else value


def _scaled(scale: float, offset: float = 0.0) -> Callable[[float], tuple]:
    return lambda level: ((level / _MAX_LEVEL) * scale + offset,)


def _signed(scale: float) -> Callable[[float], tuple]:
    return lambda level: (_randomly_negate((level / _MAX_LEVEL) * scale),)


def _truncated(scale: float, offset: float = 0.0) -> Callable[[float], tuple]:
    return lambda level: (int((level / _MAX_LEVEL) * scale + offset),)


def _no_args(_level: float) -> tuple:
    return ()


LEVEL_TO_ARGS: dict[str, Callable[[float], tuple]] = {
    "Distort": _truncated(10.0, 10.0),  # mesh step in pixels; tiles per side = int(0.1 * step)
    "Zoom": _scaled(0.4),  # resize factor; the image shrinks onto a black canvas
    "Blur": _signed(0.5),  # gaussian radius (the sign does not matter)
    "Skew": _signed(0.3),  # corner shift as a fraction of the longer side
    "AutoContrast": _no_args,
    "Equalize": _no_args,
    "Invert": _no_args,
    "Rotate": _signed(30.0),
    "PosterizeTpu": _truncated(4.0),  # bits kept
    "Solarize": _truncated(256.0),  # threshold
    "SolarizeAdd": _truncated(110.0),  # added below 128
    "Color": _scaled(1.8, 0.1),
    "Contrast": _scaled(1.8, 0.1),
    "Brightness": _scaled(1.8, 0.1),
    "Sharpness": _scaled(1.8, 0.1),
    "ShearX": _signed(0.3),
    "ShearY": _signed(0.3),
    "TranslateXRel": _signed(0.45),
    "TranslateYRel": _signed(0.45),
}


# --- the four ops timm does not have ----------------------------------------------------------------------------


def _tile_edges(length: int, tiles: int) -> list[int]:
    """Tile boundaries along one side: equal tiles of floor(length / tiles), the last one takes the rest."""
    step = length // tiles
    return [i * step for i in range(tiles)] + [length]


def distort(img: Image.Image, step: int, **_: Any) -> Image.Image:
    """The toolbox's Distort: a tiles x tiles mesh whose inner grid points move by (+step, +step)."""
    tiles = int(0.1 * step)
    if tiles < 1:  # only a negative magnitude gets here; the toolbox divides by zero
        return img
    xs, ys = _tile_edges(img.size[0], tiles), _tile_edges(img.size[1], tiles)
    mesh = []
    for row in range(tiles):
        for col in range(tiles):
            x0, y0, x1, y1 = xs[col], ys[row], xs[col + 1], ys[row + 1]
            # source quad corners NW, SW, SE, NE; a corner moves when it is an inner grid point
            corners = [(x0, y0, col, row), (x0, y1, col, row + 1), (x1, y1, col + 1, row + 1), (x1, y0, col + 1, row)]
            quad = []
            for x, y, grid_x, grid_y in corners:
                inner = 0 < grid_x < tiles and 0 < grid_y < tiles
                quad += [x + step, y + step] if inner else [x, y]
            mesh.append(((x0, y0, x1, y1), tuple(quad)))
    return img.transform(img.size, Image.Transform.MESH, mesh, resample=Image.Resampling.BICUBIC)


def zoom(img: Image.Image, factor: float, **_: Any) -> Image.Image:
    """The toolbox's Zoom: resize by `factor` (bicubic) and cut the centre `img.size` box (black outside)."""
    w, h = img.size
    # at least one pixel: only factors below 0.5 / side get here, where the toolbox's resize raises
    small = img.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BICUBIC)
    zw, zh = small.size
    box = (zw / 2 - w / 2, zh / 2 - h / 2, zw / 2 + w / 2, zh / 2 + h / 2)
    return small.crop(tuple(math.floor(v) for v in box))


def blur(img: Image.Image, radius: float, **_: Any) -> Image.Image:
    """The toolbox's Blur: a gaussian blur; Pillow squares the radius, so |radius| is the same blur."""
    return img.filter(ImageFilter.GaussianBlur(abs(radius)))  # newer Pillow may refuse a negative radius


def _perspective_coefficients(src: Sequence[tuple[int, int]], dst: Sequence[tuple[int, int]]) -> tuple:
    """PIL PERSPECTIVE data mapping output points `dst` to input points `src`, solved as the toolbox does:
    the pseudo-inverse of the float32 8x8 system (bit-identical coefficients, so bit-identical pixels)."""
    rows = []
    for (x, y), (sx, sy) in zip(dst, src):
        rows.append([x, y, 1, 0, 0, 0, -sx * x, -sx * y])
        rows.append([0, 0, 0, x, y, 1, -sy * x, -sy * y])
    solution = np.dot(np.linalg.pinv(np.asarray(rows, dtype=np.float32)), np.asarray(src).reshape(8))
    return tuple(float(v) for v in solution)


def skew(img: Image.Image, amount: float, **_: Any) -> Image.Image:
    """The toolbox's Skew: each corner moves ceil(max(w, h) * amount) pixels along a side, clockwise."""
    w, h = img.size
    shift = math.ceil(max(w, h) * amount)
    corners = [(0, 0), (w, 0), (w, h), (0, h)]
    moved = [(-shift, 0), (w, -shift), (w + shift, h), (0, h + shift)]
    coefficients = _perspective_coefficients(corners, moved)
    return img.transform(img.size, Image.Transform.PERSPECTIVE, coefficients, resample=Image.Resampling.BICUBIC)


def posterize(img: Image.Image, bits: int, **_: Any) -> Image.Image:
    """timm's posterize; 0 (or fewer) bits is the black image older Pillow gave (Pillow 13 refuses 0 bits)."""
    if bits >= 8:
        return img
    if bits <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits)


def rotate(img: Image.Image, degrees: float, fillcolor: Any = None, **_: Any) -> Image.Image:
    """timm's rotate, always bicubic: the toolbox overrides the configured interpolation for Rotate."""
    return timm_aa.rotate(img, degrees, fillcolor=fillcolor, resample=Image.Resampling.BICUBIC)


# ops identical to timm's functions are timm's
OPS: dict[str, Callable[..., Image.Image]] = {
    "Distort": distort,
    "Zoom": zoom,
    "Blur": blur,
    "Skew": skew,
    "AutoContrast": timm_aa.auto_contrast,
    "Equalize": timm_aa.equalize,
    "Invert": timm_aa.invert,
    "Rotate": rotate,
    "PosterizeTpu": posterize,
    "Solarize": timm_aa.solarize,
    "SolarizeAdd": timm_aa.solarize_add,
    "Color": timm_aa.color,
    "Contrast": timm_aa.contrast,
    "Brightness": timm_aa.brightness,
    "Sharpness": timm_aa.sharpness,
    "ShearX": timm_aa.shear_x,
    "ShearY": timm_aa.shear_y,
    "TranslateXRel": timm_aa.translate_x_rel,
    "TranslateYRel": timm_aa.translate_y_rel,
}


def apply_op(name: str, img: Image.Image, magnitude: float, fill: tuple = TOOLBOX_FILL,
             interpolation: int = Image.Resampling.BICUBIC) -> Image.Image:
    """Op `name` at `magnitude` (draws its sign from `random` first, where it has one), as the toolbox applies it."""
    args = LEVEL_TO_ARGS[name](magnitude)
    try:
        return OPS[name](img, *args, fillcolor=fill, resample=interpolation)
    except Exception as e:  # name the op and its arguments: the dataset skips and lists the sample
        shown = ", ".join(f"{a:.3g}" if isinstance(a, float) else repr(a) for a in args)
        raise TransformError(f"op {name}({shown}) raised {type(e).__name__}: {e}") from e


class LocalMambaOp:
    """One toolbox RandAugment op: p `prob`, then a gaussian-noised (unclipped) magnitude, then the op."""

    def __init__(self, name: str, magnitude: float, magnitude_std: float = 0.0, prob: float = 0.5,
                 fill: tuple = TOOLBOX_FILL, interpolation: int = Image.Resampling.BICUBIC) -> None:
        if name not in OPS:
            raise ValueError(f"{name!r} is not a LocalMamba RandAugment op (one of {', '.join(OP_NAMES)})")
        self.name, self.magnitude, self.magnitude_std, self.prob = name, magnitude, magnitude_std, prob
        self.fill, self.interpolation = fill, interpolation

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() > self.prob:  # drawn even at prob 1, as in the toolbox
            return img
        magnitude = self.magnitude
        if self.magnitude_std > 0:
            magnitude = random.gauss(magnitude, self.magnitude_std)
        return apply_op(self.name, img, magnitude, self.fill, self.interpolation)

    def __repr__(self) -> str:
        return f"LocalMambaOp({self.name}, p={self.prob}, m={self.magnitude}, mstd={self.magnitude_std})"


class LocalMambaRandAugment:
    """`num_layers` ops drawn with numpy's global RNG (with replacement unless weighted), applied in order."""

    def __init__(self, ops: Sequence[LocalMambaOp], num_layers: int = 2, choice_weights: np.ndarray | None = None):
        self.ops, self.num_layers, self.choice_weights = list(ops), num_layers, choice_weights

    def __call__(self, img: Image.Image) -> Image.Image:
        # drawing indices consumes numpy's RNG exactly as np.random.choice(ops, ...) does in the toolbox
        picks = np.random.choice(len(self.ops), self.num_layers, replace=self.choice_weights is None,
                                 p=self.choice_weights)
        for index in picks:
            img = self.ops[index](img)
        return img

    def __repr__(self) -> str:
        return f"LocalMambaRandAugment(n={self.num_layers}, weighted={self.choice_weights is not None}, ops={self.ops})"


# --- the policy string ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalMambaPolicy:
    """A parsed `localmamba-rand-...` policy; the defaults are the toolbox's."""

    magnitude: int = 10
    num_layers: int = 2
    magnitude_std: float = 0.0
    weights: int | None = None


_SECTION = re.compile(r"(\D*)(\d.*)")  # the toolbox's split: key up to the first digit, value from it
_KEYS = {"m": "magnitude", "n": "num_layers", "mstd": "magnitude_std", "w": "weights"}


def is_local_mamba_policy(policy: str | None) -> bool:
    """Whether an --aa value names this module's RandAugment (rather than one of timm's policies)."""
    return bool(policy) and policy.startswith(PREFIX)


def parse_local_mamba_policy(policy: str) -> LocalMambaPolicy:
    """Parse `localmamba-rand[-m<int>][-n<int>][-mstd<float>][-w0]`; a ValueError names what is wrong."""
    if not is_local_mamba_policy(policy) or policy[len(PREFIX) :].split("-")[0] != "rand":
        raise ValueError(f"LocalMamba policy {policy!r} must start with '{PREFIX}rand' (e.g. {RECIPE_POLICY})")
    values: dict[str, Any] = {}
    for section in policy[len(PREFIX) :].split("-")[1:]:
        key, value = _parse_section(policy, section)
        if _KEYS[key] in values:
            raise ValueError(f"LocalMamba policy {policy!r} sets {key} twice")
        values[_KEYS[key]] = value
    parsed = LocalMambaPolicy(**values)
    _check_counts(policy, parsed)
    return parsed


def _parse_section(policy: str, section: str) -> tuple[str, int | float]:
    """(key, value) of one section such as `mstd0.5`."""
    match = _SECTION.fullmatch(section)
    key = match.group(1) if match else section
    if key not in _KEYS:
        raise ValueError(
            f"LocalMamba policy {policy!r}: unknown section {section!r}; the toolbox's RandAugment knows m<int>, "
            "n<int>, mstd<float> and w0 only (no inc/p/mmax/t: it has no increasing ops)"
        )
    if not match:
        raise ValueError(f"LocalMamba policy {policy!r}: section {section!r} has no value (e.g. {key}9)")
    try:
        value = float(match.group(2)) if key == "mstd" else int(match.group(2))
    except ValueError:
        kind = "a number" if key == "mstd" else "an integer"
        raise ValueError(f"LocalMamba policy {policy!r}: {key} needs {kind}, got {match.group(2)!r}") from None
    if key == "mstd" and not math.isfinite(value):
        raise ValueError(f"LocalMamba policy {policy!r}: mstd must be finite")
    return key, value


def _check_counts(policy: str, parsed: LocalMambaPolicy) -> None:
    if parsed.weights not in (None, 0):
        raise ValueError(f"LocalMamba policy {policy!r}: the toolbox has one weight table, w0")
    drawable = sum(1 for w in CHOICE_WEIGHTS_0.values() if w > 0) if parsed.weights == 0 else None
    if drawable is not None and parsed.num_layers > drawable:
        raise ValueError(f"LocalMamba policy {policy!r}: w0 draws without replacement from {drawable} ops, n is "
                         f"{parsed.num_layers}")


def check_local_mamba_policy(policy: str) -> None:
    """Raise ValueError when `policy` is not a valid `localmamba-rand-...` string (for config checks)."""
    parse_local_mamba_policy(policy)


def choice_weights(weights: int | None) -> np.ndarray | None:
    """The op-draw probabilities for `w<weights>` in OP_NAMES order, normalised as the toolbox does."""
    if weights is None:
        return None
    probs = np.asarray([CHOICE_WEIGHTS_0[name] for name in OP_NAMES], dtype=np.float64)
    return probs / np.sum(probs)


def local_mamba_rand_augment(policy: str = RECIPE_POLICY, fill: tuple = TOOLBOX_FILL,
                             interpolation: str = "bicubic") -> LocalMambaRandAugment:
    """The toolbox's RandAugment for a `localmamba-rand-...` policy."""
    parsed = parse_local_mamba_policy(policy)
    resample = _resample(interpolation)
    ops = [LocalMambaOp(name, parsed.magnitude, parsed.magnitude_std, 0.5, tuple(fill), resample) for name in OP_NAMES]
    return LocalMambaRandAugment(ops, parsed.num_layers, choice_weights(parsed.weights))


# --- the whole training transform -----------------------------------------------------------------------------------


class ToRGB:
    """`img.convert("RGB")` unless already RGB, as the toolbox's dataset opens images."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == "RGB" else img.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


class ScaledNormalize:
    """PIL RGB -> float32 CHW, (x - 255 mean) / (255 std) on 0..255 values: the toolbox's arithmetic, to the bit."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor([x * 255 for x in mean]).view(-1, 1, 1)
        self.std = torch.tensor([x * 255 for x in std]).view(-1, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        array = np.asarray(img, dtype=np.uint8)
        if array.ndim < 3:
            array = array[:, :, None]
        chw = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float()
        return chw.sub_(self.mean).div_(self.std)

    def __repr__(self) -> str:
        mean, std = (self.mean.flatten() / 255).tolist(), (self.std.flatten() / 255).tolist()
        return f"ScaledNormalize(mean={mean}, std={std})"


def _resample(interpolation: str) -> int:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"the LocalMamba toolbox resizes bilinear or bicubic only, not {interpolation!r}")
    return INTERPOLATIONS[interpolation]


def _crop_size(input_size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from an int, (h, w) or timm's (channels, h, w)."""
    if isinstance(input_size, int):
        return input_size, input_size
    size = tuple(int(v) for v in input_size)
    if len(size) not in (2, 3) or min(size) < 1:
        raise ValueError(f"input_size must be an int, (h, w) or (c, h, w) of positive sizes, not {input_size!r}")
    return size[-2:]


def local_mamba_train_transform(
    input_size: int | Sequence[int],
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    interpolation: str = "bicubic",
    auto_augment: str | None = RECIPE_POLICY,
    color_jitter: float | None = 0.3,
    re_prob: float = 0.25,
    re_mode: str = "pixel",
    fill: tuple = TOOLBOX_FILL,
) -> transforms.Compose:
    """The toolbox's training transform (PIL -> normalised float32 CHW tensor); defaults are LocalMamba's config."""
    if len(mean) != 3 or len(std) != 3:
        raise ValueError("the LocalMamba toolbox normalises RGB: mean and std need 3 values")
    _resample(interpolation)  # the crop and the ops accept the same two
    steps: list[Callable] = [
        ToRGB(),
        RandomResizedCropAndInterpolation(_crop_size(input_size), interpolation=interpolation),
        transforms.RandomHorizontalFlip(),
    ]
    if auto_augment:
        steps.append(local_mamba_rand_augment(auto_augment, fill, interpolation))
    elif color_jitter:  # the toolbox jitters only without auto-augment
        steps.append(transforms.ColorJitter(color_jitter, color_jitter, color_jitter))
    steps.append(ScaledNormalize(mean, std))
    if re_prob > 0:
        steps.append(RandomErasing(re_prob, mode=re_mode, max_count=1, num_splits=0, device="cpu"))
    return transforms.Compose(steps)

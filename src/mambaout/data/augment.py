"""timm's training augmentation made safe to run for days: ops that newer Pillow refuses, and failures that name
their step.

Pillow 13 refuses `ImageOps.posterize(img, 0)`, which older Pillow answered with a black image. timm's
`PosterizeIncreasing` asks for 0 bits at the clipped top level, which `rand-m9-mstd0.5-inc1` (the official recipe's
RandAugment) draws for about 0.17% of images. `harden` rebinds the posterize op of the transform's own op objects
to one that keeps the old meaning, so timm itself is left unchanged for any other code in the process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from PIL import Image, ImageOps
from timm.data import auto_augment

from ..errors import MambaoutError


class TransformError(MambaoutError, RuntimeError):
    """A training transform raised on one sample; the message names the step and, inside auto-augment, the op."""

    exit_code = 5


def posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize with 0 (or fewer) bits kept giving a black image on every Pillow version."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)  # every bit cleared
    return ImageOps.posterize(img, bits_to_keep)


_REPLACEMENTS: dict[Callable, Callable] = {auto_augment.posterize: posterize}


def harden(transform: Callable) -> Callable:
    """Make the auto-augment ops inside `transform` (RandAugment, AutoAugment, AugMix) safe and self-naming.

    Works on the transform's own op objects (timm's module functions are untouched) and returns `transform`.
    """
    for op in _augment_ops(transform):
        if not hasattr(op.aug_fn, "wrapped"):  # hardened once already
            op.aug_fn = _naming_failures(op.name, _REPLACEMENTS.get(op.aug_fn, op.aug_fn))
    return transform


def policy_transform(policy: str, hparams: dict[str, Any] | None = None) -> Callable:
    """timm's auto-augment transform for a policy string, chosen by prefix as `timm.data.create_transform` does
    (`rand-...`, `augmix-...`, or an AutoAugment policy: original, originalr, v0, v0r, 3a), hardened."""
    hparams = dict(hparams or {})
    if policy.startswith("rand"):
        transform = auto_augment.rand_augment_transform(policy, hparams)
    elif policy.startswith("augmix"):
        transform = auto_augment.augment_and_mix_transform(policy, hparams)
    else:
        transform = auto_augment.auto_augment_transform(policy, hparams)
    return harden(transform)


def check_policy(policy: str) -> None:
    """Raise ValueError with the policy's name when timm cannot build it (a typo in --aa fails before training)."""
    try:
        policy_transform(policy, {"translate_const": 100, "img_mean": (124, 116, 104)})
    except Exception as e:
        raise ValueError(
            f"--aa {policy!r} is not an auto-augment policy timm knows ({type(e).__name__}: {e}); use rand-m9-mstd0.5-"
            "inc1 (the recipe's), another rand-*, augmix-*, original, originalr, v0, v0r or 3a"
        ) from e


def apply_transform(transform: Callable, image: Any) -> Any:
    """`transform(image)`, step by step for a Compose, so that a failure names the step (and op) that raised."""
    for step in getattr(transform, "transforms", [transform]):
        try:
            image = step(image)
        except TransformError as e:  # an auto-augment op, already named
            raise TransformError(f"{type(step).__name__}: {e}") from e
        except Exception as e:  # any error of any step: the caller skips and lists the sample
            raise TransformError(f"{type(step).__name__} raised {type(e).__name__}: {e}") from e
    return image


def _naming_failures(name: str, function: Callable) -> Callable:
    def op(img, *args, **kwargs):
        try:
            return function(img, *args, **kwargs)
        except Exception as e:
            shown = ", ".join(f"{a:.3g}" if isinstance(a, float) else repr(a) for a in args)
            raise TransformError(f"op {name}({shown}) raised {type(e).__name__}: {e}") from e

    op.wrapped = function
    return op


def _augment_ops(transform: Any) -> Iterator[auto_augment.AugmentOp]:
    """Every timm AugmentOp in a transform: Compose steps, RandAugment/AugMix `ops`, AutoAugment `policy` lists."""
    if isinstance(transform, auto_augment.AugmentOp):
        yield transform
        return
    for attribute in ("transforms", "ops", "policy"):
        for item in getattr(transform, attribute, None) or []:
            yield from _augment_ops(item)
    if isinstance(transform, list | tuple):
        for item in transform:
            yield from _augment_ops(item)

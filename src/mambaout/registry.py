"""Model registry: name -> everything known about a model, declared by its family in one place.

A model's builder, pretrained config, published numbers, checkpoint converter, training recipe and dense
fine-tuning settings live in its `ModelSpec`. Model files register their variant tables here at import; the engine,
the dense tasks and the checkpoint loader read a model's facts from here and never name a family. Nothing here
imports a model.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ._lookup import lookup
from .errors import MambaoutError
from .recipes import DenseSettings, Fallback, Recipe, get_recipe, register_recipe

StateDict = dict[str, Any]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Published:
    """Numbers a paper or model card states for a model (None where nobody published one)."""

    params_m: float | None = None
    gmacs: float | None = None
    top1: float | None = None
    source: str = ""


def keep_layout(state_dict: StateDict) -> StateDict:
    """The converter of families whose official files already have our layout (inside wrappers `unwrap` opens)."""
    return state_dict


@dataclass(frozen=True)
class ModelSpec:
    """A registered model. `recipe` is its official training recipe, or the `Fallback` it trains with instead;
    `converter` maps the official checkpoint layout to ours (and leaves ours as it is)."""

    name: str
    family: str
    builder: Callable[..., nn.Module]
    pretrained_cfg: dict[str, Any]
    recipe: Recipe | Fallback
    published: Published = field(default_factory=Published)
    converter: Callable[[StateDict], StateDict] = keep_layout
    dense: DenseSettings = field(default_factory=DenseSettings)


class UnknownModelError(MambaoutError, KeyError):
    exit_code = 3

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0])


_REGISTRY: dict[str, ModelSpec] = {}


def pretrained_cfg(
    *,
    url: str = "",
    file_name: str | None = None,
    sha256: str | None = None,
    num_classes: int = 1000,
    input_size: tuple[int, int, int] = (3, 224, 224),
    crop_pct: float = 0.875,
    interpolation: str = "bicubic",
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    first_conv: str = "stem.conv1",
    classifier: str = "head.fc",
    feature_stride: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A pretrained_cfg dict with timm's keys (plus `file_name`/`sha256` for the download cache).

    `feature_stride`: the reduction of a model's final feature map, which gives timm's `pool_size` (that map's
    size at `input_size`); None for models whose features are token sequences (timm's ViTs have no pool_size).
    """
    pool_size = None
    if feature_stride is not None:
        pool_size = tuple(-(-side // feature_stride) for side in input_size[1:])
    return dict(
        url=url,
        file_name=file_name,
        sha256=sha256,
        num_classes=num_classes,
        input_size=input_size,
        crop_pct=crop_pct,
        interpolation=interpolation,
        mean=mean,
        std=std,
        first_conv=first_conv,
        classifier=classifier,
        pool_size=pool_size,
        **extra,
    )


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    if isinstance(spec.recipe, Recipe):
        register_recipe(spec.recipe)
    _REGISTRY[spec.name] = spec
    return spec


def recipe_for(name: str) -> tuple[Recipe, Fallback | None]:
    """The recipe `name` trains with by default, and the Fallback that explains it when it is not its own."""
    spec = get_model_spec(name)
    if isinstance(spec.recipe, Recipe):
        return spec.recipe, None
    return get_recipe(spec.recipe.recipe), spec.recipe


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    return sorted(name for name in _REGISTRY if fnmatch.fnmatchcase(name, pattern))


def get_model_spec(name: str) -> ModelSpec:
    return lookup(_REGISTRY, name, "model", "mambaout models", UnknownModelError)

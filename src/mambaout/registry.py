"""Model registry: name -> everything known about a model, declared by its family in one place.

A model's builder, pretrained config, published numbers, checkpoint converter, training recipe and dense
fine-tuning settings live in its `ModelSpec`. Model files register their variant tables here at import; the engine,
the dense tasks and the checkpoint loader read a model's facts from here and never name a family. Nothing here
imports a model.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from timm.models import PretrainedCfg
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
    hf_hub_id: str | None = None,
    hf_hub_filename: str | None = None,
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

    Weights on the Hugging Face Hub are named by `hf_hub_id` (ORG/NAME[@REVISION]) and `hf_hub_filename`, and come
    through the Hub's cache; elsewhere by `url`, cached in torch hub's folder under `file_name`.

    `feature_stride`: the reduction of a model's final feature map, which gives timm's `pool_size` (that map's
    size at `input_size`); None for models whose features are token sequences (timm's ViTs have no pool_size).
    """
    pool_size = None
    if feature_stride is not None:
        pool_size = tuple(-(-side // feature_stride) for side in input_size[1:])
    return dict(
        url=url,
        hf_hub_id=hf_hub_id,
        hf_hub_filename=hf_hub_filename,
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


TIMM_CFG_FIELDS = frozenset(f.name for f in dataclasses.fields(PretrainedCfg))


def timm_pretrained_cfg(name: str) -> PretrainedCfg:
    """A model's pretrained config as timm's `PretrainedCfg` (our download-cache keys left out)."""
    cfg = get_model_spec(name).pretrained_cfg
    return PretrainedCfg(**{k: v for k, v in cfg.items() if k in TIMM_CFG_FIELDS and k != "architecture"},
                         architecture=name)


def hub_weights(repo_id: str, filename: str = "model.safetensors") -> dict[str, str]:
    """The pretrained_cfg entries of release weights on the Hugging Face Hub."""
    return dict(hf_hub_id=repo_id, hf_hub_filename=filename)


def weights_location(cfg: dict[str, Any]) -> str:
    """Where a pretrained config's weights come from, as a user would write it ('' for none)."""
    if cfg.get("hf_hub_id"):
        return f"hf-hub:{cfg['hf_hub_id']}/{cfg.get('hf_hub_filename') or 'model.safetensors'}"
    return cfg.get("url") or ""


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    if isinstance(spec.recipe, Recipe):
        register_recipe(spec.recipe)
    _REGISTRY[spec.name] = spec
    return spec


#: one row of a family's variant table: constructor arguments, published numbers, weights entries of pretrained_cfg
Variant = tuple[dict[str, Any], Published, dict[str, Any]]


def register_variants(
    variants: Mapping[str, Variant],
    *,
    family: str,
    model: Callable[..., nn.Module],
    cfg: Mapping[str, Any] | Callable[[dict[str, Any]], Mapping[str, Any]],
    recipes: Mapping[str, Recipe],
    fallback: Fallback | Mapping[str, Fallback],
    converter: Callable[[StateDict], StateDict] = keep_layout,
    dense: Mapping[str, DenseSettings] | None = None,
) -> None:
    """Register every row of a family's variant table.

    `cfg`: the pretrained_cfg keys of every variant (or a function of a variant's arguments giving them), which the
    variant's weights entries complete or override. A variant without an official recipe in `recipes` trains with
    `fallback` (one for all, or one per name); `dense`: the official dense fine-tuning settings by name."""
    for name, (arch, published, weights) in variants.items():
        register_model(ModelSpec(
            name=name,
            family=family,
            builder=partial(model, **arch),
            pretrained_cfg=pretrained_cfg(**{**(cfg(arch) if callable(cfg) else cfg), **weights}),
            recipe=recipes.get(name) or (fallback if isinstance(fallback, Fallback) else fallback[name]),
            published=published,
            converter=converter,
            dense=(dense or {}).get(name, DenseSettings()),
        ))


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

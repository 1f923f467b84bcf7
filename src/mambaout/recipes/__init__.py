"""Training recipes as data: every value of an official ImageNet recipe, with the file and line it comes from.

A recipe is a mapping from `mambaout train` option names (underscored) to values, and a source per value. The
model families declare theirs beside their variants (the family's registration); `mambaout recipes` shows them and
writes them as YAML that `train --config` reads back. Where our engine cannot do what the official code does, the
recipe says how it differs (`differences`), so that `mambaout recipes` and the README can tell the user.

Values are given at the official global batch (`global_batch_size`); `lr`, and with `scale_warmup_and_min_lr` also
`warmup_lr` and `min_lr`, are scaled to the actual global batch by `lr_scale` when training.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._lookup import lookup
from ..errors import MambaoutError

# A layer of recipe values: option name -> (value, source). Layers are applied in order, later ones win.
Layer = Mapping[str, tuple[Any, str]]

#: every option a recipe gives a value for (the `train` options marked from_recipe), in the order recipes show them
VOCABULARY = (
    "epochs", "cooldown_epochs", "global_batch_size", "lr", "lr_scale", "scale_warmup_and_min_lr", "warmup_epochs",
    "warmup_lr", "warmup_prefix", "warmup_staircase", "min_lr", "sched", "sched_on_updates", "opt", "opt_eps",
    "opt_betas", "momentum", "weight_decay", "no_weight_decay", "clip_grad", "clip_mode", "drop_path", "drop",
    "model_ema_decay", "model_ema_eval", "best_by", "release_weights", "amp", "smoothing", "aug_repeats", "aa",
    "color_jitter", "scale", "ratio", "hflip", "train_interpolation", "reprob", "remode", "recount", "mixup", "cutmix",
    "mixup_prob", "mixup_switch_prob", "mixup_mode",
)

#: what `mambaout recipes` shows in its one-line-per-model table, in this order
TABLE_COLUMNS = ("epochs", "global_batch_size", "lr", "weight_decay", "drop_path", "model_ema_decay", "clip_grad",
                 "aug_repeats", "amp")


@dataclass(frozen=True)
class Recipe:
    """One official training configuration: option values, the source of each, and our differences from it."""

    name: str
    values: Mapping[str, Any]
    sources: Mapping[str, str]
    differences: tuple[str, ...] = ()
    title: str = ""  # what the official code calls this configuration

    def to_options(self) -> dict[str, Any]:
        """The values with the recipe's name: what `train --config` reads and `recipes --json` prints (+ sources)."""
        return {"recipe": self.name, **{k: plain(v) for k, v in self.values.items()}}

    def source_of(self, key: str) -> str:
        return self.sources.get(key, "")


def recipe(name: str, *layers: Layer, differences: Iterable[str] = (), title: str = "") -> Recipe:
    """A Recipe from layers of (value, source) pairs: a family's shared values first, then the variant's. It must
    give every option of the VOCABULARY, and nothing else."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for layer in layers:
        for key, (value, source) in layer.items():
            values[key], sources[key] = value, source
    missing, unknown = set(VOCABULARY) - set(values), set(values) - set(VOCABULARY)
    if missing or unknown:
        raise ValueError(f"recipe {name!r}: missing {sorted(missing)}, unknown {sorted(unknown)}")
    ordered = {key: values[key] for key in VOCABULARY}
    return Recipe(name, ordered, {key: sources[key] for key in VOCABULARY}, tuple(differences), title)


@dataclass(frozen=True)
class Fallback:
    """A model without an official recipe trains with another model's; `why` says which and why that one."""

    recipe: str
    why: str


@dataclass(frozen=True)
class DenseSettings:
    """What dense fine-tuning (Mask R-CNN, UperNet) takes from a backbone: its stochastic depth, with the source."""

    drop_path: float = 0.1
    source: str = "default for backbones without an official dense configuration"


class UnknownRecipeError(MambaoutError, KeyError):

    exit_code = 3
    def __str__(self) -> str:
        return str(self.args[0])


_RECIPES: dict[str, Recipe] = {}


def register_recipe(item: Recipe) -> Recipe:
    """Register a recipe under its name; the same object may be registered again (variants that share one)."""
    known = _RECIPES.get(item.name)
    if known is not None and known is not item:
        raise ValueError(f"recipe {item.name!r} is registered twice with different values")
    _RECIPES[item.name] = item
    return item


def get_recipe(name: str) -> Recipe:
    return lookup(_RECIPES, name, "recipe", "mambaout recipes", UnknownRecipeError)


def list_recipes(pattern: str = "*") -> list[str]:
    return sorted(name for name in _RECIPES if fnmatch.fnmatchcase(name, pattern))


def plain(value: Any) -> Any:
    """Tuples as lists, so that YAML and JSON write them plainly."""
    return list(value) if isinstance(value, tuple) else value


@dataclass
class RecipeReport:
    """Which recipe a run trains with, whether it is the model's own, and what the user changed in it."""

    recipe: str
    own: bool
    fallback_reason: str = ""
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # option -> {"recipe": v, "used": v}

    def lines(self) -> list[str]:
        """What the first log lines of a run say."""
        if self.own:
            head = f"recipe {self.recipe} (the model's own official recipe)"
        elif self.fallback_reason:
            head = f"recipe {self.recipe}: {self.fallback_reason}"
        else:
            head = f"recipe {self.recipe} (chosen with --recipe: not the model's own)"
        if not self.overrides:
            return [head + "; no value overridden"]
        changed = ", ".join(f"{k} {v['recipe']!r} -> {v['used']!r}" for k, v in self.overrides.items())
        return [head, f"overridden: {changed}"]

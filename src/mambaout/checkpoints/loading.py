"""Checkpoint -> weights in our layout -> strictly loaded into a model."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .files import CheckpointError, read_checkpoint, write_safetensors
from .layouts import StateDict, unwrap

log = logging.getLogger("mambaout")

FORMAT_TAG = "mambaout"


@dataclass
class Weights:
    """A state_dict in our layout and what the file says about it."""

    state_dict: StateDict
    source: str
    model_name: str | None = None
    class_names: list[str] | None = None

    def num_classes(self, classifier: str) -> int | None:
        weight = self.state_dict.get(f"{classifier}.weight")
        return None if weight is None else int(weight.shape[0])


class CheckpointMismatchError(CheckpointError):
    pass


def read_weights(
    path: str | os.PathLike, converter: Callable[[StateDict], StateDict], use_ema: bool | None = False
) -> Weights:
    """The weights of a file in our layout (`converter`: the model's, from its ModelSpec). `use_ema=None` takes what
    a training checkpoint names as its release weights (`release_weights`: 'model_ema' for recipes whose reported
    model is the EMA), else the plain weights."""
    obj, metadata = read_checkpoint(path)
    if use_ema is None:
        use_ema = obj.get("release_weights") == "model_ema"
    state_dict = converter(unwrap(obj, use_ema=use_ema))
    class_names = json.loads(metadata["class_names"]) if "class_names" in metadata else None
    if class_names is None and isinstance(obj.get("class_names"), list):
        class_names = obj["class_names"]
    model_name = metadata.get("model_name")
    if model_name is None and isinstance(obj.get("model_name"), str):  # our training checkpoints (.pth)
        model_name = obj["model_name"]
    return Weights(state_dict, str(path), model_name, class_names)


def load_weights(model: nn.Module, weights: Weights, classifier: str) -> None:
    """Load strictly; a classifier of another size is left freshly initialised (and said so).

    A model with a `resample_checkpoint(state_dict) -> (state_dict, {key: (old grid, new grid)})` method (the token
    models: position tables on a patch grid) first resamples the checkpoint's tables to its own grid (and says so).
    """
    theirs, ours = weights.num_classes(classifier), getattr(model, "num_classes", None)
    replace_head = theirs is not None and theirs != ours
    state_dict, expected = dict(weights.state_dict), model.state_dict()
    resample = getattr(model, "resample_checkpoint", None)
    if callable(resample):
        state_dict, resampled = resample(state_dict)
        if resampled:
            log.info(
                "%s: resampled to the model's grid: %s",
                weights.source,
                ", ".join(f"{key} {old[0]}x{old[1]} -> {new[0]}x{new[1]}" for key, (old, new) in resampled.items()),
            )
    if replace_head:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(classifier + ".")}
        expected = {k: v for k, v in expected.items() if not k.startswith(classifier + ".")}
        log.warning(
            "%s: the checkpoint's classifier has %s classes, the model %s: backbone loaded, "
            "new classifier %r initialised",
            weights.source,
            theirs,
            ours,
            classifier,
        )
    check_fits(expected, state_dict, weights.source)
    model.load_state_dict(state_dict, strict=not replace_head)


def check_fits(expected: dict[str, torch.Tensor], given: StateDict, source: str) -> None:
    """Raise one error naming every missing key, unexpected key and shape mismatch."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and given[k].shape != v.shape
    ]
    if not (missing or unexpected or shapes):
        return
    parts = [f"checkpoint {source!r} does not fit the model:"]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            shown = ", ".join(items[:12]) + (f", ... ({len(items) - 12} more)" if len(items) > 12 else "")
            parts.append(f"  {len(items)} {title}: {shown}")
    raise CheckpointMismatchError("\n".join(parts))


def save_weights(
    model: nn.Module, path: str | os.PathLike, model_name: str, class_names: list[str] | None = None
) -> None:
    """Safetensors with the model name and class names, so `load_checkpoint(path)` rebuilds the model."""
    if Path(path).suffix != ".safetensors":  # files are read by suffix: a .pth name would never load again
        raise ValueError(f"save checkpoints as .safetensors, not {os.fspath(path)!r}")
    metadata = {"format": FORMAT_TAG, "model_name": model_name, "num_classes": getattr(model, "num_classes", None)}
    if class_names is not None:
        metadata["class_names"] = list(class_names)
    write_safetensors(model.state_dict(), path, metadata)

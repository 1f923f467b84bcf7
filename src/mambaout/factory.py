"""Creating models by name, with or without weights."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from timm.models._features import FeatureGetterNet
from torch import nn

from .checkpoints import (
    CheckpointError,
    CheckpointMismatchError,
    Weights,
    fetch_pretrained,
    is_hub_name,
    load_weights,
    read_checkpoint,
    read_hub_model,
    read_metadata,
    read_weights,
    save_weights,
)
from .registry import TIMM_CFG_FIELDS, get_model_spec, timm_pretrained_cfg

PathLike = str | os.PathLike


def create_model(
    name: str,
    pretrained: bool | None = None,
    checkpoint: PathLike | None = None,
    num_classes: int | None = None,
    drop_path_rate: float | None = None,
    use_ema: bool | None = None,
    features_only: bool = False,
    out_indices: int | Sequence[int] | None = None,
    feature_cls: str = "getter",
    cache_dir: PathLike | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model; load release weights (`pretrained`) or a file of any known layout (`checkpoint`).

    `name` may also be `hf-hub:ORG/NAME[@REVISION]` or `local-dir:FOLDER`, a folder in timm's layout (what
    `push_to_hub` writes): the model its config.json names, built with its arguments and preprocessing, with that
    folder's weights unless `pretrained=False`. Hub files come through the Hugging Face cache (`cache_dir`, else
    HF_HUB_CACHE / HF_HOME; HF_HUB_OFFLINE=1 reads the cache only).

    With weights and no `num_classes`, the classifier takes the checkpoint's size; with a different
    `num_classes`, the backbone is loaded and a new classifier initialised. `use_ema=None` takes the EMA weights
    of release files whose published accuracy is the EMA model's (cfg `use_ema`) and of training checkpoints whose
    recipe releases the EMA (`release_weights: ema`); else the plain weights.

    `features_only=True` returns timm's feature extractor (`FeatureGetterNet` over `forward_intermediates`): its
    forward gives a list of NCHW maps, one per `out_indices` entry (indices into `feature_info`: stages of the
    hierarchical models, blocks of the plain ones; None = every stage, or four evenly spaced blocks), and it
    carries timm's `feature_info` (`channels()`, `reduction()`, `module_name()`). `feature_cls` is timm's option;
    "getter" is the one extractor every family here supports.
    """
    options = dict(num_classes=num_classes, drop_path_rate=drop_path_rate, use_ema=use_ema,
                   features_only=features_only, out_indices=out_indices, feature_cls=feature_cls)
    if not is_hub_name(name):
        return build_model(name, bool(pretrained), checkpoint, cache_dir=cache_dir, **options, **overrides)
    hub = read_hub_model(name, cache_dir)
    if checkpoint is None and pretrained is not False:
        checkpoint = hub.weights_file(cache_dir)
    if num_classes is None:
        options["num_classes"] = hub.pretrained_cfg.get("num_classes")
    model_args = {k: v for k, v in hub.model_args.items() if k not in options}
    return build_model(hub.architecture, False, checkpoint, cfg_overlay=hub.pretrained_cfg, **options,
                       **{**model_args, **overrides})


def build_model(
    name: str,
    pretrained: bool = False,
    checkpoint: PathLike | None = None,
    num_classes: int | None = None,
    drop_path_rate: float | None = None,
    use_ema: bool | None = None,
    features_only: bool = False,
    out_indices: int | Sequence[int] | None = None,
    feature_cls: str = "getter",
    cfg_overlay: dict[str, Any] | None = None,
    cache_dir: PathLike | None = None,
    **overrides: Any,
) -> nn.Module:
    """`create_model` for a registered name; `cfg_overlay` replaces entries of its timm pretrained config (the
    preprocessing and labels of weights trained elsewhere)."""
    if feature_cls != "getter":
        raise ValueError(f"feature_cls {feature_cls!r} is not supported: 'getter' (forward_intermediates) is")
    spec = get_model_spec(name)
    cfg = timm_pretrained_cfg(name).to_dict()
    overlay = {k: v for k, v in (cfg_overlay or {}).items() if k in TIMM_CFG_FIELDS and k != "architecture"}
    cfg.update(copy.deepcopy(overlay))
    weights = read_requested_weights(name, pretrained, checkpoint, use_ema, cache_dir)

    if num_classes is None:
        num_classes = (weights and weights.num_classes(cfg["classifier"])) or cfg["num_classes"]
    if drop_path_rate is not None:
        overrides["drop_path_rate"] = drop_path_rate
    try:
        model = spec.builder(num_classes=num_classes, **overrides)
    except TypeError as e:  # a misspelled option: say which model refused it
        raise TypeError(f"{name}: {e}") from e

    if weights is not None:
        try:
            load_weights(model, weights, cfg["classifier"])
        except CheckpointMismatchError as e:  # a file of another model of the family: say whose it is
            if weights.model_name in (None, name):
                raise
            raise CheckpointMismatchError(f"saved from {weights.model_name}, not {name}: {e}") from e
    cfg["num_classes"] = num_classes
    if weights is not None and weights.class_names and len(weights.class_names) == num_classes:
        cfg["label_names"] = list(weights.class_names)
    elif cfg.get("label_names") is not None and len(cfg["label_names"]) != num_classes:  # labels of another head
        cfg["label_names"] = None
    if features_only:
        if out_indices is None:
            out_indices = default_out_indices(model)
        model = FeatureGetterNet(model, out_indices=_as_indices(out_indices), output_fmt="NCHW")
        # timm's pretrained_cfg_for_features: the classifier's entries mean nothing to a feature extractor
        for key in ("num_classes", "classifier", "global_pool", "label_names"):
            cfg.pop(key, None)
    elif out_indices is not None:
        raise ValueError("out_indices needs features_only=True")
    model.pretrained_cfg = cfg
    model.default_cfg = cfg  # timm's older name, still read by timm.data.resolve_data_config
    model.model_name = name
    return model


def read_requested_weights(
    name: str,
    pretrained: bool = False,
    checkpoint: PathLike | None = None,
    use_ema: bool | None = None,
    cache_dir: PathLike | None = None,
) -> Weights | None:
    """The weights `create_model` would load for `name` (release file or `checkpoint`), in our layout; or None."""
    spec = get_model_spec(name)
    cfg = spec.pretrained_cfg
    weights: Weights | None = None
    if checkpoint is not None:  # use_ema None: the weights a training checkpoint names as its release weights
        weights = read_weights(checkpoint, spec.converter, use_ema=use_ema)
    elif pretrained:  # release files: the EMA copy where that is what the published accuracy measured
        use_ema = bool(cfg.get("use_ema")) if use_ema is None else use_ema
        weights = read_weights(fetch_pretrained(name, cfg, cache_dir=cache_dir), spec.converter, use_ema=use_ema)
    # another model of the same family may be a fine-tuning start (vim_tiny -> vim_tiny_plus): the strict load
    # decides (and names both models if it does not fit); a file of another family is refused here, by name
    if weights is not None and weights.model_name not in (None, name) and not _same_family(weights.model_name, name):
        raise CheckpointError(f"checkpoint {weights.source!r} was saved from {weights.model_name}, not {name}")
    return weights


def _same_family(saved_from: str, name: str) -> bool:
    try:
        return get_model_spec(saved_from).family == get_model_spec(name).family
    except KeyError:  # a model this version does not register
        return False


def is_plain(model: nn.Module) -> bool:
    """A plain (non-hierarchical) model: every entry of its feature_info has the same reduction (ViT, Vim)."""
    return len({info["reduction"] for info in model.feature_info}) == 1


def default_out_indices(model: nn.Module) -> tuple[int, ...]:
    """Every stage of a hierarchical model; four evenly spaced blocks of a plain one (the last one included)."""
    count = len(model.feature_info)
    if not is_plain(model) or count <= 4:
        return tuple(range(count))
    return tuple(count * (i + 1) // 4 - 1 for i in range(4))


def _as_indices(out_indices: int | Sequence[int]) -> int | tuple[int, ...]:
    return out_indices if isinstance(out_indices, int) else tuple(out_indices)


def load_checkpoint(path: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Rebuild a model from a file that records its model name: `save_checkpoint`'s, or a training checkpoint."""
    model_name = read_metadata(path).get("model_name")
    if model_name is None and Path(path).suffix != ".safetensors":
        model_name = read_checkpoint(path)[0].get("model_name")
    if not isinstance(model_name, str):
        raise CheckpointError(
            f"{os.fspath(path)!r} does not record its model name; use create_model(NAME, checkpoint=PATH)"
        )
    return create_model(model_name, checkpoint=path, **kwargs)


def save_checkpoint(model: nn.Module, path: str | os.PathLike, class_names: list[str] | None = None) -> None:
    """Write a model made by `create_model` as safetensors, with its name and class names."""
    if class_names is None:
        class_names = model.pretrained_cfg.get("label_names")
    save_weights(model, path, model.model_name, class_names)

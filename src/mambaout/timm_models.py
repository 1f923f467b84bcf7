"""Our models in timm's registry: after `import mambaout`, `timm.create_model` and `timm.list_models` know them.

Every registered name timm does not already have gets a timm entrypoint here (also importable from this module, as
timm's own are) and its `PretrainedCfg`, so timm's scripts and every tool built on `timm.create_model`
(mmdetection's and mmsegmentation's TIMMBackbone, Hugging Face's timm integration) build them. Names timm already
has stay timm's (`TIMM_OWNED`): timm's MambaOut is the same network with the same state_dict, so the release files
and the logits agree (tests/test_mambaout_reference.py).

An entrypoint builds through `build_model`, so timm gets what `mambaout.create_model` gives: our download cache and
hash checks, official-layout converters, EMA choice, `features_only` with timm's `feature_info`. timm's
`pretrained_cfg` argument may be a tag, or the config of an `hf-hub:`/`local-dir:` model (whose weights are then
loaded); `pretrained_cfg_overlay` may name other weights (`file`, `url`, `hf_hub_id` [+ `hf_hub_filename`]).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
from timm.models import DefaultCfg, PretrainedCfg
from timm.models import register_model as register_timm_model
from torch import nn

from .checkpoints import HubModel
from .checkpoints.download import fetch_url
from .checkpoints.hub import HUB_PREFIX, LOCAL_PREFIX, hub_file
from .factory import PathLike, build_model
from .registry import UnknownModelError, get_model_spec, list_models, timm_pretrained_cfg

# read by timm's register_model: name -> the pretrained configs of that architecture
default_cfgs: dict[str, DefaultCfg] = {}
TIMM_OWNED: list[str] = []  # our names that timm registers itself (its own classes are used)

# timm's create_model passes these to every entrypoint; they are consumed here, never by a model
_TIMM_ONLY = ("pretrained_model_args", "device", "dtype")


def _given_cfg(name: str, pretrained_cfg: Any, overlay: dict[str, Any] | None) -> dict[str, Any]:
    """The entries a timm caller gives in place of ours: a tag (which must be ours), a config, an overlay."""
    given: dict[str, Any] = {}
    if isinstance(pretrained_cfg, str):
        own = get_model_spec(name).pretrained_cfg.get("tag") or ""
        if pretrained_cfg not in ("", own):
            raise UnknownModelError(f"{name} has no pretrained tag {pretrained_cfg!r}; its tag is {own!r}")
    elif isinstance(pretrained_cfg, PretrainedCfg):
        given = dataclasses.asdict(pretrained_cfg)
    elif pretrained_cfg is not None:
        given = dict(pretrained_cfg)
    return {**given, **(overlay or {})}


def _weights_named_by(name: str, cfg: dict[str, Any], cache_dir: PathLike | None) -> Path | None:
    """The weights file a given config names in place of the release weights (None: the release weights)."""
    own = get_model_spec(name).pretrained_cfg
    if cfg.get("source") == "local-dir":
        return HubModel(LOCAL_PREFIX + cfg["file"], name, cfg).weights_file()
    if cfg.get("file"):
        return Path(cfg["file"])
    if cfg.get("hf_hub_id") and (cfg.get("source") == "hf-hub" or cfg["hf_hub_id"] != own.get("hf_hub_id")):
        if cfg.get("hf_hub_filename"):
            return hub_file(cfg["hf_hub_id"], cfg["hf_hub_filename"], cache_dir)
        return HubModel(HUB_PREFIX + cfg["hf_hub_id"], name, cfg).weights_file(cache_dir)
    if cfg.get("url") and cfg["url"] != own.get("url"):
        return fetch_url(name, {"url": cfg["url"], "sha256": cfg.get("sha256")})
    return None


def entrypoint(name: str) -> Callable[..., nn.Module]:
    """timm's entrypoint for one of our models (named `name`, as timm's registry requires)."""

    def create(
        pretrained: bool = False,
        pretrained_cfg: Any = None,
        pretrained_cfg_overlay: dict[str, Any] | None = None,
        cache_dir: PathLike | None = None,
        **kwargs: Any,
    ) -> nn.Module:
        cfg = _given_cfg(name, pretrained_cfg, pretrained_cfg_overlay)
        placement = {key: kwargs.pop(key, None) for key in _TIMM_ONLY}
        checkpoint = _weights_named_by(name, cfg, cache_dir) if pretrained else None
        if cfg.get("num_classes") is not None:  # a pushed model's head, unless the caller asks for another
            kwargs.setdefault("num_classes", cfg["num_classes"])
        model = build_model(name, pretrained and checkpoint is None, checkpoint, cfg_overlay=cfg, cache_dir=cache_dir,
                            **kwargs)
        if placement["device"] is not None or placement["dtype"] is not None:
            model.to(device=placement["device"], dtype=placement["dtype"])
        return model

    create.__name__ = create.__qualname__ = name
    create.__module__ = __name__
    create.__doc__ = f"{name} (mambaout): timm's create_model options, built by mambaout's create_model."
    return create


def register_in_timm() -> None:
    """Register every model of ours whose name timm does not have (once; more calls add what is new)."""
    timm_names = set(timm.list_models())
    for name in list_models():
        if name in default_cfgs or name in TIMM_OWNED:
            continue
        if name in timm_names:
            TIMM_OWNED.append(name)
            continue
        cfg = timm_pretrained_cfg(name)
        tag = cfg.tag or ""
        default_cfgs[name] = DefaultCfg(tags=deque([tag]), cfgs={tag: cfg})
        globals()[name] = register_timm_model(entrypoint(name))

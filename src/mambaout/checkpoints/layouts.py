"""From whatever a checkpoint file holds to a state_dict in our layout.

Two steps: `unwrap` finds the weights inside training wrappers ({'model': ...}, EMA copies, DataParallel
and torch.compile prefixes); the model's converter (its `ModelSpec.converter`: the functions here and in the
*_layout modules) detects an official layout and renames its keys.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from .files import CheckpointError

StateDict = dict[str, torch.Tensor]

WEIGHT_KEYS = ("model", "state_dict", "module")
EMA_KEYS = ("model_ema", "state_dict_ema", "ema")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def unwrap(obj: dict[str, Any], use_ema: bool = False) -> StateDict:
    """The tensors of a checkpoint: the EMA copy when asked for and present, else the plain weights."""
    order = (*EMA_KEYS, *WEIGHT_KEYS) if use_ema else WEIGHT_KEYS
    for key in order:
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"no tensors found in the checkpoint (top-level keys: {sorted(obj)[:10]}); expected a state_dict, "
            f"or one under {WEIGHT_KEYS + EMA_KEYS}"
        )
    return {_strip_wrappers(k): v for k, v in tensors.items()}


def _strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def convert_mambaout(state_dict: StateDict) -> StateDict:
    """Official MambaOut layout (downsample_layers.*, stages.I.J, norm, head.fc1/norm/fc2) -> timm's.

    Detected from the stem's name, never from `head.norm` (C channels in one layout, 4C in the other).
    """
    if not any(k.startswith("downsample_layers.0.") for k in state_dict):
        return state_dict
    out = {}
    for key, value in state_dict.items():
        key = key.replace("downsample_layers.0.", "stem.")
        key = re.sub(r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample.", key)
        key = re.sub(r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.", key)
        if key.startswith("head."):
            key = key.replace("head.fc1.", "head.pre_logits.fc.").replace("head.norm.", "head.pre_logits.norm.")
            key = key.replace("head.fc2.", "head.fc.")
        elif key.startswith("norm."):
            key = "head." + key
        out[key] = value
    return out


def convert_vim(state_dict: StateDict) -> StateDict:
    """Official Vim layout (layers.I.*, norm_f) -> ours (blocks.I.*, norm); everything else keeps its name.

    Detected from the official block prefix; our own layout passes through unchanged.
    """
    if not any(k.startswith("layers.") for k in state_dict):
        return state_dict
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r"^layers\.(\d+)\.", r"blocks.\1.", key)
        key = re.sub(r"^norm_f\.", "norm.", key)
        out[key] = value
    return out

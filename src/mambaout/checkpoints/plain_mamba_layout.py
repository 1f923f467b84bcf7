"""Official PlainMamba state_dict layout (mmcls: `backbone.*`, `head.fc.*`) -> ours.

`backbone.layers.I.mamba.*` -> `blocks.I.mixer.*`, `backbone.layers.I.*` -> `blocks.I.*`, `backbone.ln1.*` -> `norm.*`,
other `backbone.*` lose the prefix, `head.fc.*` -> `head.*`. The `ema_*` buffers that the L2 / L3 training's
EMACheckpointHook adds to the classifier are dropped: the regular keys already hold the EMA weights (the hook swaps
them in before the checkpoint is saved).
"""

from __future__ import annotations

import re

import torch

StateDict = dict[str, torch.Tensor]

_RENAMES = (
    (re.compile(r"^backbone\.layers\.(\d+)\.mamba\."), r"blocks.\1.mixer."),
    (re.compile(r"^backbone\.layers\.(\d+)\."), r"blocks.\1."),
    (re.compile(r"^backbone\.ln1\."), "norm."),
    (re.compile(r"^backbone\."), ""),
    (re.compile(r"^head\.fc\."), "head."),
)


def convert_plain_mamba(state_dict: StateDict) -> StateDict:
    """Rename an official (mmcls) PlainMamba state_dict; our own layout passes through unchanged."""
    if not any(k.startswith("backbone.") for k in state_dict):
        return state_dict
    out = {}
    for key, value in state_dict.items():
        if key.startswith("ema_"):
            continue
        for pattern, replacement in _RENAMES:
            key, count = pattern.subn(replacement, key)
            if count:
                break
        out[key] = value
    return out

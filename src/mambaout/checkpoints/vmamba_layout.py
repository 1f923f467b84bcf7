"""Official VMamba state_dict layout (MzeroMiko/VMamba classification/models/vmamba.py) -> ours.

Detected from the official top-level names (`patch_embed.`, `layers.`). Covers every released version and the legacy
names the official loader renames itself (`patch_embed.proj/norm`, `ln_1`, `self_attention`, top-level `norm`/`head`),
and views conv-shaped (out, in, 1, 1) Linear2d weights as the (out, in) weights our Linear2d keeps.
"""

from __future__ import annotations

import re

import torch

StateDict = dict[str, torch.Tensor]

_LEGACY = (
    (re.compile(r"^patch_embed\.proj\."), "patch_embed.0."),
    (re.compile(r"^patch_embed\.norm\."), "patch_embed.2."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.ln_1\."), r"\1.norm."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.self_attention\."), r"\1.op."),
    (re.compile(r"^norm\."), "classifier.norm."),
    (re.compile(r"^head\."), "classifier.head."),
)
# official patch_embed Sequential index -> our stem module, for the v1 (one conv) and v2 (two convs) stems
_STEM_V1 = {"0": "conv", "2": "norm"}
_STEM_V2 = {"0": "conv1", "2": "norm1", "5": "conv2", "7": "norm2"}
_DOWNSAMPLE = {"1": "conv", "3": "norm", "reduction": "reduction", "norm": "norm"}
_SS2D_PARAMS = {
    "x_proj_weight": "x_proj_weight",
    "dt_projs_weight": "dt_proj_weight",
    "dt_projs_bias": "dt_proj_bias",
    "A_logs": "A_log",
    "Ds": "D",
}
_SS2D_MODULES = {"in_proj": "in_proj", "conv2d": "conv", "out_norm": "out_norm", "out_proj": "out_proj"}
_LINEAR2D = re.compile(r"\.(in_proj|out_proj|fc1|fc2)\.weight$")


def is_official_vmamba(state_dict: StateDict) -> bool:
    return any(k.startswith(("patch_embed.", "layers.")) for k in state_dict)


def _rename(key: str, stem: dict[str, str]) -> str:
    if m := re.match(r"^patch_embed\.(\d+)\.(.+)$", key):
        return f"stem.{stem[m[1]]}.{m[2]}"
    if m := re.match(r"^layers\.(\d+)\.downsample\.([^.]+)\.(.+)$", key):
        return f"stages.{int(m[1]) + 1}.downsample.{_DOWNSAMPLE[m[2]]}.{m[3]}"
    if m := re.match(r"^layers\.(\d+)\.blocks\.(\d+)\.(.+)$", key):
        block, rest = f"stages.{m[1]}.blocks.{m[2]}", m[3]
        if rest.startswith("norm."):
            return f"{block}.norm1.{rest[len('norm.') :]}"
        if rest.startswith("op."):
            name = rest[len("op.") :]
            if name in _SS2D_PARAMS:
                return f"{block}.mixer.{_SS2D_PARAMS[name]}"
            module, _, param = name.partition(".")
            return f"{block}.mixer.{_SS2D_MODULES[module]}.{param}"
        return f"{block}.{rest}"  # norm2, mlp.fc1, mlp.fc2
    if key.startswith("classifier.norm."):
        return "head.norm." + key[len("classifier.norm.") :]
    if key.startswith("classifier.head."):
        return "head.fc." + key[len("classifier.head.") :]
    raise KeyError(key)


def convert_vmamba(state_dict: StateDict) -> StateDict:
    """Rename an official VMamba state_dict to our module names; a state_dict already in ours passes through.

    A key the official model does not have either is kept as it is, so that loading names it as unexpected.
    """
    if not is_official_vmamba(state_dict):
        return state_dict
    modern = {}
    for key, value in state_dict.items():
        for pattern, replacement in _LEGACY:
            key = pattern.sub(replacement, key)
        modern[key] = value
    stem = _STEM_V2 if "patch_embed.5.weight" in modern else _STEM_V1
    out = {}
    for key, value in modern.items():
        try:
            new_key = _rename(key, stem)
        except KeyError:
            new_key = key
        if _LINEAR2D.search(new_key) and value.dim() == 4 and value.shape[2:] == (1, 1):
            value = value.flatten(1)
        out[new_key] = value
    return out

"""Official LocalMamba state_dict layouts (hunto/LocalMamba classification/lib/models) -> ours.

LocalVim is laid out as Vim (`layers.I.*`, `norm_f.*`; the mixer keeps its official names), so Vim's renaming
applies. LocalVMamba is laid out as VMamba v0 plus one BiAttn per block under `op.multi_scan.attn.*`, which our SS2D
keeps under the same name.
"""

from __future__ import annotations

import re

import torch

from .vmamba_layout import convert_vmamba

StateDict = dict[str, torch.Tensor]

_MULTI_SCAN = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.op\.multi_scan\.")


def convert_local_vmamba(state_dict: StateDict) -> StateDict:
    """VMamba's renaming, then the per-block `multi_scan` modules it does not know."""
    return {
        _MULTI_SCAN.sub(r"stages.\1.blocks.\2.mixer.multi_scan.", k): v for k, v in convert_vmamba(state_dict).items()
    }

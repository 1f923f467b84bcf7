"""Where the token models put their class token, and how their per-token tables follow a new input size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed


def middle_token_index(num_patches: int) -> int:
    """Where a middle class token sits among `num_patches` patch tokens (Vim's and LocalVim's)."""
    return num_patches // 2


def resample_mid_cls_pos_embed(
    pos_embed: torch.Tensor,
    new_size: tuple[int, int],
    old_size: tuple[int, int],
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """Resample a (1, 1 + H*W, C) position embedding whose class-token row sits in the middle (not at row 0).

    The class row is taken out of position old H*W // 2, the patch rows are resampled on their grid (timm's
    `resample_abs_pos_embed`), and the class row is put back at new H*W // 2, unchanged.
    """
    new_size, old_size = tuple(new_size), tuple(old_size)
    if new_size == old_size:
        return pos_embed
    old_index = middle_token_index(old_size[0] * old_size[1])
    cls_row = pos_embed[:, old_index : old_index + 1]
    patches = torch.cat((pos_embed[:, :old_index], pos_embed[:, old_index + 1 :]), dim=1)
    patches = resample_abs_pos_embed(
        patches,
        new_size=new_size,
        old_size=old_size,
        num_prefix_tokens=0,
        interpolation=interpolation,
        antialias=antialias,
    )
    new_index = middle_token_index(new_size[0] * new_size[1])
    return torch.cat((patches[:, :new_index], cls_row, patches[:, new_index:]), dim=1)


def resample_grid(table: torch.Tensor, new_size: tuple[int, int], old_size: tuple[int, int]) -> torch.Tensor:
    """A (..., H*W, C) per-token table on its grid, resized bicubically (align_corners=False, as the official
    LocalVim / PlainMamba resizes with mmseg's / mmcls's `resize`)."""
    new_size, old_size = tuple(new_size), tuple(old_size)
    if new_size == old_size:
        return table
    lead = table.shape[:-2]
    grid = table.reshape(-1, *old_size, table.shape[-1]).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_size, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(*lead, new_size[0] * new_size[1], table.shape[-1])


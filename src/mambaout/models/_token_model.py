"""What DeiT and Vim share: a sequence of blocks over patch tokens plus one class token, with timm's model API.

Subclasses build `blocks`, `norm`, `head`, `head_drop`, set `global_pool`, and define `_embed` (image -> tokens with
the class token at `cls_token_index(...)` and the position embedding added) and `cls_token_index`. `GridTokenModel`
is the form whose blocks also take the patch grid and which may have no class token (LocalVim, PlainMamba).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from timm.layers import trunc_normal_
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

# "token": the class token's final state. "avg": the mean of the patch tokens (the class token excluded).
# "": no pooling, every token goes through the head (timm's ViT does the same).
GLOBAL_POOLS = ("token", "avg", "")
PATCH_POOLS = ("avg", "")  # a model without a class token
OUTPUT_FMTS = ("NCHW", "NLC")

# (table, new grid, old grid) -> the table on the new grid, its class-token rows kept where the model puts them
Resample = Callable[[torch.Tensor, tuple[int, int], tuple[int, int]], torch.Tensor]
# state_dict key -> (number of class-token rows in the table, how it is resampled)
PositionTables = dict[str, tuple[int, Resample]]


class TokenModel(nn.Module):
    output_fmt = "NLC"
    num_prefix_tokens = 1  # one class token (timm's name, although Vim's sits in the middle)

    def __init__(self) -> None:
        super().__init__()
        self.grad_checkpointing = False

    def cls_token_index(self, num_patches: int) -> int:
        """Where the class token sits among `num_patches` patch tokens."""
        raise NotImplementedError

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image -> (tokens with the class token and position embedding, patch grid (H, W))."""
        raise NotImplementedError

    @torch.jit.ignore
    def _new_head(self, num_classes: int) -> None:
        """A freshly initialised classifier of `num_classes` (none for 0), on the model's device."""
        self.num_classes = num_classes
        if num_classes > 0:
            self.head = nn.Linear(self.num_features, num_classes, device=self.norm.weight.device)
            self._init_head()
        else:
            self.head = nn.Identity()

    def _position_tables(self) -> PositionTables:
        """The state_dict tables laid out on the patch grid `self.grid_size` (rows on dim -2): each family's own."""
        return {}

    def resample_checkpoint(
        self, state_dict: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[tuple[int, int], tuple[int, int]]]]:
        """A checkpoint's position tables resampled from its (square) patch grid to the model's: the checkpoint
        loader's hook, found by name (`mambaout.checkpoints.loading.load_weights`).

        Returns the state_dict (the same tensors wherever the grid already fits) and, for each resampled key, the
        (old grid, new grid). A table that differs in anything but its number of grid rows, or whose rows are no
        square grid, is left as it is: the loader's strict check then names it.
        """
        own = self.state_dict()
        out, resampled = dict(state_dict), {}
        for key, (class_rows, resample) in self._position_tables().items():
            theirs, ours = state_dict.get(key), own.get(key)
            if theirs is None or ours is None or theirs.shape == ours.shape or theirs.ndim != ours.ndim:
                continue
            if theirs.shape[:-2] != ours.shape[:-2] or theirs.shape[-1] != ours.shape[-1]:
                continue
            side = math.isqrt(max(theirs.shape[-2] - class_rows, 0))
            if side == 0 or side * side != theirs.shape[-2] - class_rows:
                continue
            old, new = (side, side), tuple(self.grid_size)
            # float32 for the interpolation (bicubic has no half kernel on every device), back to the file's dtype
            out[key] = resample(theirs.float(), new, old).to(theirs.dtype)
            resampled[key] = (old, new)
        return out, resampled

    def _init_head(self) -> None:
        """The Mamba token models' head init (truncated normal 0.02, zero bias), also after reset_classifier."""
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H*W + 1, C) tokens -> the (B, H*W, C) patch tokens in raster order (the class token removed)."""
        index = self.cls_token_index(x.shape[1] - 1)
        return torch.cat((x[:, :index], x[:, index + 1 :]), dim=1)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if not self.global_pool:
            return x
        if self.global_pool == "avg":
            return self.patch_tokens(x).mean(dim=1)
        return x[:, self.cls_token_index(x.shape[1] - 1)]

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self._embed(x)
        checkpointed = self.grad_checkpointing and torch.is_grad_enabled()
        x = checkpoint_seq(self.blocks, x) if checkpointed else self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Block outputs (timm semantics: int = last n blocks, None = all), patch tokens only.

        `norm` applies the final norm to each; NCHW maps are the patch tokens laid back on their grid.
        """
        if output_fmt not in OUTPUT_FMTS:
            raise ValueError(f"output_fmt must be one of {OUTPUT_FMTS}, got {output_fmt!r}")
        take, last = feature_take_indices(len(self.blocks), indices)
        x, (grid_h, grid_w) = self._embed(x)
        blocks = self.blocks[: last + 1] if stop_early else self.blocks
        intermediates = []
        for i, block in enumerate(blocks):
            x = self._run_block(block, x)
            if i in take:
                tokens = self.patch_tokens(self.norm(x) if norm else x)
                if output_fmt == "NCHW":
                    tokens = tokens.reshape(x.shape[0], grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous()
                intermediates.append(tokens)
        return intermediates if intermediates_only else (self.norm(x), intermediates)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Keep only the blocks up to the last of `indices`, without the head (and the final norm if asked)."""
        take, last = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: last + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.head = nn.Identity()
            self.head_drop = nn.Identity()
            self.num_classes = 0
        return take


class GridTokenModel(TokenModel):
    """A TokenModel whose blocks take the patch grid (`GridBlock`), and which may have no class token at all
    (num_prefix_tokens 0: the tokens are the patches, "avg" pools all of them). Shared by LocalVim and PlainMamba."""

    def _grid_embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        raise NotImplementedError

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x, grid = self._grid_embed(x)
        # blocks read the grid of the current input (the official mixers read it from a module attribute too)
        self._grid = grid
        return x, grid

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return super().patch_tokens(x) if self.num_prefix_tokens else x

    def _before_block(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return x

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = self._before_block(x, self._grid)
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, self._grid, use_reentrant=False)
        return block(x, self._grid)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self._embed(x)
        for block in self.blocks:
            x = self._run_block(block, x)
        return self.norm(x)

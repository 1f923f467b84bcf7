"""What the hierarchical models (MambaOut, VMamba) share in timm's feature API: cutting the stages after the last
one a feature extractor needs."""

from __future__ import annotations

from timm.models._features import feature_take_indices
from torch import nn


def prune_stages(model: nn.Module, indices: int | list[int], prune_head: bool) -> list[int]:
    """Keep `model.stages` up to the last of `indices` (and, with `prune_head`, no head); the kept indices."""
    take, last = feature_take_indices(len(model.stages), indices)
    model.stages = model.stages[: last + 1]
    if prune_head:
        model.head = nn.Identity()
        model.num_classes = 0
    return take

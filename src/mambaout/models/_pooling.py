"""The check every model's `global_pool` argument goes through."""

from __future__ import annotations

from collections.abc import Sequence


def check_global_pool(global_pool: str, choices: Sequence[str]) -> str:
    """`global_pool` if the model offers it, else a clear error."""
    if global_pool not in choices:
        raise ValueError(f"unknown global_pool {global_pool!r}; choose from {tuple(choices)}")
    return global_pool

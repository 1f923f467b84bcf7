"""Name lookups that fail with the closest names (models, recipes)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def lookup(table: Mapping[str, T], name: str, what: str, command: str, error: type[KeyError]) -> T:
    """`table[name]`, else `error` naming the closest names and the command that lists them all."""
    try:
        return table[name]
    except KeyError:
        close = difflib.get_close_matches(name, table, n=5, cutoff=0.5)
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise error(f"unknown {what} {name!r}.{hint} `{command}` lists all {len(table)} {what}s.") from None

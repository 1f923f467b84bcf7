"""Image sizes as users give them (one number for a square, or H W) and as the code uses them ((H, W)).

Configs and run records keep a square as one number (`img_size: 224`, as every earlier args.yaml and checkpoint
has it) and anything else as [H, W], so what older runs wrote reads back unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

Size = int | Sequence[int]


def height_width(size: Size) -> tuple[int, int]:
    """(H, W) of one number (a square) or of one or two numbers."""
    if isinstance(size, int):
        return size, size
    values = [int(v) for v in size]
    if len(values) not in (1, 2):
        raise ValueError(f"an image size is one number (a square) or two (H W), got {list(size)}")
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def compact_size(size: Size) -> int | list[int]:
    """One number for a square, else [H, W]: what configs and run records hold."""
    height, width = height_width(size)
    return height if height == width else [height, width]


def size_name(size: Size) -> str:
    """'224' for a square, '160x224' (H x W) otherwise: run folder names and report headings."""
    height, width = height_width(size)
    return str(height) if height == width else f"{height}x{width}"


def hxw(size: Size) -> str:
    """'224x224' (H x W) even for a square: log lines and plot labels."""
    return "x".join(map(str, height_width(size)))

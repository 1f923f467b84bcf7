"""The command line's shared vocabulary: each concept one flag, timm's name where timm has one, declared once.

`--img-size` (one number for a square, or H W), `-b/--batch-size`, `--checkpoint`/`--pretrained`/`--use-ema`,
`--device`, `--workers`, `--output`. Spellings of an earlier release (`--size`, `--batch`, `--out`,
`--dynamic-batch`) still work for one release and say what replaces them (a FutureWarning, which Python shows).
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

# the flag every shared concept has in every command that takes it (tests/test_cli.py checks each command)
SHARED_FLAGS = {
    "img_size": "--img-size",
    "batch_size": "--batch-size",
    "checkpoint": "--checkpoint",
    "pretrained": "--pretrained",
    "device": "--device",
    "workers": "--workers",
    "output": "--output",
}


def count(minimum: int):
    """An argparse type: an integer of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


class _ImageSize(argparse.Action):
    """One number (a square) or two (H W), stored as (H, W)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if len(values) not in (1, 2):
            parser.error(f"{option_string} takes one number (a square) or two (H W), got {len(values)}")
        setattr(namespace, self.dest, (values[0], values[0]) if len(values) == 1 else tuple(values))


_ACTIONS: dict[str, type[argparse.Action]] = {"store": argparse._StoreAction, "store_true": argparse._StoreTrueAction}


def deprecated_action(replacement: str, action: type[argparse.Action] | str = "store", flip: bool = False):
    """An action for an old spelling: warns that `replacement` takes its place, then acts as `action` does
    (`flip`: the old option took W H where the new one takes H W)."""
    base = _ACTIONS[action] if isinstance(action, str) else action

    class Deprecated(base):  # type: ignore[misc, valid-type]
        def __call__(self, parser, namespace, values, option_string=None):
            warnings.warn(f"{option_string} is deprecated and goes in the next release: use {replacement}",
                          FutureWarning, stacklevel=2)
            if flip:
                values = list(reversed(values))
            super().__call__(parser, namespace, values, option_string)

    return Deprecated


IMG_SIZE_HELP = "input size: one number (square) or H W (default: the model's)"


def add_img_size(p: argparse.ArgumentParser, help: str = IMG_SIZE_HELP, default: Any = None,
                 old_width_first: bool = False, flag: str = "--img-size", dest: str = "img_size",
                 old: bool = True) -> None:
    """--img-size SIZE | H W (or `flag`, e.g. --crop-size), and the old --size H W where `old` (W H where
    `old_width_first`)."""
    p.add_argument(flag, dest=dest, nargs="+", type=count(1), action=_ImageSize, default=default, metavar="SIZE",
                   help=help)
    if old:
        p.add_argument("--size", dest=dest, nargs=2, type=count(1), help=argparse.SUPPRESS,
                       action=deprecated_action("--img-size H W", _ImageSize, flip=old_width_first))


def add_batch_size(p: argparse.ArgumentParser, default: int, help: str = "images per batch",
                   old: str | None = None) -> None:
    """-b/--batch-size, and an old spelling (`old`, e.g. --batch)."""
    p.add_argument("-b", "--batch-size", type=count(1), default=default, help=help)
    if old:
        p.add_argument(old, dest="batch_size", type=count(1), help=argparse.SUPPRESS,
                       action=deprecated_action("-b/--batch-size"))


def add_output(p: argparse.ArgumentParser, default: str | None, help: str, old: bool = False) -> None:
    """--output, and the old --out (`old`)."""
    p.add_argument("--output", default=default, help=help)
    if old:
        p.add_argument("--out", dest="output", help=argparse.SUPPRESS, action=deprecated_action("--output"))


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: the GPU if there is one)")


def add_workers(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument("--workers", type=count(0), default=default, help="data loading processes")


CHECKPOINT_HELP = "weights file (.pth/.pt/.bin/.safetensors, official or ours)"


def add_weights(p: argparse.ArgumentParser, ema: bool = True, required: bool = False,
                checkpoint_help: str = CHECKPOINT_HELP) -> None:
    """--checkpoint | --pretrained (one of them where `required`), and --use-ema."""
    weights = p.add_mutually_exclusive_group(required=required)
    weights.add_argument("--checkpoint", help=checkpoint_help)
    weights.add_argument("--pretrained", action="store_true", help="the release weights (downloaded once)")
    if ema:
        p.add_argument("--use-ema", action="store_true", default=None,
                       help="take the EMA weights of a training checkpoint")


def resolved_device(device: str | None) -> str:
    """--device as given, or the GPU if there is one."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

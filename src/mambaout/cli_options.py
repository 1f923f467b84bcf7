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
                checkpoint_help: str = CHECKPOINT_HELP, pretrained: bool = True) -> None:
    """--checkpoint | --pretrained (one of them where `required`; --checkpoint alone without `pretrained`), and
    --use-ema."""
    weights = p.add_mutually_exclusive_group(required=required) if pretrained else p
    weights.add_argument("--checkpoint", required=required and not pretrained, help=checkpoint_help)
    if pretrained:
        weights.add_argument("--pretrained", action="store_true", help="the release weights (downloaded once)")
    if ema:
        p.add_argument("--use-ema", action="store_true", default=None,
                       help="take the EMA weights of a training checkpoint")


def add_trained_checkpoint(p: argparse.ArgumentParser, command: str) -> None:
    """--checkpoint (required: a checkpoint `command` wrote) and --use-ema, of the dense tasks' evaluation and
    prediction."""
    add_weights(p, required=True, pretrained=False, checkpoint_help=f"a {command} checkpoint (last.pth, best.pth)")


def add_json(p: argparse.ArgumentParser | argparse._ActionsContainer, help: str = "print the result as JSON") -> None:
    p.add_argument("--json", action="store_true", help=help)


def add_split(p: argparse.ArgumentParser, default: str | None, help: str) -> None:
    p.add_argument("--split", default=default, help=help)


def add_precision(p: argparse.ArgumentParser, choices: tuple[str, ...], default: str, help: str | None = None) -> None:
    """--precision of an inference command (`engine.inference.PRECISIONS`)."""
    p.add_argument("--precision", choices=choices, default=default, help=help)


def add_eval_amp(p: argparse.ArgumentParser) -> None:
    """--amp of the dense tasks' evaluation (their training commands take it from the task's config)."""
    p.add_argument("--amp", choices=["bf16", "fp16"], help="autocast precision (default: fp32)")


def add_channels_last(p: argparse.ArgumentParser, auto: bool = False) -> None:
    """--channels-last: a switch, or with `auto` a choice of auto (for convolutional models), on and off."""
    kind = (dict(choices=("auto", "on", "off"), default="auto", help="channels-last memory format (auto: for "
                 "convolutional models)") if auto else dict(action="store_true", help="channels-last memory format"))
    p.add_argument("--channels-last", **kind)


def add_compile(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--compile", action="store_true", help=help)


def add_models(p: argparse.ArgumentParser, help: str, required: bool = False) -> None:
    """--models M1 M2 ... (registered names)."""
    p.add_argument("--models", nargs="+", required=required, help=help)


def add_model(p: argparse.ArgumentParser, help: str = "registered model name (see `mambaout models`)",
              required: bool = False) -> None:
    p.add_argument("--model", required=required, help=help)


def add_epochs(p: argparse.ArgumentParser, help: str) -> None:
    """--epochs of a command that trains with a recipe's or a file's default (unset: theirs)."""
    p.add_argument("--epochs", type=count(1), help=help)


def add_generated_dataset(p: argparse.ArgumentParser, out_help: str, train_images: int, val_images: int,
                          size: tuple[int, int]) -> None:
    """OUT, --train-images, --val-images, --img-size and --seed of a command that writes a generated dataset."""
    p.add_argument("out", help=out_help)
    p.add_argument("--train-images", type=count(1), default=train_images)
    p.add_argument("--val-images", type=count(1), default=val_images)
    add_img_size(p, "image size: one number (square) or H W", default=size, old_width_first=True)
    p.add_argument("--seed", type=int, default=0)


def resolved_device(device: str | None) -> str:
    """--device as given (checked: a DeviceError names a device this machine lacks), or the GPU if there is one."""
    from .engine.device import resolve_device

    return str(resolve_device(device))

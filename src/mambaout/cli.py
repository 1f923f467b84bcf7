"""The `mambaout` command: argument parsing only; every command calls a library function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

import torch

from .analysis.flops import model_flops
from .analysis.transformer_flops import transformer_block_flops
from .checkpoints import CheckpointError
from .data.images import ImageReadError
from .errors import InputSizeError
from .registry import UnknownModelError, get_model_spec, list_models


class UsageError(ValueError):
    """Options that do not go together."""


EXPECTED_ERRORS = (UnknownModelError, CheckpointError, InputSizeError, ImageReadError, FileNotFoundError, UsageError)


def cmd_models(args: argparse.Namespace) -> int:
    rows = []
    for name in list_models(args.pattern):
        spec = get_model_spec(name)
        pub = spec.published
        rows.append(
            dict(
                name=name,
                family=spec.family,
                params_m=pub.params_m,
                gmacs=pub.gmacs,
                top1=pub.top1,
                url=spec.pretrained_cfg.get("url") or "",
            )
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1

    def show(value, fmt):
        return "-" if value is None else format(value, fmt)

    width = max(len(r["name"]) for r in rows)
    print(f"{'model':<{width}}  {'params/M':>8}  {'GMACs':>6}  {'top-1':>6}  weights")
    for r in rows:
        print(
            f"{r['name']:<{width}}  {show(r['params_m'], '.1f'):>8}  {show(r['gmacs'], '.1f'):>6}  "
            f"{show(r['top1'], '.1f'):>6}  {r['url'] or '-'}"
        )
    return 0


def cmd_flops(args: argparse.Namespace) -> int:
    if args.transformer:
        if args.model or args.dim is None or args.tokens is None:
            raise UsageError("use either `flops MODEL` or `flops --transformer --dim D --tokens L`")
        try:
            print(transformer_block_flops(args.dim, args.tokens, args.mlp_ratio).format())
        except ValueError as e:
            raise UsageError(str(e)) from e
        return 0
    if not args.model:
        raise UsageError("flops needs a MODEL (or --transformer --dim D --tokens L)")
    print(model_flops(args.model, size=tuple(args.size), batch=args.batch).format())
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .engine.predict import predict_files
    from .factory import create_model

    if not (args.checkpoint or args.pretrained):
        logging.getLogger("mambaout").warning(
            "no --checkpoint or --pretrained: %s has random weights, its predictions mean nothing", args.model
        )
    model = create_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint, use_ema=args.use_ema)
    predictions, errors = predict_files(
        model,
        args.images,
        topk=args.topk,
        batch_size=args.batch_size,
        device=args.device,
        input_size=tuple(args.size) if args.size else None,
    )
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "image": p.path,
                        "top": [{"index": g.index, "label": g.label, "probability": g.probability} for g in p.top],
                    }
                    for p in predictions
                ],
                indent=2,
            )
        )
    else:
        for p in predictions:
            print(p.path)
            for g in p.top:
                print(f"  {g.probability:7.2%}  {g.label}  ({g.index})")
    return 1 if errors else 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from .apps.quickstart import run_quickstart

    return run_quickstart(args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mambaout", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list registered models with published params, MACs, top-1, weights")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern, e.g. 'mambaout_*'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("flops", help="params and MACs per stage, counted with torch's FlopCounterMode")
    p.add_argument("model", nargs="?")
    p.add_argument("--transformer", action="store_true", help="Eq. 6 of the paper for one Transformer block")
    p.add_argument("--dim", type=int, help="with --transformer: the token width D")
    p.add_argument("--tokens", type=int, help="with --transformer: the sequence length L")
    p.add_argument("--mlp-ratio", type=float, default=4.0)
    p.add_argument("--size", nargs=2, type=int, default=(224, 224), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=1)
    p.set_defaults(func=cmd_flops)

    p = sub.add_parser("predict", help="top-k classes for image files")
    p.add_argument("model")
    p.add_argument("images", nargs="+")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", help="weights file (.pth/.pt/.bin/.safetensors, official or ours)")
    weights.add_argument("--pretrained", action="store_true", help="the release weights (downloaded once)")
    p.add_argument("--use-ema", action="store_true", default=None, help="take the EMA weights of a training checkpoint")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), help="input size (default: the model's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("quickstart", help="a tour on generated data, no download needed")
    p.add_argument("--out", default="quickstart_output")
    p.set_defaults(func=cmd_quickstart)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr
    )
    try:
        return args.func(args)
    except EXPECTED_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

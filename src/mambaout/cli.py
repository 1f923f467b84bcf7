"""The `mambaout` command: argument parsing only; every command calls a library function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from .analysis.flops import model_flops
from .analysis.transformer_flops import transformer_block_flops
from .cli_options import (
    add_batch_size,
    add_channels_last,
    add_compile,
    add_device,
    add_epochs,
    add_eval_amp,
    add_generated_dataset,
    add_img_size,
    add_json,
    add_model,
    add_models,
    add_output,
    add_precision,
    add_split,
    add_trained_checkpoint,
    add_weights,
    add_workers,
    count,
    deprecated_action,
    resolved_device,
)
from .engine.config import ConfigError, read_config_file
from .engine.loop import fit
from .engine.task import Task
from .errors import MambaoutError
from .registry import get_model_spec, list_models, weights_location
from .study import PRESETS as _STUDY_PRESETS
from .study.plan import STUDY_SET
from .tasks.classification.config import TrainConfig
from .tasks.classification.task import ClassificationTask
from .tasks.detection.task import DetectionTask
from .tasks.segmentation.task import SegmentationTask


class UsageError(MambaoutError, ValueError):
    """Options that do not go together."""


# errors of the package (each with its exit status, `errors.py`) and of the user's files: a message, no traceback
EXPECTED_ERRORS = (MambaoutError, FileNotFoundError)


def _warn_untrained(args: argparse.Namespace, consequence: str) -> None:
    if not (args.checkpoint or args.pretrained):
        logging.getLogger("mambaout").warning("no --checkpoint or --pretrained: %s has random weights, %s",
                                              args.model, consequence)


def _print_errors(errors: Sequence[object]) -> None:
    """The inputs a command could not use, one line each on stderr (the command then exits 1)."""
    for error in errors:
        print(f"error: {error}", file=sys.stderr)


def _print_results(results: Sequence, as_json: bool) -> None:
    """A command's results (each with `format()` and `to_dict()`): as text, or as one JSON list with --json."""
    if as_json:
        print(json.dumps([result.to_dict() for result in results], indent=2))
    else:
        for result in results:
            print(result.format())


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
                url=weights_location(spec.pretrained_cfg),
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


def cmd_recipes(args: argparse.Namespace) -> int:
    from .recipes import show

    if any(c in args.pattern for c in "*?["):
        rows = show.table_rows(args.pattern)
        if not rows:
            print(f"no model matches {args.pattern!r}", file=sys.stderr)
            return 1
        print(json.dumps(rows, indent=2) if args.json else show.format_table(rows))
        return 0
    chosen, note = show.resolve(args.pattern)
    if args.json:
        print(show.as_json(chosen))
    elif args.yaml:
        print(show.as_yaml(chosen, note), end="")
    else:
        print(show.as_text(chosen, note))
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
    print(model_flops(args.model, size=args.img_size, batch=args.batch_size).format())
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .factory import create_model
    from .tasks.classification.predict import predict_files

    if args.onnx:
        return _predict_onnx(args)
    if not args.images:
        raise UsageError("predict needs a MODEL and at least one IMAGE (or --onnx FILE IMAGE...)")
    _warn_untrained(args, "its predictions mean nothing")
    model = create_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint, use_ema=args.use_ema)
    predictions, errors = predict_files(
        model,
        args.images,
        topk=args.topk,
        batch_size=args.batch_size,
        device=resolved_device(args.device),
        input_size=args.img_size,
        precision=args.precision,
        channels_last={"auto": "auto", "on": True, "off": False}[args.channels_last],
        fold_norms=not args.no_fold_norms,
        compile=args.compile,
    )
    _print_errors(errors)
    _print_results(predictions, args.json)
    return 1 if errors else 0


def cmd_train(args: argparse.Namespace) -> int:
    """Every training command: the task `_add_train_arguments` set, with its config from the parsed options."""
    result = fit(args.task(_config_from_args(args)))
    if result.best_metric is not None:
        print(f"best {args.eval_metric} {result.best_metric:.4f} at epoch {result.best_epoch}")
    print(f"checkpoints and logs: {result.output_dir}")
    return 0


def _config_from_args(args: argparse.Namespace):
    """The config of the command's task (set by `_add_train_arguments`) filled from the parsed options."""
    config_class = args.task.config_class
    return config_class(**{f.name: getattr(args, f.name) for f in config_class.fields()})


_TYPES = {"int": int, "float": float, "str": str}


def _add_train_arguments(p: argparse.ArgumentParser, task: type[Task], config_defaults: dict | None) -> None:
    """One option per field of the task's config (an EngineConfig: help and defaults live there); `-c config.yaml`
    supplies defaults. Every training command of the one engine (train, detect-train, segment-train) uses this."""
    p.set_defaults(func=cmd_train, task=task)
    p.add_argument("-c", "--config", help="YAML file of options (keys as the long options); the command line wins")
    _add_config_options(p, task.config_class)
    if config_defaults:
        p.set_defaults(**config_defaults)


def _add_config_options(p, config_class: type, skip: tuple[str, ...] = (), only_given: bool = False) -> None:
    """An option per field of `config_class` but `skip`; with `only_given`, options not on the command line stay
    out of the parsed namespace (the study passes what the user set to every run)."""
    short = {"batch_size": ["-b"], "workers": ["-j"]}
    for f in config_class.fields():
        if f.name in skip:
            continue
        if f.name == "data_dir":
            p.add_argument("data_dir", help=f.metadata["help"])
            continue
        flags = [*short.get(f.name, []), "--" + f.name.replace("_", "-")]
        kind = str(f.type).replace(" | None", "")
        default_text = "the recipe's" if f.metadata.get("from_recipe") else f.default
        help_text = f"{f.metadata['help']} (default: {default_text})"
        default = argparse.SUPPRESS if only_given else f.default
        if f.metadata.get("image_size"):
            add_img_size(p, help_text, default=default, flag=flags[-1], dest=f.name, old=False)
        elif kind == "bool":  # --x / --no-x, except for options that are negative already (--no-aug)
            action = "store_true" if f.name.startswith("no_") else argparse.BooleanOptionalAction
            p.add_argument(*flags, dest=f.name, action=action, default=default, help=f.metadata["help"])
        elif kind.startswith("list["):
            item = _TYPES[kind[5:-1]]
            p.add_argument(*flags, dest=f.name, type=item, nargs=f.metadata.get("nargs", "+"), default=default,
                           help=help_text)
        else:
            p.add_argument(*flags, dest=f.name, type=_TYPES[kind], default=default, help=help_text)


def cmd_study(args: argparse.Namespace) -> int:
    from .study import StudyConfig, run_study

    names = {f.name for f in TrainConfig.fields()} - set(STUDY_SET)
    options = {name: getattr(args, name) for name in names if hasattr(args, name)}
    given = dict(data_dir=args.data_dir, output=args.output, resume=args.resume, jobs=args.jobs,
                 first_seed=args.first_seed, bench_batch=args.bench_batch, bench_repeats=args.bench_repeats,
                 bench_precision=args.bench_precision, options=options)
    for key in ("models", "recipe", "seeds", "epochs", "img_size"):  # unset: the preset's (or the study's default)
        if getattr(args, key) is not None:
            given[key] = getattr(args, key)
    if args.preset is None and "models" not in given:
        raise UsageError("give --models M1 M2 ... or a --preset (mambaout study --help lists them)")
    result = run_study(StudyConfig.from_preset(args.preset, **given))
    if result is not None:
        print(result.markdown)
        print("wrote " + ", ".join(str(path) for path in result.files))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .tasks.classification.validate import validate

    _warn_untrained(args, "its accuracy means nothing")
    result = validate(
        args.data_dir,
        args.model,
        checkpoint=args.checkpoint,
        pretrained=args.pretrained,
        batch_size=args.batch_size,
        split=args.split,
        workers=args.workers,
        device=args.device,
        input_size=args.img_size,
        use_ema=args.use_ema,
        precision=args.precision,
        channels_last=args.channels_last,
    )
    if args.json:
        print(json.dumps({"model": args.model, "data": args.data_dir, "split": args.split, **vars(result)}, indent=2))
    else:
        print(f"{args.model} on {args.data_dir} ({args.split}): {result.format()}")
    return 0


def cmd_erf(args: argparse.Namespace) -> int:
    from .analysis.erf import save_erf
    from .factory import create_model

    _warn_untrained(args, "its ERF is an untrained network's")
    model = create_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint, use_ema=args.use_ema)
    report = save_erf(
        model,
        args.output or f"erf_{args.model}.png",
        images=args.images,
        size=args.img_size,
        num_images=args.num_images,
        stage=args.stage,
        device=resolved_device(args.device),
    )
    print(report.format())
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from .analysis.benchmark import format_table, run_benchmark

    if args.img_size and args.sizes:
        raise UsageError("give --img-size (one input) or --sizes (a sweep of squares), not both")
    result = run_benchmark(
        args.models,
        [args.img_size] if args.img_size else args.sizes or [224],
        batch=args.batch_size,
        precision=args.precision,
        mode=args.mode,
        device=resolved_device(args.device),
        channels_last=args.channels_last,
        compile=args.compile,
        repeats=args.repeats,
        warmup=args.warmup,
        timeout=args.timeout,
        scan_backend=args.scan_backend,
        threads=args.threads,
        memory_limit_mb=args.memory_limit,
        out=args.output,
    )
    print(format_table(result))
    print("wrote " + ", ".join(str(path) for path in result.files))
    return 0


def cmd_segment_data(args: argparse.Namespace) -> int:
    from .data.synthetic_segmentation import write_segmentation_dataset

    height, width = args.img_size
    root = write_segmentation_dataset(args.out, args.train_images, args.val_images, (width, height), args.seed)
    print(f"wrote a generated dataset in ADE20K's layout to {root}; train on it with e.g.\n"
          f"  mambaout segment-train {root} --backbone mambaout_femto --iterations 200 --iters-per-epoch 100 "
          "--warmup-iters 20 -b 8 --lr 1e-3 --img-scale 128 64 --crop-size 64 --channels 128 "
          "--aux-channels 64")
    return 0


def cmd_segment_eval(args: argparse.Namespace) -> int:
    from .tasks.segmentation.task import evaluate_checkpoint

    report = evaluate_checkpoint(args.data_dir, args.checkpoint, mode=args.mode, multi_scale=args.multi_scale,
                                 flip=args.flip, split=args.split, device=args.device, workers=args.workers,
                                 amp=args.amp, use_ema=args.use_ema)
    if not report.main_process:
        return 0
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from .tasks.segmentation.inference import MULTI_SCALE_RATIOS, InferenceSettings, load_segmenter, segment_files

    model, meta = load_segmenter(args.checkpoint, use_ema=args.use_ema)
    settings = InferenceSettings(args.mode, tuple(meta["img_scale"]), MULTI_SCALE_RATIOS if args.multi_scale else
                                 (1.0,), args.flip, meta["crop_size"], meta["stride"])
    done, errors = segment_files(model, args.images, args.output, meta["class_names"], settings, args.device)
    _print_errors(errors)
    _print_results(done, as_json=False)
    return 1 if errors else 0


def cmd_detect_data(args: argparse.Namespace) -> int:
    from .data.synthetic_coco import write_coco_dataset

    height, width = args.img_size
    root = write_coco_dataset(args.out, args.train_images, args.val_images, (width, height), args.seed)
    print(f"wrote a generated instance-segmentation dataset in COCO's format to {root}; train on it with e.g.\n"
          f"  mambaout detect-train {root} --backbone mambaout_femto --img-scale 128 96 -b 4 --lr 4e-4 "
          "--warmup-iters 10 --epochs 6 --lr-steps 4 5 --fpn-channels 64 --box-head-dim 256 --mask-head-channels 64 "
          "--rpn-post-nms-train 200 --box-batch-size-per-image 64")
    return 0


def cmd_detect_eval(args: argparse.Namespace) -> int:
    from .tasks.detection.task import evaluate_checkpoint

    report = evaluate_checkpoint(args.data_dir, args.checkpoint, split=args.split, out=args.output, device=args.device,
                                 workers=args.workers, batch_size=args.batch_size, amp=args.amp,
                                 use_ema=args.use_ema)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from .tasks.detection.model import load_detector
    from .tasks.detection.predict import detect_files

    model, meta = load_detector(args.checkpoint, use_ema=args.use_ema, box_score_thresh=args.score_threshold)
    done, errors = detect_files(model, args.images, meta["class_names"], args.output, args.score_threshold,
                                args.device)
    _print_errors(errors)
    _print_results(done, args.json)
    return 1 if errors else 0


def _predict_onnx(args: argparse.Namespace) -> int:
    from .apps.onnx_predict import predict_onnx_files

    images = [args.model, *args.images]  # with --onnx there is no MODEL: every positional is an image
    predictions, errors = predict_onnx_files(args.onnx, images, topk=args.topk)
    _print_errors(errors)
    _print_results(predictions, args.json)
    return 1 if errors else 0


def cmd_export(args: argparse.Namespace) -> int:
    from .apps.export import export_model
    from .factory import create_model

    _warn_untrained(args, "the file holds them")
    model = create_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint)
    report = export_model(model, args.format, args.output, args.img_size, dynamic_batch=not args.fixed_batch,
                          verify_output=not args.no_verify)
    print(report.format_lines())
    return 0


def cmd_push_to_hub(args: argparse.Namespace) -> int:
    from .apps.push_to_hub import model_card, push_to_hub, read_release, save_for_hub

    release = read_release(args.run)
    card = model_card(release, args.repo)
    if args.local_dir:
        print(f"wrote {save_for_hub(release.model, args.local_dir, card)} (config.json, model.safetensors, README.md)")
        return 0
    url = push_to_hub(release.model, args.repo, card=card, token=args.token, private=args.private,
                      revision=args.revision, commit_message=args.message)
    print(f"pushed {release.source} to {url}; load it with create_model('hf-hub:{args.repo}')")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .apps.demo import launch_demo

    launch_demo(model=args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, host=args.host,
               port=args.port, checkpoint_dir=args.checkpoint_dir, share_host=args.allow_remote,
               input_size=args.img_size)
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from .apps.quickstart import run_quickstart

    changes = {"epochs": args.epochs} if args.epochs else {}
    print(run_quickstart(args.output, **changes).format())
    return 0


def build_parser(config_defaults: dict[str, dict] | None = None) -> argparse.ArgumentParser:
    """The parser; `config_defaults` maps a training command to the options its `-c` file gives."""
    config_defaults = config_defaults or {}
    parser = argparse.ArgumentParser(prog="mambaout", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not only its message")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list registered models with published params, MACs, top-1, weights")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern, e.g. 'mambaout_*'")
    add_json(p)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("recipes", help="each model's official training recipe, with a source per value")
    p.add_argument("pattern", nargs="?", default="*",
                   help="a model or recipe name (the whole recipe) or a shell-style pattern (a table)")
    shown = p.add_mutually_exclusive_group()
    add_json(shown, "JSON: train's option names, global_batch_size, sources")
    shown.add_argument("--yaml", action="store_true",
                       help="a YAML file `train --config` reads, one value a line with its source as comment")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("flops", help="params and MACs per stage, counted with torch's FlopCounterMode")
    p.add_argument("model", nargs="?")
    p.add_argument("--transformer", action="store_true", help="Eq. 6 of the paper for one Transformer block")
    p.add_argument("--dim", type=int, help="with --transformer: the token width D")
    p.add_argument("--tokens", type=int, help="with --transformer: the sequence length L")
    p.add_argument("--mlp-ratio", type=float, default=4.0)
    add_img_size(p, "input size: one number (square) or H W", default=(224, 224))
    add_batch_size(p, 1, old="--batch")
    p.set_defaults(func=cmd_flops)

    p = sub.add_parser("predict", help="top-k classes for image files")
    p.add_argument("model", help="registered model name (with --onnx: the first image)")
    p.add_argument("images", nargs="*")
    p.add_argument("--onnx", metavar="FILE", help="predict with an exported ONNX file on ONNX Runtime (no MODEL)")
    add_weights(p)
    p.add_argument("--topk", type=int, default=5)
    add_batch_size(p, 16)
    add_img_size(p)
    add_device(p)
    add_precision(p, ("auto", "fp32", "bf16", "fp16"), "auto",
                  "autocast; auto: bf16 on GPUs and on CPUs with AVX512-BF16/AMX, else fp32")
    add_channels_last(p, auto=True)
    p.add_argument("--no-fold-norms", action="store_true", help="keep LayerNorm affines out of the next Linear")
    add_compile(p, "torch.compile the model (pays off for many images)")
    add_json(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("train", help="train on a folder dataset with the model's official recipe (torchrun for DDP)")
    _add_train_arguments(p, ClassificationTask, config_defaults.get("train"))

    p = sub.add_parser(
        "study", help="the paper's comparison on any dataset: train models x seeds, measure, report (study.md)",
        description="Train every model (with every seed) as an ordinary `train` run in OUTPUT/runs/, measure params, "
        "MACs and inference images/s side by side, and write study.csv, study.json, study.md and plots. "
        "Presets: " + "; ".join(f"{name}: {preset.title}" for name, preset in _STUDY_PRESETS.items()) + ". "
        "Any other train option (--lr, --batch-size, --amp, ...) is passed to every run.",
    )
    p.add_argument("data_dir", nargs="?", metavar="DATA", help="dataset in ImageNet's layout (DATA/train, DATA/val); "
                   "the smoke preset writes a generated one when left out")
    p.add_argument("--preset", help="the paper's experiments: hypothesis1[-femto|-tiny|-small|-base], "
                   "causal[-tiny|-small|-base], smoke")
    add_models(p, "models to compare (default: the preset's)")
    p.add_argument("--recipe", help="'own': each model its authors' recipe (default); a recipe name: every model "
                   "that one (the controlled comparison)")
    p.add_argument("--seeds", type=count(1), help="runs per model with seeds first-seed, first-seed+1, ... "
                   "(mean and standard deviation; default 1)")
    p.add_argument("--first-seed", type=int, default=42, help="the first run's seed")
    add_epochs(p, "epochs of every run; warmup and cooldown shrink in proportion unless set (default: each recipe's)")
    add_img_size(p, "training and validation input size: one number (a square) or H W (default 224)", old=False)
    add_output(p, "output/study", "study folder (runs in OUTPUT/runs/)")
    p.add_argument("--resume", choices=["auto"], help="continue the study in OUTPUT: finished runs are kept, the "
                   "interrupted one resumes from its newest checkpoint")
    p.add_argument("--jobs", type=count(1), default=1, help="runs trained at the same time on this machine, "
                   "each with its share of the cores")
    p.add_argument("--bench-batch", type=count(1), default=32, help="batch of the images/s measurement")
    p.add_argument("--bench-repeats", type=count(1), default=5, help="timed batches per model")
    p.add_argument("--bench-precision", choices=["fp32", "bf16", "fp16"],
                   help="precision of the images/s measurement (default: fp32 on a CPU, bf16 on a GPU)")
    _add_config_options(p.add_argument_group("options of every run (train's; default: the recipe's)"),
                        TrainConfig, skip=STUDY_SET, only_given=True)
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("validate", help="top-1/top-5 accuracy on DATA_DIR/<split>/<class>/<images> (ImageNet layout)")
    p.add_argument("data_dir", metavar="DATA_DIR")
    add_model(p, required=True)
    add_weights(p)
    add_batch_size(p, 64)
    add_split(p, "val", "the folder under DATA_DIR to evaluate")
    add_workers(p, 4)
    add_device(p)
    add_img_size(p)
    add_precision(p, ("fp32", "auto", "bf16", "fp16"), "fp32",
                  "fp32 (default) reproduces published accuracy; auto: bf16 where supported")
    add_channels_last(p)
    add_json(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("erf", help="effective receptive field heat map (RepLKNet's method) as PNG + .npy")
    p.add_argument("model")
    add_weights(p)
    p.add_argument("--images", metavar="DIR", help="folder of images (default: generated ones)")
    add_img_size(p)
    p.add_argument("--num-images", type=count(1), default=50, metavar="N", help="images to average over")
    p.add_argument("--stage", type=int, default=-1, metavar="INDEX", help="feature map (stage, or block of DeiT/Vim)")
    add_output(p, None, "heat map path (FILE.png; default erf_MODEL.png); the raw map goes beside it as .npy",
               old=True)
    add_device(p)
    p.set_defaults(func=cmd_erf)

    p = sub.add_parser("benchmark", help="images/s, latency and peak memory per model and size, side by side")
    add_models(p, "registered names, or timm:<name> for timm baselines", required=True)
    add_img_size(p, "input size: one number (square) or H W (default 224)")
    p.add_argument("--sizes", nargs="+", type=count(1), metavar="SIZE", help="a sweep of square input sides")
    add_batch_size(p, 1, old="--batch")
    add_precision(p, ("fp32", "bf16", "fp16"), "fp32")
    p.add_argument("--mode", choices=["infer", "train"], default="infer", help="train: forward, backward, AdamW step")
    add_device(p)
    add_channels_last(p)
    add_compile(p, "torch.compile the model (compilation is in the warm-up)")
    p.add_argument("--repeats", type=count(1), default=5, help="timed batches per case (median, min/max, IQR)")
    p.add_argument("--warmup", type=count(0), default=2, help="untimed batches first")
    p.add_argument("--timeout", type=float, default=600, metavar="S", help="seconds per case before it is killed")
    p.add_argument("--threads", type=count(1), help="CPU threads (default: torch's, one per core)")
    p.add_argument("--scan-backend", default="auto", help="selective-scan backend of the SSM models")
    p.add_argument("--memory-limit", type=float, metavar="MB", help="most memory a case may add (emulates less)")
    add_output(p, "benchmark_results", "folder for results.json, results.csv and PNGs", old=True)
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("export", help="ONNX (dynamo exporter) or torch.export .pt2 file, verified against eager")
    p.add_argument("model")
    add_weights(p, ema=False)
    p.add_argument("--format", choices=("onnx", "pt2"), default="onnx")
    add_img_size(p)
    p.add_argument("--fixed-batch", action="store_true", help="pin the batch to 1 (default: any batch size, as "
                   "timm's onnx_export.py)")
    p.add_argument("--dynamic-batch", action=deprecated_action("the default (a dynamic batch)", "store_true"),
                   help=argparse.SUPPRESS)
    add_output(p, None, "file to write (default: MODEL_HxW.FORMAT)")
    p.add_argument("--no-verify", action="store_true", help="skip running the file against eager PyTorch")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("push-to-hub", help="a trained model to the Hugging Face Hub in timm's layout, with a card",
                       description="Upload config.json, model.safetensors and a model card (recipe, validation "
                       "result) to REPO, so that create_model('hf-hub:REPO') and, after `import mambaout`, "
                       "timm.create_model('hf-hub:REPO', pretrained=True) load it.")
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="a training run folder (its best.pth, else last.pth) "
                   "or a checkpoint")
    p.add_argument("repo", metavar="REPO", help="Hub repository ORG/NAME (created if missing)")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or `hf auth login`'s)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", help="branch to push to (default: main)")
    p.add_argument("--message", default="Add model", help="commit message")
    p.add_argument("--local-dir", metavar="DIR", help="write the repository's files to DIR instead of uploading")
    p.set_defaults(func=cmd_push_to_hub)

    p = sub.add_parser("demo", help="gradio web demo (default: the model `make quickstart` trains), on 127.0.0.1")
    add_model(p, "registered model name (default: the quickstart checkpoint's)")
    add_weights(p, ema=False, checkpoint_help="weights file (default: quickstart_output's best.pth)")
    p.add_argument("--checkpoint-dir", help="folder whose checkpoints the model picker offers (default: quickstart's)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (others need --allow-remote)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--allow-remote", action="store_true", help="allow --host to be an interface other machines reach")
    add_img_size(p, "input size: one number (square) or H W (default: the training run's img_size from "
                 "args.yaml, else the model's)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("quickstart", help="generate a dataset, train a small MambaOut on it, validate, predict")
    add_output(p, "quickstart_output", "folder for the data, checkpoints and logs", old=True)
    add_epochs(p, "training epochs (default: configs/quickstart.yaml's)")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("segment-data", help="write a generated segmentation dataset in ADE20K's layout")
    add_generated_dataset(p, "folder to write (images/, annotations/, classes.txt)", 64, 16, (64, 96))
    p.set_defaults(func=cmd_segment_data)

    p = sub.add_parser("segment-train", help="train UperNet on ADE20K-format data (paper recipe; torchrun for DDP)")
    _add_train_arguments(p, SegmentationTask, config_defaults.get("segment-train"))

    for name, text in (("segment-eval", "mIoU/mAcc/aAcc of a segment-train checkpoint (torchrun for many processes)"),
                       ("segment", "colour-coded label maps and overlays for image files")):
        p = sub.add_parser(name, help=text)
        if name == "segment-eval":
            p.add_argument("data_dir", metavar="DATA_DIR")
            add_split(p, None, "split to evaluate (default: validation / val)")
            add_workers(p, 2)
            add_eval_amp(p)
            add_json(p)
            p.set_defaults(func=cmd_segment_eval)
        else:
            p.add_argument("images", nargs="+")
            add_output(p, "segment_output", "folder for <image>_labels.png, <image>_overlay.png", old=True)
            p.set_defaults(func=cmd_segment)
        add_trained_checkpoint(p, "segment-train")
        p.add_argument("--mode", choices=["whole", "slide"], default="whole", help="whole image or sliding window")
        p.add_argument("--multi-scale", action="store_true", help="ratios 0.5-1.75 of the test scale, averaged")
        p.add_argument("--flip", action="store_true", help="add horizontally flipped inputs")
        add_device(p)

    p = sub.add_parser("detect-data", help="write a generated instance-segmentation dataset in COCO's format")
    add_generated_dataset(p, "folder to write (annotations/instances_{train,val}.json, train/, val/)", 32, 8, (96, 128))
    p.set_defaults(func=cmd_detect_data)

    p = sub.add_parser("detect-train", help="train Mask R-CNN on COCO-format data (paper recipe; torchrun for DDP)")
    _add_train_arguments(p, DetectionTask, config_defaults.get("detect-train"))

    p = sub.add_parser("detect-eval", help="COCO box/mask AP of a detect-train checkpoint (torchrun: many processes)")
    p.add_argument("data_dir", metavar="DATA_DIR")
    add_split(p, None, "split to evaluate (default: val2017, else val)")
    add_output(p, None, "folder for results.bbox.json, results.segm.json (COCO's format), metrics.json", old=True)
    add_workers(p, 2)
    add_batch_size(p, 2, "images per batch and process")
    add_eval_amp(p)
    add_json(p)
    p.set_defaults(func=cmd_detect_eval)

    p = sub.add_parser("detect", help="draw the boxes, masks and labels a detect-train checkpoint finds in images")
    p.add_argument("images", nargs="+")
    add_output(p, "detect_output", "folder for <image>_detections.png", old=True)
    p.add_argument("--score-threshold", type=float, default=0.5, help="lowest score drawn and listed")
    add_json(p)
    p.set_defaults(func=cmd_detect)
    for p in (sub.choices["detect-eval"], sub.choices["detect"]):
        add_trained_checkpoint(p, "detect-train")
        add_device(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "config", None):  # a training command's -c file: its options are defaults, flags still win
        try:
            defaults = read_config_file(args.config, args.task.config_class)
            args = build_parser({args.command: defaults}).parse_args(argv)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr
    )
    try:
        return args.func(args)
    except EXPECTED_ERRORS as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)


if __name__ == "__main__":
    sys.exit(main())

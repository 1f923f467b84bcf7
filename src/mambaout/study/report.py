"""A study's results: one row per run read back from its run folder, the mean and spread per model, the
differences the comparisons ask for, written as study.csv, study.json, study.md and plots."""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml

from ..checkpoints import atomic_write
from ..data.sizes import hxw, size_name
from ..engine.run_log import ARGS, SUMMARY
from ..registry import get_model_spec
from .plan import ModelFacts, Run, StudyConfig

MEASURES = ("top1", "top5", "val_loss", "best_top1")
RUN_COLUMNS = (
    "model", "family", "seed", "status", "recipe", "recipe_is_own", "epochs", "img_size", "params_m", "gmacs",
    "images_per_s", "top1", "top5", "val_loss", "best_top1", "best_epoch", "train_images_per_s", "train_seconds",
    "published_top1", "published_params_m", "published_gmacs", "run_dir",
)
COLUMNS = (*RUN_COLUMNS, "seeds", *(f"{m}_std" for m in MEASURES))
TIMING = ("images_per_s", "train_images_per_s", "train_seconds")  # what differs from one machine (or run) to the next


@dataclass
class StudyResult:
    runs: list[dict[str, Any]]
    models: list[dict[str, Any]]  # seed 'mean': the mean over seeds, with *_std
    comparisons: list[dict[str, Any]]
    meta: dict[str, Any]
    files: list[Path] = field(default_factory=list)
    markdown: str = ""


def run_row(run: Run, facts: ModelFacts, images_per_s: float | None, record: dict[str, Any] | None) -> dict:
    """One run's result from its folder: the released weights' last validation (the EMA's when the recipe releases
    the EMA), the best epoch's, and the training speed."""
    spec = get_model_spec(run.model)
    args = yaml.safe_load((run.directory / ARGS).read_text())
    epochs = read_summary(run.directory)
    prefix = "ema_" if args["release_weights"] == "ema" else ""

    def values(key: str) -> list[float]:
        return [float(row[key]) for row in epochs if row.get(key) not in (None, "")]

    top1 = values(f"{prefix}val_top1")
    best = max(range(len(top1)), key=top1.__getitem__) if top1 else None
    last = epochs[-1] if epochs else {}
    return dict(
        model=run.model, family=facts.family, seed=run.seed, status=(record or {}).get("status", "unfinished"),
        recipe=args["recipe"], recipe_is_own=args["recipe_is_own"], epochs=len(epochs), img_size=args["img_size"],
        params_m=facts.params / 1e6, gmacs=facts.macs / 1e9, images_per_s=images_per_s,
        top1=_number(last.get(f"{prefix}val_top1")), top5=_number(last.get(f"{prefix}val_top5")),
        val_loss=_number(last.get(f"{prefix}val_loss")), best_top1=top1[best] if best is not None else None,
        best_epoch=int(epochs[best]["epoch"]) if best is not None else None,
        train_images_per_s=statistics.median(values("train_images_per_second")) if epochs else None,
        train_seconds=sum(values("seconds")), published_top1=spec.published.top1,
        published_params_m=spec.published.params_m, published_gmacs=spec.published.gmacs,
        run_dir=str(run.directory),
    )


def read_summary(directory: Path) -> list[dict[str, str]]:
    """The epochs a run folder's summary.csv records (none for a run that stopped in its first epoch)."""
    path = directory / SUMMARY
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _number(text: str | None) -> float | None:
    return None if text in (None, "") else float(text)


def model_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model: the mean of each measure over its seeds and the sample standard deviation (none for one seed)."""
    rows = []
    for model in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == model]
        row = dict(mine[0], seed="mean", seeds=len(mine), best_epoch=None, run_dir=None, status=_status(mine))
        for key in (*MEASURES, "train_images_per_s", "train_seconds"):
            values = [r[key] for r in mine if r[key] is not None]
            row[key] = statistics.fmean(values) if values else None
            if key in MEASURES:
                row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
        rows.append(row)
    return rows


def _status(runs: list[dict[str, Any]]) -> str:
    statuses = sorted({r["status"] for r in runs})
    return statuses[0] if len(statuses) == 1 else "/".join(statuses)


def comparison_rows(config: StudyConfig, models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each other model minus its reference: top-1 difference, its standard error over the seeds, published gap."""
    by_name = {row["model"]: row for row in models}
    rows = []
    for comparison in config.comparisons:
        ref = by_name[comparison.reference]
        for name in comparison.others:
            other = by_name[name]
            delta = None if None in (other["top1"], ref["top1"]) else other["top1"] - ref["top1"]
            spread = None
            if delta is not None and ref["top1_std"] is not None and other["top1_std"] is not None:
                spread = math.sqrt(other["top1_std"] ** 2 / other["seeds"] + ref["top1_std"] ** 2 / ref["seeds"])
            published = (None if None in (other["published_top1"], ref["published_top1"])
                         else other["published_top1"] - ref["published_top1"])
            rows.append(dict(reference=ref["model"], model=name, delta_top1=delta, delta_top1_se=spread,
                             published_delta_top1=published, gmacs_ratio=other["gmacs"] / ref["gmacs"]))
    return rows


def write_report(config: StudyConfig, runs: list[Run], facts: dict[str, ModelFacts], benchmark: dict[str, Any],
                 classes: list[str], records: dict[str, dict | None]) -> StudyResult:
    from .plots import plot_top1_against, plot_validation_curves  # matplotlib only when writing

    speed = {r["model"]: r["images_per_s"] for r in benchmark["results"] if r["status"] == "ok"}
    rows = [run_row(run, facts[run.model], speed.get(run.model), records[run.name]) for run in runs]
    models = model_rows(rows)
    meta = dict(
        data_dir=str(config.data_dir), classes=len(classes), preset=config.preset, recipe=config.recipe,
        seeds=config.seeds, epochs=config.epochs, img_size=config.img_size, device=benchmark["meta"]["device"],
        device_name=benchmark["meta"]["device_name"], benchmark={k: benchmark["meta"][k] for k in
                                                                  ("batch", "precision", "repeats", "threads")},
        torch=torch.__version__, python=platform.python_version(),
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    result = StudyResult(rows, models, comparison_rows(config, models), meta)
    root = config.root
    result.markdown = markdown(result, config)
    files = {
        "study.csv": _csv([*rows, *models]),
        "study.json": json.dumps(dict(meta=meta, runs=rows, models=models, comparisons=result.comparisons),
                                 indent=2),
        "study.md": result.markdown,
    }
    for name, text in files.items():
        atomic_write(root / name, lambda tmp, text=text: Path(tmp).write_text(text))
    result.files = [root / name for name in files]
    size = hxw(config.img_size)
    result.files += [
        plot_top1_against(models, "gmacs", f"GMACs at {size} (counted)", root / "top1_vs_macs.png", meta),
        plot_top1_against(models, "images_per_s", f"inference images/s at {size} ({meta['device_name']})",
                          root / "top1_vs_speed.png", meta),
        plot_validation_curves(runs, root / "validation_curves.png", meta),
    ]
    return result


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _cell(value: Any, fmt: str, spread: Any = None) -> str:
    if value is None:
        return "-"
    return format(value, fmt) + ("" if spread is None else f" ± {format(spread, fmt.lstrip('+'))}")


def markdown(result: StudyResult, config: StudyConfig) -> str:
    """study.md: what was run, the measured table beside the published ImageNet numbers, the differences."""
    meta = result.meta
    recipe = "each model its authors' recipe" if config.recipe == "own" else f"every model recipe `{config.recipe}`"
    epochs = "each recipe's epochs" if config.epochs is None else f"{config.epochs} epochs"
    lines = [
        f"# Study{f' `{config.preset}`' if config.preset else ''}: {', '.join(config.models)}",
        "",
        f"Data `{meta['data_dir']}` ({meta['classes']} classes), {hxw(meta['img_size'])}, {recipe}, "
        f"{epochs}, {config.seeds} seed{'s' if config.seeds > 1 else ''} (mean ± standard deviation). Inference "
        f"speed: {meta['device_name']}, batch {meta['benchmark']['batch']}, {meta['benchmark']['precision']}, "
        f"{meta['benchmark']['threads']} threads, all models in one sweep. Top-1 is the last epoch's, of the "
        "weights each recipe releases.",
        "",
        f"| model | recipe | params (M) | GMACs @{size_name(meta['img_size'])} | images/s | top-1 (%) | top-5 (%) | "
        "best top-1 | ImageNet top-1 (published) | GMACs @224 (published) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in result.models:
        status = "" if row["status"] == "ok" else f" ({row['status']})"
        lines.append(
            f"| {row['model']}{status} | {row['recipe']} | {row['params_m']:.2f} | {row['gmacs']:.3g} | "
            f"{_cell(row['images_per_s'], '.1f')} | {_cell(row['top1'], '.2f', row['top1_std'])} | "
            f"{_cell(row['top5'], '.2f', row['top5_std'])} | {_cell(row['best_top1'], '.2f', row['best_top1_std'])} | "
            f"{_cell(row['published_top1'], '.1f')} | {_cell(row['published_gmacs'], '.1f')} |"
        )
    if result.comparisons:
        lines += [
            "",
            "Differences to the reference of each comparison (± standard error of the difference over the seeds):",
            "",
            "| reference | model | Δ top-1 here | Δ top-1 published (ImageNet) | MACs ratio |",
            "|---|---|--:|--:|--:|",
        ]
        for row in result.comparisons:
            lines.append(
                f"| {row['reference']} | {row['model']} | {_cell(row['delta_top1'], '+.2f', row['delta_top1_se'])} "
                f"| {_cell(row['published_delta_top1'], '+.1f')} | {row['gmacs_ratio']:.2f} |"
            )
    lines += ["", "![top-1 against MACs](top1_vs_macs.png) ![top-1 against images/s](top1_vs_speed.png)",
              "", "![validation curves](validation_curves.png)", ""]
    return "\n".join(lines)

"""A study's plots: top-1 against MACs and against measured images/s (the paper's Figure 1(b) on the user's
data), and every run's validation curve overlaid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure

from ..data.sizes import hxw
from ..engine.run_log import ARGS
from .plan import Run
from .report import read_summary


def _title(meta: dict[str, Any]) -> str:
    return f"{meta['data_dir']}, {hxw(meta['img_size'])} px, {meta['seeds']} seed(s), {meta['classes']} classes"


def plot_top1_against(models: Sequence[dict[str, Any]], key: str, xlabel: str, path: Path,
                      meta: dict[str, Any]) -> Path:
    """Mean top-1 per model (error bar: the standard deviation over seeds) against `key`, one colour per family."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    shown = [row for row in models if row[key] is not None and row["top1"] is not None]
    for family in dict.fromkeys(row["family"] for row in shown):
        mine = [row for row in shown if row["family"] == family]
        ax.errorbar([r[key] for r in mine], [r["top1"] for r in mine], yerr=[r["top1_std"] or 0 for r in mine],
                    fmt="o", capsize=3, label=family)
    for row in shown:
        ax.annotate(row["model"], (row[key], row["top1"]), textcoords="offset points", xytext=(4, 4),
                    fontsize="x-small")
    if not shown:
        ax.text(0.5, 0.5, "no finished run", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 (%), mean over seeds")
    ax.set_title(_title(meta), fontsize="small")
    ax.grid(True, alpha=0.3)
    if shown:
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return path


def plot_validation_curves(runs: Sequence[Run], path: Path, meta: dict[str, Any]) -> Path:
    """Validation top-1 against epoch of every run (of the weights its recipe releases), one colour per model."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    colours = {model: f"C{k % 10}" for k, model in enumerate(dict.fromkeys(run.model for run in runs))}
    labelled = set()
    for run in runs:
        prefix = "ema_" if yaml.safe_load((run.directory / ARGS).read_text())["release_weights"] == "ema" else ""
        points = [(int(r["epoch"]), float(r[f"{prefix}val_top1"])) for r in read_summary(run.directory)
                  if r.get(f"{prefix}val_top1") not in (None, "")]
        label = None if run.model in labelled else run.model
        labelled.add(run.model)
        ax.plot([p[0] for p in points], [p[1] for p in points], color=colours[run.model], alpha=0.8, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(_title(meta), fontsize="small")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return path

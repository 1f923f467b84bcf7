"""The benchmark's figures: images/s and memory against resolution, published top-1 against MACs at 224."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # a Figure renders with Agg by itself: no pyplot, no global backend

from ..registry import get_model_spec
from .benchmark_case import TIMM_PREFIX
from .flops import model_flops


def _resolution(row: dict[str, Any]) -> float:
    return math.sqrt(row["height"] * row["width"])  # the side for square inputs


def _series(rows: Sequence[dict[str, Any]], key: str) -> dict[str, tuple[list[float], list[float], str]]:
    """Per model: resolutions and values of the cases that ran, and a note on the ones that did not."""
    series: dict[str, tuple[list[float], list[float], str]] = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        ok = sorted((_resolution(r), r[key]) for r in rows if r["model"] == model and r["status"] == "ok")
        failed = [r for r in rows if r["model"] == model and r["status"] != "ok"]
        note = ""
        if failed:
            first = min(failed, key=_resolution)
            note = f" ({first['status']} at {first['height']}x{first['width']})"
        series[model] = ([x for x, _ in ok], [y for _, y in ok], note)
    return series


def _plot_lines(ax, rows: Sequence[dict[str, Any]], key: str, ylabel: str) -> None:
    positive = False
    for model, (xs, ys, note) in _series(rows, key).items():
        ax.plot(xs, ys, marker="o", label=model + note)
        positive = positive or any(y > 0 for y in ys)
    ax.set_xlabel("input resolution (px)")
    ax.set_ylabel(ylabel)
    if positive:  # a log axis needs a positive value (a model whose timed batches added no memory has none)
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")


def _title(meta: dict[str, Any]) -> str:
    return (
        f"{meta['mode']}, batch {meta['batch']}, {meta['precision']}, {meta['device_name']}, "
        f"median of {meta['repeats']}"
    )


def plot_throughput(rows: Sequence[dict[str, Any]], meta: dict[str, Any], path: Path) -> Path:
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    _plot_lines(ax, rows, "images_per_s", "images / s")
    ax.set_title(_title(meta), fontsize="medium")
    fig.savefig(path, dpi=120)
    return path


def plot_memory(rows: Sequence[dict[str, Any]], meta: dict[str, Any], path: Path) -> Path:
    kind = "GPU max allocated" if meta["device"].startswith("cuda") else "peak RSS"
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    peak_ax, increase_ax = fig.subplots(1, 2)
    _plot_lines(peak_ax, rows, "peak_memory_mb", f"{kind} (MiB)")
    _plot_lines(increase_ax, rows, "memory_increase_mb", f"{kind} added by the timed batches (MiB)")
    fig.suptitle(_title(meta), fontsize="medium")
    fig.savefig(path, dpi=120)
    return path


def plot_accuracy_vs_macs(models: Sequence[str], path: Path) -> Path | None:
    """Published ImageNet top-1 against GMACs at 224x224 for the registered models that have one (else no file)."""
    points = []
    for name in dict.fromkeys(models):
        if name.startswith(TIMM_PREFIX):  # baselines: no published number in our registry
            continue
        top1 = get_model_spec(name).published.top1
        if top1 is not None:
            points.append((name, get_model_spec(name).family, model_flops(name).macs / 1e9, top1))
    if not points:
        return None
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for family in dict.fromkeys(p[1] for p in points):
        mine = [p for p in points if p[1] == family]
        ax.scatter([p[2] for p in mine], [p[3] for p in mine], label=family, s=40)
    for name, _, gmacs, top1 in points:
        ax.annotate(name, (gmacs, top1), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    ax.set_xlabel("GMACs at 224x224 (counted)")
    ax.set_ylabel("published ImageNet-1k top-1 (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return path


def write_plots(rows: Sequence[dict[str, Any]], meta: dict[str, Any], out: Path) -> list[Path]:
    """throughput.png, memory.png and (when any model has a published top-1) accuracy_vs_macs.png."""
    paths = [plot_throughput(rows, meta, out / "throughput.png"), plot_memory(rows, meta, out / "memory.png")]
    accuracy = plot_accuracy_vs_macs([r["model"] for r in rows], out / "accuracy_vs_macs.png")
    return paths + ([accuracy] if accuracy else [])

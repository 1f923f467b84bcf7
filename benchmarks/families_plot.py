"""Published ImageNet top-1 of every family against MACs and against measured throughput (the MambaOut paper's
Figure 1(b), with speed added).

MACs are counted at 224x224 the way `mambaout flops` counts them (the selective scan by its formula), so every family
is measured with one rule; throughput comes from a `mambaout benchmark` run (its results.json, at one size). Models
without a published top-1 (the test variants) are left out.

    mambaout benchmark --models local_vim_tiny vim_tiny ... --sizes 224 --batch 8 --out bench
    python benchmarks/families_plot.py --results bench/results.json --out families.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.figure import Figure
from tqdm import tqdm

import mambaout
from mambaout.analysis.flops import model_flops

MARKERS = {"mambaout": "*", "vmamba": "s", "vim": "o", "vit": "^", "local_vim": "D", "local_vmamba": "P"}
COLORS = {
    f: f"C{i}" for i, f in enumerate(("mambaout", "vmamba", "vim", "vit", "local_vim", "local_vmamba", "plainmamba"))
}


def published_models() -> list[str]:
    """Every registered model with a published top-1 (test variants have none)."""
    return [name for name in mambaout.list_models() if mambaout.get_model_spec(name).published.top1 is not None]


def throughput_at(results: dict, size: int) -> dict[str, float]:
    """images/s per model from a benchmark results.json, at one input side (cases that ran)."""
    return {
        row["model"]: row["images_per_s"]
        for row in results["results"]
        if row["status"] == "ok" and row["height"] == row["width"] == size
    }


def _scatter(ax, points: list[tuple[str, str, float, float]], xlabel: str, log_x: bool = False) -> None:
    for family in dict.fromkeys(p[1] for p in points):
        mine = sorted((p for p in points if p[1] == family), key=lambda p: p[2])
        ax.plot(
            [p[2] for p in mine],
            [p[3] for p in mine],
            marker=MARKERS.get(family, "x"),
            color=COLORS.get(family),
            markersize=8 if family == "mambaout" else 6,
            linewidth=1,
            label=family,
        )
    for name, _, x, top1 in points:
        ax.annotate(name, (x, top1), textcoords="offset points", xytext=(4, 3), fontsize=6)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("published ImageNet-1k top-1 (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, help="a `mambaout benchmark` results.json (no speed panel without)")
    parser.add_argument("--size", type=int, default=224, help="the benchmark's input side to plot")
    parser.add_argument("--out", type=Path, default=Path("families.png"))
    args = parser.parse_args()

    names = published_models()
    macs = {name: model_flops(name).macs / 1e9 for name in tqdm(names, desc="counting MACs", disable=None)}
    top1 = {name: mambaout.get_model_spec(name).published.top1 for name in names}
    family = {name: mambaout.get_model_spec(name).family for name in names}
    speed = throughput_at(json.loads(args.results.read_text()), args.size) if args.results else {}
    speed = {name: ips for name, ips in speed.items() if name in top1}

    panels = 2 if speed else 1
    fig = Figure(figsize=(8 * panels, 6), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    _scatter(axes[0], [(n, family[n], macs[n], top1[n]) for n in names], "GMACs at 224x224 (counted, scan by formula)")
    if speed:
        meta = json.loads(args.results.read_text())["meta"]
        _scatter(
            axes[1],
            [(n, family[n], speed[n], top1[n]) for n in speed],
            f"images/s at {args.size}, batch {meta['batch']}, {meta['precision']}, {meta['device_name']}",
            log_x=True,
        )
    fig.savefig(args.out, dpi=130)
    table = [dict(model=n, family=family[n], gmacs=macs[n], top1=top1[n], images_per_s=speed.get(n)) for n in names]
    args.out.with_suffix(".json").write_text(json.dumps(table, indent=2))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()

"""The long-sequence study: images/s and memory from 224 to 1248 px, and where attention's quadratic cost overtakes.

MambaOut's Equation 6 puts the crossover of one Transformer block at L = (2 + r)·D tokens (6D for an MLP ratio
of 4): past it, Q·Kᵀ and A·V cost more than every linear layer together, and a linear-complexity token mixer
(Vim's SSM, or no mixer that grows faster than the pixels, as in MambaOut and VMamba) starts to pay. This script
measures that with the benchmark library (every case in a fresh process, images/s and peak memory) and puts the
prediction and the seed papers' claims beside the measurement:

- per size, each model's time per pixel relative to the smallest size, measured and predicted from its counted
  MACs (flat for linear-cost models, growing for DeiT);
- where DeiT's quadratic term overtakes its linear one, by Eq. 6 and as estimated from its measured time per pixel;
- where Vim overtakes the DeiT of the same width, against Vim's claim (2.8x faster than DeiT-Ti, 86.8% less GPU
  memory, at 1248x1248 on a GPU).

    python benchmarks/long_sequence.py                                    # CUDA: 224 ... 1248, batch 8
    python benchmarks/long_sequence.py --device cpu --sizes 224 384 512 768 --repeats 2 --timeout 300
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
from pathlib import Path

import torch
from matplotlib.figure import Figure

from mambaout import create_model
from mambaout.analysis.benchmark import BenchmarkResult, format_table, run_benchmark
from mambaout.analysis.transformer_flops import transformer_block_flops

MODELS = ("mambaout_tiny", "vmamba_tiny", "vim_tiny", "vim_small", "deit_tiny", "deit_small")
PAIRS = (("vim_tiny", "deit_tiny"), ("vim_small", "deit_small"))  # Vim against the DeiT of its width
VIM_CLAIM = dict(size=1248, speedup=2.8, memory_saving=0.868, pair=("vim_tiny", "deit_tiny"))
CLAIMS = (
    "Vim (Zhu et al. 2024, abstract and Fig. 1): Vim-Ti is 2.8x faster than DeiT-Ti and saves 86.8% GPU memory "
    "in batch inference on 1248x1248 images (an A800 GPU; DeiT without memory-efficient attention).",
    "MambaOut (Yu & Wang 2024, Eq. 6): one Transformer block's attention (4·D·L² FLOPs) outgrows its linear layers "
    "(24·D²·L) past L = 6D tokens, so ImageNet at 224 (L = 196) is a short-sequence task for every ViT width.",
)


def attention_crossover(name: str) -> dict:
    """Eq. 6's crossover for a ViT: tokens and the square input side whose patch grid reaches them."""
    with torch.device("meta"):
        model = create_model(name)
    dim = model.num_features
    mlp_ratio = model.blocks[0].mlp.fc1.out_features / dim
    tokens = transformer_block_flops(dim, 1, mlp_ratio).crossover_tokens
    return dict(
        model=name,
        dim=dim,
        mlp_ratio=mlp_ratio,
        patch=model.patch_size,
        tokens=tokens,
        side=model.patch_size * math.sqrt(tokens),
    )


def quadratic_over_linear(crossover: dict, side: int) -> float:
    tokens = (side // crossover["patch"]) ** 2 + 1  # the class token
    flops = transformer_block_flops(crossover["dim"], tokens, crossover["mlp_ratio"])
    return flops.quadratic / flops.linear


def study_rows(rows: list[dict], crossovers: dict[str, dict]) -> list[dict]:
    """One row per (model, size) with the derived columns of the study."""
    ok = {(r["model"], r["height"]): r for r in rows if r["status"] == "ok"}
    smallest = min(r["height"] for r in rows)
    table = []
    for r in rows:
        side, base = r["height"], ok.get((r["model"], smallest))
        row = dict(
            model=r["model"],
            size=side,
            status=r["status"],
            images_per_s=r["images_per_s"],
            latency_ms=r["latency_ms_median"],
            peak_memory_mb=r["peak_memory_mb"],
            memory_increase_mb=r["memory_increase_mb"],
            gmacs=r["gmacs"],
        )
        pixels = (side / smallest) ** 2
        if base and r["status"] == "ok":
            row["time_per_pixel_rel"] = r["latency_ms_median"] / base["latency_ms_median"] / pixels
            row["macs_per_pixel_rel"] = r["gmacs"] / base["gmacs"] / pixels
        if r["model"] in crossovers:
            row["eq6_quadratic_over_linear"] = quadratic_over_linear(crossovers[r["model"]], side)
            if "time_per_pixel_rel" in row:  # time = linear·(1 + q/l): the smallest size fixes the linear part
                q0 = quadratic_over_linear(crossovers[r["model"]], smallest)
                row["measured_quadratic_over_linear"] = row["time_per_pixel_rel"] * (1 + q0) - 1
        for vim, deit in PAIRS:
            other = ok.get((deit, side))
            if r["model"] == vim and other and r["status"] == "ok":
                row["speed_vs_" + deit] = r["images_per_s"] / other["images_per_s"]
                row["memory_vs_" + deit] = r["memory_increase_mb"] / other["memory_increase_mb"]
        table.append(row)
    return table


def first_crossing(points: list[tuple[int, float | None]], level: float = 1.0) -> str:
    """The side at which a measured series first reaches `level`, interpolated linearly between sizes."""
    points = sorted((s, v) for s, v in points if v is not None)
    if not points:
        return "no measurement"
    if points[0][1] >= level:
        return f"already at {points[0][0]}"
    for (s0, v0), (s1, v1) in itertools.pairwise(points):
        if v1 >= level:
            return f"~{s0 + (level - v0) / (v1 - v0) * (s1 - s0):.0f}"
    return f"not reached up to {points[-1][0]} (at most {max(v for _, v in points):.2f})"


def _cell(value, fmt: str, status: str = "ok") -> str:
    return status if status != "ok" else ("-" if value is None else format(value, fmt))


def markdown(table: list[dict], meta: dict, crossovers: dict[str, dict]) -> str:
    models = list(dict.fromkeys(r["model"] for r in table))
    sizes = sorted({r["size"] for r in table})
    at = {(r["model"], r["size"]): r for r in table}

    def grid(title: str, key: str, fmt: str, names=models) -> list[str]:
        lines = [
            f"### {title}",
            "",
            "| model | " + " | ".join(map(str, sizes)) + " |",
            "| --- |" + " ---: |" * len(sizes),
        ]
        for m in names:
            cells = [_cell(at[m, s].get(key), fmt, at[m, s]["status"]) if (m, s) in at else "-" for s in sizes]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        return [*lines, ""]

    lines = [
        "# Long-sequence study",
        "",
        f"{meta['mode']}, batch {meta['batch']}, {meta['precision']}, {meta['device_name']}, "
        f"{meta['threads']} threads, median of {meta['repeats']} after {meta['warmup']} warm-up, "
        f"torch {meta['torch']}, {meta['date']}. "
        "Each case ran in a fresh process; memory is "
        + ("the GPU's max allocated" if meta["device"].startswith("cuda") else "the process's peak RSS")
        + " over the timed batches minus its value before them (after the warm-up). Columns are the square input "
        "side in pixels. Time per pixel assumes every size is compute-bound: at small sizes on a loaded CPU, fixed "
        "per-call overheads lower the larger sizes' relative time.",
        "",
        *grid("images / s", "images_per_s", ".2f"),
        *grid("memory added by the forward pass (MiB)", "memory_increase_mb", ".0f"),
        *grid("GMACs per image (counted)", "gmacs", ".1f"),
        *grid("time per pixel relative to the smallest size (measured)", "time_per_pixel_rel", ".2f"),
        *grid("MACs per pixel relative to the smallest size (predicted by the count)", "macs_per_pixel_rel", ".2f"),
    ]
    deits = [m for m in models if m in crossovers]
    lines += grid("DeiT: attention / linear-layer FLOPs per block, Eq. 6", "eq6_quadratic_over_linear", ".2f", deits)
    lines += grid(
        "DeiT: attention / linear-layer time, estimated from the measured time per pixel",
        "measured_quadratic_over_linear",
        ".2f",
        deits,
    )
    lines += [
        "## Where attention's quadratic cost overtakes",
        "",
        "| model | D | Eq. 6 crossover tokens (2+r)·D | predicted side (px) | measured side (px) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for m in deits:
        c = crossovers[m]
        measured = first_crossing(
            [(r["size"], r.get("measured_quadratic_over_linear")) for r in table if r["model"] == m]
        )
        lines.append(f"| {m} | {c['dim']} | {c['tokens']} | {c['side']:.0f} | {measured} |")
    lines += [
        "",
        "## Vim against the DeiT of its width",
        "",
        "| pair | Vim faster from side (px) | speed ratio at the largest common size | memory ratio there |",
        "| --- | ---: | ---: | ---: |",
    ]
    for vim, deit in PAIRS:
        series = [(r["size"], r.get("speed_vs_" + deit)) for r in table if r["model"] == vim]
        measured = [(s, v) for s, v in series if v is not None]
        if not measured:
            lines.append(f"| {vim} / {deit} | no common size | - | - |")
            continue
        side = max(s for s, _ in measured)
        memory = at[vim, side].get("memory_vs_" + deit)
        lines.append(
            f"| {vim} / {deit} | {first_crossing(series)} | {at[vim, side]['speed_vs_' + deit]:.2f}x at "
            f"{side} | {_cell(memory, '.2f')} |"
        )
    lines += [
        "",
        "## The seed papers' claims",
        "",
        *(f"- {c}" for c in CLAIMS),
        f"- Here at {VIM_CLAIM['size']}: " + _claim_check(at),
        "",
    ]
    return "\n".join(lines)


def _claim_check(at: dict) -> str:
    vim, deit = VIM_CLAIM["pair"]
    row = at.get((vim, VIM_CLAIM["size"]))
    if row is None or row.get("speed_vs_" + deit) is None:
        return f"not measured ({vim} and {deit} did not both run at {VIM_CLAIM['size']}x{VIM_CLAIM['size']})."
    saving = 1 - row["memory_vs_" + deit]
    memory = f"{saving:.1%} less" if saving >= 0 else f"{-saving:.1%} more"
    return (
        f"{vim} is {row['speed_vs_' + deit]:.2f}x as fast as {deit} (claim {VIM_CLAIM['speedup']}x) and "
        f"uses {memory} memory (claim {VIM_CLAIM['memory_saving']:.1%} less)."
    )


def figure(table: list[dict], crossovers: dict[str, dict], meta: dict, path: Path) -> None:
    fig = Figure(figsize=(13, 9), layout="constrained")
    (speed, memory), (per_pixel, ratio) = fig.subplots(2, 2)
    models = list(dict.fromkeys(r["model"] for r in table))
    colors = {m: f"C{i}" for i, m in enumerate(models)}
    for m in models:
        mine = [r for r in table if r["model"] == m and r["status"] == "ok"]
        sides = [r["size"] for r in mine]
        speed.plot(sides, [r["images_per_s"] for r in mine], "o-", color=colors[m], label=m)
        memory.plot(sides, [r["memory_increase_mb"] for r in mine], "o-", color=colors[m], label=m)
        per_pixel.plot(sides, [r["time_per_pixel_rel"] for r in mine], "o-", color=colors[m], label=f"{m} measured")
        per_pixel.plot(sides, [r["macs_per_pixel_rel"] for r in mine], "--", color=colors[m], alpha=0.6)
    for m, c in crossovers.items():
        for ax in (speed, memory, per_pixel):
            ax.axvline(c["side"], color=colors.get(m, "k"), linestyle=":", alpha=0.8)
        speed.text(
            c["side"],
            0.02,
            f" Eq. 6: {m}, {c['tokens']} tokens",
            rotation=90,
            fontsize="x-small",
            transform=speed.get_xaxis_transform(),
            ha="right",
            va="bottom",
        )
    for vim, deit in PAIRS:
        mine = [r for r in table if r.get("speed_vs_" + deit) is not None]
        ratio.plot(
            [r["size"] for r in mine], [r["speed_vs_" + deit] for r in mine], "o-", label=f"{vim} / {deit} speed"
        )
        ratio.plot(
            [r["size"] for r in mine], [r["memory_vs_" + deit] for r in mine], "s--", label=f"{vim} / {deit} memory"
        )
    ratio.axhline(1, color="k", linewidth=0.8)
    ratio.plot(
        [VIM_CLAIM["size"]],
        [VIM_CLAIM["speedup"]],
        "*",
        markersize=14,
        color="C3",
        label="Vim paper: Vim-Ti / DeiT-Ti speed at 1248 (GPU)",
    )
    ratio.plot(
        [VIM_CLAIM["size"]],
        [1 - VIM_CLAIM["memory_saving"]],
        "P",
        markersize=11,
        color="C3",
        label="Vim paper: Vim-Ti / DeiT-Ti memory at 1248 (GPU)",
    )
    for ax, label in (
        (speed, "images / s"),
        (memory, "memory added by the forward (MiB)"),
        (per_pixel, "time per pixel / at smallest size\n(dashed: MACs per pixel)"),
        (ratio, "Vim / DeiT of the same width"),
    ):
        ax.set_xlabel("input side (px)")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.suptitle(
        f"{meta['mode']}, batch {meta['batch']}, {meta['precision']}, {meta['device_name']}; dotted: Eq. 6 "
        "crossover (attention FLOPs = linear-layer FLOPs)",
        fontsize="medium",
    )
    fig.savefig(path, dpi=110)


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 384, 512, 768, 1024, 1248])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--batch", type=int, help="default: 8 on CUDA, 1 on CPU")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--repeats", type=int, default=10 if cuda else 2)
    parser.add_argument("--warmup", type=int, default=3 if cuda else 1)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per case")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", type=Path, default=Path("benchmark_results/long_sequence"))
    parser.add_argument("--from-results", type=Path, metavar="JSON", help="redo the analysis of an earlier run")
    args = parser.parse_args()
    batch = args.batch or (8 if args.device.startswith("cuda") else 1)

    if args.from_results:
        data = json.loads(args.from_results.read_text())
        result = BenchmarkResult(data["meta"], data["results"])
        args.out.mkdir(parents=True, exist_ok=True)
    else:
        result = run_benchmark(
            args.models,
            sorted(args.sizes),
            batch=batch,
            precision=args.precision,
            device=args.device,
            repeats=args.repeats,
            warmup=args.warmup,
            timeout=args.timeout,
            threads=args.threads,
            out=args.out,
            progress=True,
        )
    print(format_table(result))
    models = list(dict.fromkeys(r["model"] for r in result.rows))
    crossovers = {m: attention_crossover(m) for m in models if m.startswith("deit_")}
    table = study_rows(result.rows, crossovers)
    text = markdown(table, result.meta, crossovers)
    (args.out / "long_sequence.md").write_text(text)
    columns = list(dict.fromkeys(key for row in table for key in row))
    with (args.out / "long_sequence.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(table)
    figure(table, crossovers, result.meta, args.out / "long_sequence.png")
    print("\n" + text)
    print(f"wrote {args.out}/long_sequence.md, .csv and .png")


if __name__ == "__main__":
    main()

"""Where a MambaOut training step's depthwise 7x7 conv spends its time on CPU: forward, input gradient, weight gradient.

For every stage shape of --models (batch --batch at 224: the conv channels and the feature size of each stage), aten's
`convolution_backward` is timed for the input gradient alone and the weight gradient alone, next to the forward, in
fp32 and bf16 and in NCHW and channels-last layouts, interleaved repeat by repeat in one process. The report gives
milliseconds (median of --repeats) and each gradient's cost as a multiple of the forward's (the weight gradient has the
forward's multiply-adds), prints lscpu's model, and writes depthwise_backward_cpu.json and .png under --out.

    python benchmarks/depthwise_backward_cpu.py --repeats 5 --out benchmark_results
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import matplotlib
import torch
import torch.nn.functional as F

import mambaout
from mambaout.models.mambaout import GatedCNNBlock
from training_cpu import cpu_report

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend

PARTS = ("forward", "input_grad", "weight_grad")


def stage_shapes(model_name: str, size: int) -> list[tuple[int, int, int]]:
    """(conv channels, feature size, kernel) of each stage's depthwise conv."""
    model = mambaout.create_model(model_name)
    shapes = []
    for index, stage in enumerate(model.stages):
        block = next(m for m in stage.modules() if isinstance(m, GatedCNNBlock))
        shapes.append((block.conv.in_channels, size // 2 ** (index + 2), block.conv.kernel_size[0]))
    return shapes


def part_timers(channels: int, side: int, kernel: int, batch: int, dtype: torch.dtype, channels_last: bool) -> dict:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, channels, side, side, dtype=dtype).contiguous(memory_format=layout)
    grad = torch.randn_like(x)
    weight = torch.randn(channels, 1, kernel, kernel, dtype=dtype)
    pad = kernel // 2

    def backward(mask: list[bool]):
        return lambda: torch.ops.aten.convolution_backward(
            grad, x, weight, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], channels, mask
        )

    return dict(forward=lambda: F.conv2d(x, weight, padding=pad, groups=channels),
                input_grad=backward([True, False, False]), weight_grad=backward([False, True, False]))


def milliseconds(run, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - start) / calls * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mambaout_femto", "mambaout_tiny"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--calls", type=int, default=3, help="calls per timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("benchmark_results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = cpu_report()
    print(f"CPU: {cpu['model']} ({', '.join(f for f, on in cpu['flags'].items() if on)}), {args.threads} threads")

    shapes = sorted({shape for name in args.models for shape in stage_shapes(name, args.size)}, reverse=True)
    cases = {}
    for channels, side, kernel in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            for channels_last in (False, True):
                key = (channels, side, kernel, str(dtype).removeprefix("torch."), channels_last)
                cases[key] = part_timers(channels, side, kernel, args.batch, dtype, channels_last)
                for run in cases[key].values():
                    run()  # warm-up: oneDNN builds its primitive on the first call
    samples = {(key, part): [] for key in cases for part in PARTS}
    for repeat in range(args.repeats):
        for key, timers in cases.items():
            order = PARTS if repeat % 2 == 0 else PARTS[::-1]
            for part in order:
                samples[(key, part)].append(milliseconds(timers[part], args.calls))

    rows = []
    print(f"\nbatch {args.batch}, median ms of {args.repeats} interleaved repeats of {args.calls} calls")
    print("| channels | size | dtype | layout | forward ms | input grad ms (x fwd) | weight grad ms (x fwd) |")
    print("|---:|---:|---|---|---:|---:|---:|")
    for key in cases:
        channels, side, kernel, dtype, channels_last = key
        ms = {part: statistics.median(samples[(key, part)]) for part in PARTS}
        rows.append(dict(channels=channels, size=side, kernel=kernel, dtype=dtype, channels_last=channels_last,
                         **{f"{part}_ms": value for part, value in ms.items()}))
        print(f"| {channels} | {side} | {dtype} | {'channels-last' if channels_last else 'NCHW'} | "
              f"{ms['forward']:.2f} | {ms['input_grad']:.2f} ({ms['input_grad'] / ms['forward']:.1f}x) | "
              f"{ms['weight_grad']:.2f} ({ms['weight_grad'] / ms['forward']:.1f}x) |")

    args.out.mkdir(parents=True, exist_ok=True)
    meta = dict(torch=torch.__version__, cpu=cpu, threads=args.threads, batch=args.batch, repeats=args.repeats,
                calls=args.calls, models=args.models)
    (args.out / "depthwise_backward_cpu.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    bf16_cl = [r for r in rows if r["dtype"] == "bfloat16" and r["channels_last"]]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    positions = range(len(bf16_cl))
    for offset, part in zip((-0.27, 0.0, 0.27), PARTS):
        ax.bar([p + offset for p in positions], [r[f"{part}_ms"] for r in bf16_cl], 0.27, label=part.replace("_", " "))
    ax.set_xticks(list(positions), [f"{r['channels']} ch\n{r['size']}x{r['size']}" for r in bf16_cl])
    ax.set_ylabel("ms per call")
    ax.set_title(f"Depthwise {shapes[0][2]}x{shapes[0][2]} conv, bf16 channels-last, batch {args.batch}, "
                 f"{args.threads} CPU threads", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "depthwise_backward_cpu.png", dpi=100)
    print(f"\nwrote {args.out / 'depthwise_backward_cpu.json'} and depthwise_backward_cpu.png")


if __name__ == "__main__":
    main()

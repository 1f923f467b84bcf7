"""The fast inference path against fp32 eager and against timm, side by side on this CPU.

MambaOut models (default mambaout_femto, mambaout_tiny; batch 16): timm's model in fp32 eager and in its best
configuration (bf16 autocast + torch.compile), ours in fp32 eager and through `prepare_for_inference(fast=True)`.
Selective-scan models (default vmamba_tiny, vim_tiny; batch 8): ours in fp32 eager with the `chunked` and the default
(`numba`) scan, and the fast path. A large bf16 matmul runs in the same loop: the machine's bf16 peak, against
which the fast path's MACs (mambaout.analysis.flops) per second are reported.

Every case is warmed up (compilation included), then the repeats run interleaved with the order rotated each repeat,
so a noisy, shared machine slows all cases alike; the report gives medians, spreads (max - min) and ratios, and
writes inference_cpu.json and inference_cpu.png under --out.

    python benchmarks/inference_cpu.py --repeats 7 --out benchmark_results
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import timm
import torch
from tqdm import tqdm

import mambaout
from mambaout.analysis.flops import model_flops
from mambaout.engine.inference import prepare_for_inference, resolve_precision
from mambaout.ops import scan_backend

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend

PEAK = "bf16 matmul peak"


@dataclass
class Case:
    model: str
    config: str
    batch: int
    run: Callable[[], object]
    macs: int = 0  # per batch; 0 for cases not measured against the peak


def _timm_best(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """timm's fastest documented CPU setting: bf16 autocast around torch.compile (default mode)."""
    compiled = torch.compile(model)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return compiled(x)

    return run


def _with_backend(model: torch.nn.Module, backend: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        with scan_backend(backend):
            return model(x)

    return run


def _case(model: str, config: str, fn: Callable, x: torch.Tensor, macs: int = 0) -> Case:
    return Case(model, config, x.shape[0], lambda: fn(x), macs)


def build_cases(args: argparse.Namespace) -> list[Case]:
    cases = []
    for name in args.conv_models:
        x = torch.randn(args.conv_batch, 3, args.size, args.size)
        macs = model_flops(name, size=(args.size, args.size), batch=args.conv_batch).macs
        ours = mambaout.create_model(name).eval()
        if not args.no_timm:
            theirs = timm.create_model(name).eval()  # a baseline only, never our implementation
            ours.load_state_dict(theirs.state_dict())
            cases.append(_case(name, "timm fp32 eager", theirs, x))
            if not args.no_compile:
                cases.append(_case(name, "timm bf16 autocast + compile", _timm_best(theirs), x))
        cases.append(_case(name, "fp32 eager", ours, x))
        fast = prepare_for_inference(ours, fast=True, compile=not args.no_compile, input_size=(args.size, args.size))
        cases.append(_case(name, "fast path", fast, x, macs))
    for name in args.ssm_models:
        x = torch.randn(args.ssm_batch, 3, args.size, args.size)
        macs = model_flops(name, size=(args.size, args.size), batch=args.ssm_batch).macs
        ours = mambaout.create_model(name).eval()
        cases.append(_case(name, "fp32 eager, chunked scan", _with_backend(ours, "chunked"), x))
        cases.append(_case(name, "fp32 eager, numba scan", _with_backend(ours, "numba"), x))
        fast = prepare_for_inference(ours, fast=True, compile=not args.no_compile, input_size=(args.size, args.size))
        cases.append(_case(name, "fast path", fast, x, macs))
    n = args.peak_size
    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    cases.append(Case(PEAK, f"{n}^3 x {args.peak_reps}", 0, lambda: [a @ b for _ in range(args.peak_reps)]))
    return cases


def measure(cases: list[Case], repeats: int) -> dict[tuple[str, str], list[float]]:
    def timed(case: Case) -> float:
        start = time.perf_counter()
        case.run()
        return time.perf_counter() - start

    times: dict[tuple[str, str], list[float]] = {(c.model, c.config): [] for c in cases}
    with torch.no_grad():
        for case in tqdm(cases, desc="warm-up (compiles)", disable=None):
            timed(case)
            timed(case)  # a second call: compiled code can specialise on the first
        with tqdm(total=repeats * len(cases), desc="timing", disable=None) as bar:
            for r in range(repeats):
                shift = r % len(cases)
                for case in cases[shift:] + cases[:shift]:
                    times[(case.model, case.config)].append(timed(case))
                    bar.update()
    return times


def _ratio(rows: dict[tuple[str, str], dict], model: str, num: str, den: str) -> float | None:
    if (model, num) in rows and (model, den) in rows:
        return rows[(model, num)]["images_per_s"] / rows[(model, den)]["images_per_s"]
    return None


def summarize(cases: list[Case], times: dict, args: argparse.Namespace) -> dict:
    peak_case = next(c for c in cases if c.model == PEAK)
    peak_s = statistics.median(times[(PEAK, peak_case.config)])
    peak_flops = 2 * args.peak_size**3 * args.peak_reps / peak_s
    rows = {}
    for case in cases:
        if case.model == PEAK:
            continue
        samples = times[(case.model, case.config)]
        median = statistics.median(samples)
        row = dict(
            model=case.model,
            config=case.config,
            batch=case.batch,
            median_s=median,
            spread_s=max(samples) - min(samples),
            images_per_s=case.batch / median,
        )
        if case.macs:
            row["gflops_per_s"] = 2 * case.macs / median / 1e9
            row["fraction_of_bf16_peak"] = 2 * case.macs / median / peak_flops
        rows[(case.model, case.config)] = row
    ratios = {}
    for name in args.conv_models:
        ratios[name] = {
            "ours fp32 eager / timm fp32 eager": _ratio(rows, name, "fp32 eager", "timm fp32 eager"),
            "fast path / timm bf16 autocast + compile": _ratio(rows, name, "fast path", "timm bf16 autocast + compile"),
            "fast path / timm fp32 eager": _ratio(rows, name, "fast path", "timm fp32 eager"),
            "timm bf16 autocast + compile / timm fp32 eager": _ratio(
                rows, name, "timm bf16 autocast + compile", "timm fp32 eager"
            ),
        }
    for name in args.ssm_models:
        ratios[name] = {
            "fast path / fp32 eager chunked": _ratio(rows, name, "fast path", "fp32 eager, chunked scan"),
            "fast path / fp32 eager numba": _ratio(rows, name, "fast path", "fp32 eager, numba scan"),
        }
    meta = dict(
        torch=torch.__version__,
        machine=platform.processor() or platform.machine(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        fast_path_precision=resolve_precision("auto"),
        threads=torch.get_num_threads(),
        size=args.size,
        repeats=args.repeats,
        bf16_peak_gflops_per_s=peak_flops / 1e9,
        peak_spread_s=max(times[(PEAK, peak_case.config)]) - min(times[(PEAK, peak_case.config)]),
    )
    return dict(meta=meta, rows=list(rows.values()), ratios=ratios)


def report(result: dict) -> None:
    meta = result["meta"]
    print(
        f"\n{meta['size']}x{meta['size']}, {meta['threads']} threads, median of {meta['repeats']} interleaved "
        f"repeats; bf16 matmul peak {meta['bf16_peak_gflops_per_s']:.0f} GFLOP/s; fast path runs "
        f"{meta['fast_path_precision']}"
    )
    print(f"{'model':<15} {'config':<30} {'batch':>5} {'s/batch':>8} {'spread':>7} {'images/s':>9} {'% peak':>7}")
    for r in result["rows"]:
        peak = f"{100 * r['fraction_of_bf16_peak']:.1f}" if "fraction_of_bf16_peak" in r else "-"
        print(
            f"{r['model']:<15} {r['config']:<30} {r['batch']:>5} {r['median_s']:>8.3f} {r['spread_s']:>7.3f} "
            f"{r['images_per_s']:>9.2f} {peak:>7}"
        )
    for model, ratios in result["ratios"].items():
        for label, value in ratios.items():
            if value is not None:
                print(f"{model:<15} {label:<48} {value:.2f}x")


def plot(result: dict, path: Path) -> None:
    models = list(dict.fromkeys(r["model"] for r in result["rows"]))
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = [r for r in result["rows"] if r["model"] == model]
        labels = [r["config"].replace(", ", "\n").replace(" + ", "\n+ ") for r in rows]
        ax.bar(labels, [r["images_per_s"] for r in rows], color="tab:blue")
        ax.set_title(f"{model} (batch {rows[0]['batch']})")
        ax.set_ylabel("images/s (median)")
        ax.tick_params(axis="x", labelsize=7, rotation=30)
    fig.suptitle(f"CPU inference, {result['meta']['threads']} threads, {result['meta']['size']}px")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conv-models", nargs="*", default=["mambaout_femto", "mambaout_tiny"])
    parser.add_argument("--conv-batch", type=int, default=16)
    parser.add_argument("--ssm-models", nargs="*", default=["vmamba_tiny", "vim_tiny"])
    parser.add_argument("--ssm-batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--peak-size", type=int, default=2048, help="side of the square bf16 matmul")
    parser.add_argument("--peak-reps", type=int, default=8, help="matmuls per timed peak sample")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-timm", action="store_true", help="skip timm's baselines")
    parser.add_argument("--no-compile", action="store_true", help="fast path and timm's best without torch.compile")
    parser.add_argument("--out", type=Path, default=Path("benchmark_results"))
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    torch.set_num_threads(args.threads)
    cases = build_cases(args)
    result = summarize(cases, measure(cases, args.repeats), args)
    report(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "inference_cpu.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "inference_cpu.png")
    print(f"wrote {args.out / 'inference_cpu.json'} and {args.out / 'inference_cpu.png'}")


if __name__ == "__main__":
    main()

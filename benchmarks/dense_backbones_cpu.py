"""Dense backbones at detection/segmentation sizes on CPU: forward images/s and peak memory, batch 1.

The MambaOut paper's Hypothesis 2: at 800x1280 (about 4,000 tokens at stride 16) detection is a long-sequence
task where an SSM may pay off. This measures the backbones a Mask R-CNN / UperNet runs (`create_backbone`: the
four maps and their output norms; timm's Swin-T and ConvNeXt-T through `features_only`), random weights.

Every measurement is one child process (forked from a server that has imported torch): one warm-up forward (JIT
compilation, allocator), then one timed forward whose peak RSS is the case's own. Repeat r of every (size, model)
case runs before repeat r + 1, so a shared, noisy machine slows all models alike; the table gives the median.

    python benchmarks/dense_backbones_cpu.py                       # 800x1280 and 1024x1024, 2 repeats
    python benchmarks/dense_backbones_cpu.py --sizes 512x512 --repeats 1 --models mambaout_tiny timm:convnext_tiny
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm import tqdm

from _machine import cpu_model
from mambaout import create_backbone
from mambaout.analysis.benchmark_case import TIMM_PREFIX, _memory_before_timing, _peak_rss_bytes, classify_failure
from mambaout.analysis.flops import count_macs

MODELS = (
    "mambaout_tiny",
    "vmamba_tiny",
    "vmamba2_tiny",
    "vim_small",
    "deit_small",
    "timm:swin_tiny_patch4_window7_224",
    "timm:convnext_tiny",
)
SIZES = ((800, 1280), (1024, 1024))


def build_backbone(name: str, size: tuple[int, int]) -> nn.Module:
    """Our dense backbone, or a timm model's features_only extractor (Swin built for `size`, windows padded)."""
    if not name.startswith(TIMM_PREFIX):
        return create_backbone(name)
    import timm

    timm_name = name[len(TIMM_PREFIX) :]
    kwargs: dict[str, Any] = {}
    if timm.models.get_pretrained_cfg(timm_name).fixed_input_size:
        kwargs["img_size"] = size
    return timm.create_model(timm_name, pretrained=False, features_only=True, **kwargs)


def measure(name: str, size: tuple[int, int], threads: int) -> dict[str, Any]:
    """One warm-up forward, then one timed forward; seconds and peak RSS (MiB) of the timed one."""
    torch.set_num_threads(threads)
    model = build_backbone(name, size).eval()
    x = torch.randn(1, 3, *size)
    with torch.inference_mode():
        model(x)
        baseline = _memory_before_timing(torch.device("cpu"))
        start = time.perf_counter()
        model(x)
        seconds = time.perf_counter() - start
    peak = _peak_rss_bytes()
    return dict(seconds=seconds, peak_memory_mb=peak / 2**20, memory_increase_mb=(peak - baseline) / 2**20)


def _child(name: str, size: tuple[int, int], threads: int, conn) -> None:
    # as in mambaout.analysis.benchmark_case: locks numba makes in a forkserver child would be reported as leaked
    multiprocessing.set_start_method("fork", force=True)
    try:
        result = dict(status="ok", **measure(name, size, threads))
    except Exception as e:  # reported, never a dead child
        result = dict(status=classify_failure(e), message=f"{type(e).__name__}: {str(e).strip()[:300]}")
    conn.send(result)
    conn.close()


def run_child(name: str, size: tuple[int, int], threads: int, timeout: float) -> dict[str, Any]:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "timm", "mambaout"])
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(name, size, threads, send), daemon=True)
    process.start()
    send.close()
    try:
        if not receive.poll(timeout):
            return dict(status="timeout", message=f"no result after {timeout:g} s")
        try:
            return receive.recv()
        except EOFError:
            process.join()
            return dict(status="oom" if process.exitcode == -9 else "error", message=f"exit {process.exitcode}")
    finally:
        if process.is_alive():
            process.kill()
        process.join()
        receive.close()


def gmacs(name: str, size: tuple[int, int]) -> float | None:
    """MACs of one forward, counted on the meta device (the selective scan by its formula)."""
    try:
        with torch.device("meta"):
            model = build_backbone(name, size)
        return count_macs(model, (1, 3, *size), name=name).macs / 1e9
    except Exception:  # a model the meta device cannot run is timed all the same
        return None




def summarise(samples: dict[tuple[str, tuple[int, int]], list[dict]], models, sizes) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        for name in models:
            runs = samples[(name, size)]
            ok = [r for r in runs if r["status"] == "ok"]
            row = dict(model=name, height=size[0], width=size[1], gmacs=gmacs(name, size), repeats=len(ok))
            if ok:
                seconds = statistics.median(r["seconds"] for r in ok)
                row.update(
                    status="ok",
                    images_per_s=1 / seconds,
                    images_per_s_best=1 / min(r["seconds"] for r in ok),  # noise on a shared machine only slows
                    latency_s_median=seconds,
                    latency_s_all=[r["seconds"] for r in ok],
                    peak_memory_mb=max(r["peak_memory_mb"] for r in ok),
                    memory_increase_mb=max(r["memory_increase_mb"] for r in ok),
                )
            else:
                row.update(status=runs[-1]["status"], message=runs[-1].get("message", ""))
            rows.append(row)
    return rows


def plot(rows: list[dict[str, Any]], meta: dict[str, Any], path: Path) -> None:
    sizes = sorted({(r["height"], r["width"]) for r in rows}, key=lambda s: s[0] * s[1])
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    width = 0.8 / len(sizes)
    for ax, key, label in zip(
        fig.subplots(1, 2),
        ("images_per_s_best", "memory_increase_mb"),
        (f"images/s, best of {meta['repeats']} (higher is better)", "MiB"),
    ):
        for i, size in enumerate(sizes):
            values = [
                next((r.get(key) or 0.0 for r in rows if r["model"] == m and (r["height"], r["width"]) == size), 0.0)
                for m in models
            ]
            positions = [j + (i - (len(sizes) - 1) / 2) * width for j in range(len(models))]
            ax.bar(positions, values, width, label=f"{size[0]}x{size[1]}")
        ax.set_xticks(range(len(models)), [m.removeprefix(TIMM_PREFIX) for m in models], rotation=30, ha="right")
        ax.set_ylabel(label)
        ax.set_title("forward speed" if key == "images_per_s_best" else "peak memory added by the forward")
        ax.legend()
    fig.suptitle(f"Dense backbones, batch 1, CPU: {meta['cpu']} ({meta['threads']} threads)")
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--sizes", nargs="+", default=[f"{h}x{w}" for h, w in SIZES], help="HxW")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement")
    parser.add_argument("--out", type=Path, default=Path("benchmark_results/dense_backbones_cpu"))
    args = parser.parse_args()
    sizes = [tuple(int(side) for side in s.lower().split("x")) for s in args.sizes]

    meta = dict(
        cpu=cpu_model(),
        threads=args.threads,
        batch=1,
        precision="fp32",
        repeats=args.repeats,
        torch=torch.__version__,
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        method="each sample: a fresh child, one warm-up forward, one timed forward; repeats interleaved",
    )
    samples: dict[tuple[str, tuple[int, int]], list[dict]] = {(m, s): [] for m in args.models for s in sizes}
    cases = [(r, size, name) for r in range(args.repeats) for size in sizes for name in args.models]
    for _, size, name in tqdm(cases, desc="dense backbones", disable=None):
        samples[(name, size)].append(run_child(name, size, args.threads, args.timeout))
    rows = summarise(samples, args.models, sizes)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(dict(meta=meta, results=rows), indent=2))
    plot(rows, meta, args.out / "dense_backbones_cpu.png")
    print(f"{meta['cpu']}, {meta['threads']} threads, batch 1, fp32, median of {args.repeats}")
    print(f"{'model':<36} {'size':>9} {'img/s':>7} {'best':>7} {'s/img':>7} {'GMACs':>7} {'peak MiB':>9} {'+MiB':>7}")
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['model']:<36} {r['height']}x{r['width']:<5} {r['status']}: {r.get('message', '')[:60]}")
            continue
        macs = "-" if r["gmacs"] is None else f"{r['gmacs']:.1f}"
        print(
            f"{r['model']:<36} {r['height']:>4}x{r['width']:<4} {r['images_per_s']:>7.3f} "
            f"{r['images_per_s_best']:>7.3f} {r['latency_s_median']:>7.2f}"
            f" {macs:>7} {r['peak_memory_mb']:>9.0f} {r['memory_increase_mb']:>7.0f}"
        )
    print(f"wrote {args.out / 'results.json'} and {args.out / 'dense_backbones_cpu.png'}")


if __name__ == "__main__":
    main()

"""Whole-model forward throughput on this machine, each SSM model once per selective-scan backend.

All cases run interleaved in one process (repeat r of every case before repeat r + 1), so a noisy, shared
machine slows them alike; the table reports medians and each backend's speed-up over `reference` for the
same model. MambaOut runs in the same loop as the yardstick.

    python benchmarks/models_cpu.py --models mambaout_tiny vmamba_tiny vmamba2_tiny vim_tiny --batch 8
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

import mambaout
from mambaout.ops import scan_backend
from mambaout.ops.selective_scan import BACKENDS

SSM_FAMILIES = ("vmamba", "vim")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mambaout_tiny", "vmamba_tiny", "vmamba2_tiny", "vim_tiny"])
    parser.add_argument("--backends", nargs="+", default=[b for b in BACKENDS if b not in ("auto", "triton")])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("benchmark_results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    x = torch.randn(args.batch, 3, args.size, args.size)
    cases = []
    for name in args.models:
        model = mambaout.create_model(name).eval()
        backends = args.backends if mambaout.get_model_spec(name).family in SSM_FAMILIES else ["-"]
        cases += [(name, backend, model) for backend in backends]

    def forward(model, backend):
        with torch.no_grad(), scan_backend(None if backend == "-" else backend):
            start = time.perf_counter()
            model(x)
            return time.perf_counter() - start

    for _, backend, model in tqdm(cases, desc="warm-up"):
        forward(model, backend)
    times: dict[tuple[str, str], list[float]] = {(n, b): [] for n, b, _ in cases}
    with tqdm(total=args.repeats * len(cases), desc="timing") as bar:
        for _ in range(args.repeats):
            for name, backend, model in cases:
                times[(name, backend)].append(forward(model, backend))
                bar.update()

    rows = []
    for (name, backend), samples in times.items():
        median = statistics.median(samples)
        reference = times.get((name, "reference"))
        rows.append(
            dict(
                model=name,
                backend=backend,
                median_s=median,
                spread_s=max(samples) - min(samples),
                images_per_s=args.batch / median,
                speedup_vs_reference=statistics.median(reference) / median if reference else None,
            )
        )
    print(
        f"\nforward, batch {args.batch}, {args.size}x{args.size}, fp32, {args.threads} threads, median of "
        f"{args.repeats}"
    )
    print(f"{'model':<16} {'scan backend':<13} {'s/batch':>8} {'spread':>7} {'images/s':>9} {'vs reference':>13}")
    for r in rows:
        ratio = "-" if r["speedup_vs_reference"] is None else f"{r['speedup_vs_reference']:.1f}x"
        print(
            f"{r['model']:<16} {r['backend']:<13} {r['median_s']:>8.3f} {r['spread_s']:>7.3f} "
            f"{r['images_per_s']:>9.2f} {ratio:>13}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "models_cpu.json"
    meta = dict(
        torch=torch.__version__,
        machine=platform.processor() or platform.machine(),
        threads=args.threads,
        batch=args.batch,
        size=args.size,
        repeats=args.repeats,
    )
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

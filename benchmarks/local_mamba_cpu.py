"""LocalMamba against the model it builds on, on this CPU: LocalVim-T / Vim-Ti and LocalVMamba-T / VMamba-T.

For every model: inference (eval, no_grad) in fp32 and, where the CPU multiplies bf16 natively
(`cpu_supports_bf16`), under bf16 autocast; and one training step (forward, cross-entropy, backward, AdamW) under
bf16 autocast where supported, else fp32. Each pair's ratio LocalX / X of images/s is checked against --target
(LocalMamba's directions scan 4 sequences per block where Vim scans 2, hence less than 1 even when all of them
run as one grouped scan).

Every case is warmed up once, then the repeats run interleaved with the order rotated each repeat, so a noisy,
shared machine slows all cases alike; the report gives medians and spreads (max - min), and writes
local_mamba_cpu.json and local_mamba_cpu.png under --out. On a machine that other jobs keep busy, `--threads 1
--clock cpu` times the process's own CPU seconds instead of wall-clock time: one thread is never left waiting at a
barrier for a descheduled sibling, so the time is the work done, whatever else runs.

    python benchmarks/local_mamba_cpu.py --repeats 3 --out benchmark_results
    python benchmarks/local_mamba_cpu.py --repeats 3 --threads 1 --clock cpu
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
import torch
import torch.nn.functional as F
from tqdm import tqdm

import mambaout
from _machine import cpu_model
from mambaout.engine.inference import cpu_supports_bf16

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend

PAIRS = ("local_vim_tiny:vim_tiny", "local_vmamba_tiny:vmamba_tiny")


@dataclass
class Case:
    model: str
    mode: str  # "inference" or "train step"
    precision: str  # "fp32" or "bf16 autocast"
    batch: int
    run: Callable[[], object]

    @property
    def config(self) -> str:
        return f"{self.mode}, {self.precision}"




def _autocast(precision: str) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16 autocast")


def inference_case(name: str, precision: str, batch: int, size: int) -> Case:
    model = mambaout.create_model(name).eval()
    x = torch.randn(batch, 3, size, size)

    def run() -> torch.Tensor:
        with torch.no_grad(), _autocast(precision):
            return model(x)

    return Case(name, "inference", precision, batch, run)


def train_case(name: str, precision: str, batch: int, size: int) -> Case:
    model = mambaout.create_model(name).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    x = torch.randn(batch, 3, size, size)
    target = torch.randint(0, 1000, (batch,))

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(precision):
            loss = F.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()

    return Case(name, "train step", precision, batch, run)


def build_cases(args: argparse.Namespace) -> list[Case]:
    bf16 = cpu_supports_bf16()
    inference = ["fp32", "bf16 autocast"] if bf16 else ["fp32"]
    train = "bf16 autocast" if bf16 else "fp32"
    cases = []
    for local, base in (pair.split(":") for pair in args.pairs):
        for name in (local, base):
            cases += [inference_case(name, p, args.batch, args.size) for p in inference]
            cases.append(train_case(name, train, args.train_batch, args.size))
    return cases


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def measure(cases: list[Case], repeats: int, clock: Callable[[], float]) -> dict[tuple[str, str], list[float]]:
    def timed(case: Case) -> float:
        start = clock()
        case.run()
        return clock() - start

    times: dict[tuple[str, str], list[float]] = {(c.model, c.config): [] for c in cases}
    for case in tqdm(cases, desc="warm-up", disable=None):
        timed(case)
    with tqdm(total=repeats * len(cases), desc="timing", disable=None) as bar:
        for r in range(repeats):
            shift = r % len(cases)
            for case in cases[shift:] + cases[:shift]:
                times[(case.model, case.config)].append(timed(case))
                bar.update()
    return times


def summarize(cases: list[Case], times: dict, args: argparse.Namespace) -> dict:
    rows = {}
    for case in cases:
        samples = times[(case.model, case.config)]
        median = statistics.median(samples)
        rows[(case.model, case.config)] = dict(
            model=case.model,
            config=case.config,
            batch=case.batch,
            median_s=median,
            spread_s=max(samples) - min(samples),
            images_per_s=case.batch / median,
            samples_s=samples,
        )
    ratios = []
    for local, base in (pair.split(":") for pair in args.pairs):
        for config in dict.fromkeys(c.config for c in cases if c.model == local):
            ratio = rows[(local, config)]["images_per_s"] / rows[(base, config)]["images_per_s"]
            ratios.append(
                dict(model=local, baseline=base, config=config, ratio=ratio, meets_target=ratio >= args.target)
            )
    meta = dict(
        cpu=cpu_model(),
        torch=torch.__version__,
        machine=platform.processor() or platform.machine(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        bf16=cpu_supports_bf16(),
        threads=torch.get_num_threads(),
        clock=args.clock,
        size=args.size,
        repeats=args.repeats,
        target=args.target,
    )
    return dict(meta=meta, rows=list(rows.values()), ratios=ratios)


def report(result: dict) -> None:
    meta = result["meta"]
    print(f"\nlscpu model name: {meta['cpu']} ({meta['cpu_capability']}, bf16 {'yes' if meta['bf16'] else 'no'})")
    print(
        f"{meta['size']}x{meta['size']}, {meta['threads']} threads, {meta['clock']} clock, median of {meta['repeats']} "
        "interleaved repeats"
    )
    print(f"{'model':<18} {'config':<26} {'batch':>5} {'s/batch':>8} {'spread':>7} {'images/s':>9}")
    for r in result["rows"]:
        print(
            f"{r['model']:<18} {r['config']:<26} {r['batch']:>5} {r['median_s']:>8.3f} {r['spread_s']:>7.3f} "
            f"{r['images_per_s']:>9.3f}"
        )
    print(f"\nratio of images/s, target >= {meta['target']:.2f}x")
    for r in result["ratios"]:
        verdict = "ok" if r["meets_target"] else "BELOW TARGET"
        print(f"{r['model'] + ' / ' + r['baseline']:<34} {r['config']:<26} {r['ratio']:>6.2f}x  {verdict}")


def plot(result: dict, path: Path) -> None:
    configs = list(dict.fromkeys(r["config"] for r in result["rows"]))
    fig, axes = plt.subplots(1, len(configs), figsize=(4.5 * len(configs), 4), squeeze=False)
    for ax, config in zip(axes[0], configs):
        rows = [r for r in result["rows"] if r["config"] == config]
        colors = ["tab:orange" if r["model"].startswith("local_") else "tab:blue" for r in rows]
        ax.bar([r["model"].replace("_", "\n", 1) for r in rows], [r["images_per_s"] for r in rows], color=colors)
        ratios = [r for r in result["ratios"] if r["config"] == config]
        ax.set_title(f"{config} (batch {rows[0]['batch']})\n" + ", ".join(f"{r['ratio']:.2f}x" for r in ratios))
        ax.set_ylabel("images/s (median)")
        ax.tick_params(axis="x", labelsize=8)
    meta = result["meta"]
    fig.suptitle(f"LocalMamba / base model on {meta['cpu']}, {meta['threads']} threads, {meta['clock']} clock")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), help="LOCAL:BASE registry names")
    parser.add_argument("--batch", type=int, default=2, help="inference batch")
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.6, help="the LocalX / X ratio to reach")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall", help="cpu: this process's CPU time")
    parser.add_argument("--out", type=Path, default=Path("benchmark_results"))
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    for pair in args.pairs:
        if pair.count(":") != 1:
            parser.error(f"--pairs takes LOCAL:BASE, got {pair!r}")
    torch.set_num_threads(args.threads)
    cases = build_cases(args)
    result = summarize(cases, measure(cases, args.repeats, CLOCKS[args.clock]), args)
    report(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "local_mamba_cpu.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "local_mamba_cpu.png")
    print(f"wrote {args.out / 'local_mamba_cpu.json'} and {args.out / 'local_mamba_cpu.png'}")


if __name__ == "__main__":
    main()

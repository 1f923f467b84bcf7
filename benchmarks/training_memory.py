"""Peak memory of one training step: forward, backward and an AdamW step, ours next to timm's MambaOut-T.

    python benchmarks/training_memory.py --batch 32 --size 224 --out benchmark_results

Each model runs in its own fresh process (this script with the hidden --one flag), so no model inherits another's
heap. There it is built with its AdamW optimizer and a synthetic batch, and the resident set is read ("setup": weights,
batch, the interpreter and torch). One warm-up step follows (AdamW's state comes to life, the allocator warms up);
then the kernel's peak-RSS counter is reset (/proc/self/clear_refs) and the measured --steps run. "Step" is their
peak minus the setup RSS: gradients, optimizer state and activations, what training adds to the model. "Peak" is the
absolute high-water mark of the measured steps, and the process's overall ru_maxrss is kept in the JSON. Where the
counter cannot be reset, the peak is ru_maxrss, which then includes the warm-up step (said in the JSON). On CUDA the
same quantities come from torch.cuda.memory_allocated / max_memory_allocated after reset_peak_memory_stats.

bf16 autocast where the CPU computes bf16 natively (`cpu_supports_bf16`) and on CUDA, else float32. Models are
registry names; `timm:NAME` is timm's model. Writes training_memory.json and training_memory.png under --out.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from _machine import cpu_model

MIB = 2**20
DEFAULT_MODELS = ("mambaout_tiny", "vmamba_tiny", "vim_tiny", "timm:mambaout_tiny")
BASELINE = "timm:mambaout_tiny"
RESULT_PREFIX = "RESULT "


# ---------------------------------------------------------------------------------------------------------------------
# One model, in its own process


def _proc_status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def rss_bytes() -> int:
    """The resident set now (VmRSS), else the process's peak as the best available stand-in."""
    kib = _proc_status_kib("VmRSS")
    return kib * 1024 if kib is not None else max_rss_bytes()


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0): the measured step's peak then excludes the warm-up's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_status_kib("VmHWM") is not None


def peak_rss_bytes() -> int:
    kib = _proc_status_kib("VmHWM")
    return kib * 1024 if kib is not None else max_rss_bytes()


def build(spec: str):
    """The model named by `spec`: a registry name, or `timm:NAME` for timm's."""
    if spec.startswith("timm:"):
        import timm

        return timm.create_model(spec.removeprefix("timm:"))
    import mambaout

    return mambaout.create_model(spec)


def measure(spec: str, batch: int, size: int, steps: int, device_name: str) -> dict:
    """Setup and step memory of `spec` in this process (call it in a fresh one)."""
    import torch
    from torch import nn

    from mambaout.engine.inference import cpu_supports_bf16

    device = torch.device(device_name)
    on_cuda = device.type == "cuda"
    dtype = torch.bfloat16 if on_cuda or cpu_supports_bf16() else None
    torch.manual_seed(0)
    model = build(spec).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, size, size, generator=g).to(device)
    targets = torch.randint(0, 1000, (batch,), generator=g).to(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if on_cuda:
            torch.cuda.synchronize(device)

    setup = torch.cuda.memory_allocated(device) if on_cuda else rss_bytes()
    start = time.perf_counter()
    step()  # warm-up
    warmup_s = time.perf_counter() - start
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
        reset = True
    else:
        reset = reset_peak_rss()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    step_s = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated(device) if on_cuda else peak_rss_bytes()
    return dict(model=spec, batch=batch, size=size, steps=steps, device=device.type,
                precision="bf16" if dtype is not None else "fp32",
                params=sum(p.numel() for p in model.parameters()),
                setup_mib=setup / MIB, peak_mib=peak / MIB, step_mib=(peak - setup) / MIB,
                process_max_rss_mib=max_rss_bytes() / MIB, peak_excludes_warmup=reset,
                warmup_s=warmup_s, step_s=step_s)


def measure_in_subprocess(spec: str, batch: int, size: int, steps: int = 1, device: str = "cpu",
                          timeout: float | None = None) -> dict:
    """`measure` in a fresh interpreter running this script with --one; its last RESULT line is the answer."""
    command = [sys.executable, __file__, "--one", spec, "--batch", str(batch), "--size", str(size),
               "--steps", str(steps), "--device", device]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    results = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not results:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"measuring {spec} failed (exit {done.returncode}): {tail}")
    return json.loads(results[-1].removeprefix(RESULT_PREFIX))


# ---------------------------------------------------------------------------------------------------------------------
# The report




def add_ratios(rows: list[dict], baseline: str) -> None:
    base = next((r for r in rows if r["model"] == baseline and "error" not in r), None)
    for row in rows:
        if base is not None and "error" not in row:
            row["step_ratio"] = row["step_mib"] / base["step_mib"]
            row["peak_ratio"] = row["peak_mib"] / base["peak_mib"]


def table(rows: list[dict], baseline: str) -> str:
    lines = [f"| model | precision | setup MiB | step MiB (peak - setup) | peak MiB | step / {baseline} | "
             f"peak / {baseline} | s/step |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | FAIL: {r['error']} | | | | | | |")
            continue
        ratio = f"{r['step_ratio']:.2f}x | {r['peak_ratio']:.2f}x" if "step_ratio" in r else "- | -"
        lines.append(f"| {r['model']} | {r['precision']} | {r['setup_mib']:.0f} | {r['step_mib']:.0f} | "
                     f"{r['peak_mib']:.0f} | {ratio} | {r['step_s']:.1f} |")
    return "\n".join(lines)


def plot(rows: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the backend

    good = [r for r in rows if "error" not in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    positions = range(len(good))
    ax.bar([p - 0.2 for p in positions], [r["step_mib"] for r in good], 0.4, label="step (peak - setup)")
    ax.bar([p + 0.2 for p in positions], [r["peak_mib"] for r in good], 0.4, label="absolute peak")
    for p, r in zip(positions, good):
        if "step_ratio" in r:
            ax.annotate(f"{r['step_ratio']:.2f}x", (p - 0.2, r["step_mib"]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(positions), [r["model"] for r in good], rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("MiB")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="registry names; timm:NAME for timm")
    parser.add_argument("--baseline", default=BASELINE, help="the model the ratios divide by")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=1, help="measured steps after the one warm-up step")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per model")
    parser.add_argument("--out", type=Path, default=Path("benchmark_results"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child: measure this model and print its RESULT line
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        print(RESULT_PREFIX + json.dumps(measure(args.one, args.batch, args.size, args.steps, args.device)), flush=True)
        return 0
    cpu = cpu_model()
    print(f"CPU: {cpu}; {args.batch} images at {args.size}, {args.steps} measured step(s) after 1 warm-up, "
          f"device {args.device}", flush=True)
    rows = []
    for spec in args.models:
        start = time.perf_counter()
        try:
            row = measure_in_subprocess(spec, args.batch, args.size, args.steps, args.device, args.timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            row = dict(model=spec, error=str(error).splitlines()[0])
        row["wall_s"] = time.perf_counter() - start
        rows.append(row)
        summary = row.get("error") or f"step {row['step_mib']:.0f} MiB, peak {row['peak_mib']:.0f} MiB"
        print(f"{spec}: {summary} ({row['wall_s']:.0f} s)", flush=True)
    add_ratios(rows, args.baseline)
    text = table(rows, args.baseline)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = dict(cpu=cpu, batch=args.batch, size=args.size, steps=args.steps, device=args.device,
                baseline=args.baseline, note="each model in a fresh process; step = peak - setup RSS")
    (args.out / "training_memory.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    title = f"One AdamW training step, batch {args.batch} at {args.size} ({args.device}: {cpu})"
    plot(rows, title, args.out / "training_memory.png")
    print(f"wrote {args.out / 'training_memory.json'} and training_memory.png")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

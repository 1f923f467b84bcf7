"""Training and validation throughput of our MambaOut against timm's same model, driven by the same loops.

Training: forward, backward and an AdamW step under bf16 autocast (batch 32, 224x224 by default) for
`mambaout_femto`, ours and timm's, the same step function for both. Validation: `mambaout.engine.evaluate.evaluate`
(the loop `mambaout validate` and training use) over in-memory batches at 224 for `mambaout_tiny`: ours as
`mambaout validate` runs it (through `prepare_for_inference`) and timm's model as timm's validate.py runs it
(eval mode, fp32). Cases alternate repeat by repeat in one process so a noisy machine slows them alike; the report
gives medians, spreads and ours/timm ratios, and writes training_cpu.json and training_cpu.png under --out.

    python benchmarks/training_cpu.py --repeats 5 --out benchmark_results
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import matplotlib
import timm
import torch
from torch import nn

import mambaout
from mambaout.engine.evaluate import evaluate
from mambaout.engine.inference import prepare_for_inference

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend


def train_steps(model: nn.Module, steps: int, batch: int, size: int, dtype: torch.dtype | None) -> float:
    """Seconds for `steps` optimizer steps (after one untimed warm-up step)."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))

    def step():
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - start


def validation_seconds(model: nn.Module, batches: int, batch: int, size: int) -> float:
    data = [(torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,)), []) for _ in range(batches)]
    evaluate(model, data[:1], "cpu", progress=False)  # warm-up
    return evaluate(model, data, "cpu", progress=False).seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-model", default="mambaout_femto")
    parser.add_argument("--val-model", default="mambaout_tiny")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--val-batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per training repeat")
    parser.add_argument("--val-batches", type=int, default=2, help="batches per validation repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("benchmark_results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    ours_train = mambaout.create_model(args.train_model)
    timm_train = timm.create_model(args.train_model)
    ours_val = prepare_for_inference(mambaout.create_model(args.val_model), device="cpu")
    timm_val = timm.create_model(args.val_model).eval()
    images_train = args.steps * args.train_batch
    images_val = args.val_batches * args.val_batch
    cases = {
        ("train", "ours"): lambda: images_train / train_steps(ours_train, args.steps, args.train_batch, args.size,
                                                              torch.bfloat16),
        ("train", "timm"): lambda: images_train / train_steps(timm_train, args.steps, args.train_batch, args.size,
                                                              torch.bfloat16),
        ("validate", "ours"): lambda: images_val / validation_seconds(ours_val, args.val_batches, args.val_batch,
                                                                      args.size),
        ("validate", "timm"): lambda: images_val / validation_seconds(timm_val, args.val_batches, args.val_batch,
                                                                      args.size),
    }  # fmt: skip
    rates: dict[tuple[str, str], list[float]] = {key: [] for key in cases}
    order = list(cases)
    for repeat in range(args.repeats):
        for key in order[repeat % len(order) :] + order[: repeat % len(order)]:  # rotate the order each repeat
            rates[key].append(cases[key]())
            print(f"repeat {repeat}: {key[0]:<8} {key[1]:<4} {rates[key][-1]:7.2f} images/s", flush=True)

    rows = []
    for task, model_name, batch in (("train", args.train_model, args.train_batch),
                                     ("validate", args.val_model, args.val_batch)):  # fmt: skip
        ours, theirs = (statistics.median(rates[(task, who)]) for who in ("ours", "timm"))
        rows.append(dict(task=task, model=model_name, batch=batch, ours_images_per_s=ours,
                         timm_images_per_s=theirs, ratio=ours / theirs,
                         ours_spread=max(rates[(task, "ours")]) - min(rates[(task, "ours")]),
                         timm_spread=max(rates[(task, "timm")]) - min(rates[(task, "timm")])))  # fmt: skip
    print(f"\n{args.size}x{args.size}, {args.threads} threads, median of {args.repeats} interleaved repeats")
    print(f"{'task':<9} {'model':<16} {'batch':>5} {'ours img/s':>11} {'timm img/s':>11} {'ours/timm':>10}")
    for r in rows:
        print(f"{r['task']:<9} {r['model']:<16} {r['batch']:>5} {r['ours_images_per_s']:>11.2f} "
              f"{r['timm_images_per_s']:>11.2f} {r['ratio']:>9.2f}x")  # fmt: skip

    args.out.mkdir(parents=True, exist_ok=True)
    meta = dict(torch=torch.__version__, timm=timm.__version__, machine=platform.processor() or platform.machine(),
                threads=args.threads, size=args.size, repeats=args.repeats,
                train="bf16 autocast, AdamW", validate="fp32, mambaout.engine.evaluate")  # fmt: skip
    (args.out / "training_cpu.json").write_text(json.dumps(dict(meta=meta, rows=rows, samples={
        f"{task}/{who}": values for (task, who), values in rates.items()}), indent=2))  # fmt: skip
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"{r['task']}\n{r['model']}" for r in rows]
    positions = range(len(rows))
    ax.bar([p - 0.2 for p in positions], [r["ours_images_per_s"] for r in rows], 0.4, label="mambaout")
    ax.bar([p + 0.2 for p in positions], [r["timm_images_per_s"] for r in rows], 0.4, label="timm")
    ax.set_xticks(list(positions), labels)
    ax.set_ylabel("images/s")
    ax.set_title(f"{args.size}x{args.size} on {args.threads} CPU threads (median of {args.repeats})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "training_cpu.png", dpi=100)
    print(f"wrote {args.out / 'training_cpu.json'} and training_cpu.png")


if __name__ == "__main__":
    main()

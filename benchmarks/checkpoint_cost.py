"""What a mid-epoch checkpoint costs next to a training step, for MambaOut-T at 224 and UperNet (MambaOut-T) at 512.

For each case, in one process: the median seconds of an optimizer step (forward, loss, backward, AdamW step, and the
EMA update where the recipe has one) and of the checkpoint the engine writes within an epoch (`CheckpointKeeper.save`
of model, EMA, optimizer and random states: the content checksum, torch.save to a temporary file, fsync, rename),
steps and checkpoints alternating so that a noisy machine slows both alike; then what reading it back with the
checksum verified takes, and the share of training time a checkpoint every --interval steps adds. Writes
checkpoint_cost.json under --out.

    python benchmarks/checkpoint_cost.py --repeats 3 --out benchmark_results
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3

import mambaout
from _machine import cpu_model
from mambaout.engine.checkpointing import CheckpointKeeper, capture_rng, load_training_checkpoint
from mambaout.engine.config import EngineConfig
from mambaout.engine.inference import cpu_supports_bf16
from mambaout.tasks.segmentation.upernet import create_segmenter

CASES = {
    "MambaOut-T 224, batch {batch}": dict(kind="classification", size=224),
    "UperNet MambaOut-T 512, batch {batch}": dict(kind="segmentation", size=512),
}




def build(kind: str, size: int, batch: int):
    """(model, EMA or None, optimizer, one step as a function) as the recipe trains it."""
    if kind == "classification":
        model = mambaout.create_model("mambaout_tiny")
        ema = ModelEmaV3(model, decay=0.9999)  # MambaOut's recipe keeps an EMA
        images, targets = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))

        def loss() -> torch.Tensor:
            return F.cross_entropy(model(images), targets)
    else:
        model = create_segmenter("mambaout_tiny", 150)
        ema = None  # mmseg's UperNet recipe has none
        images, labels = torch.randn(batch, 3, size, size), torch.randint(0, 150, (batch, size, size))

        def loss() -> torch.Tensor:
            logits, aux = model(images, with_aux=True)
            return sum(w * F.cross_entropy(F.interpolate(o, size=(size, size), mode="bilinear"), labels)
                       for w, o in ((1.0, logits), (0.4, aux)))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    dtype = torch.bfloat16 if cpu_supports_bf16() else None

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            value = loss()
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(model)

    return model, ema, optimizer, step


def measure(kind: str, size: int, batch: int, repeats: int, interval: int) -> dict:
    model, ema, optimizer, step = build(kind, size, batch)
    step()  # warm-up; creates the optimizer's state, which the checkpoint carries
    with tempfile.TemporaryDirectory() as folder:
        keeper = CheckpointKeeper(folder, keep=0)
        steps, writes = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            step()
            steps.append(time.perf_counter() - started)
            state = {"epoch": -1, "step_in_epoch": 1, "model": model.state_dict(),
                     "model_ema": None if ema is None else ema.module.state_dict(),
                     "optimizer": optimizer.state_dict(), "rng": [capture_rng()], "best": {}}
            started = time.perf_counter()
            path = keeper.save(state, None)
            writes.append(time.perf_counter() - started)
        started = time.perf_counter()
        load_training_checkpoint(path)
        read = time.perf_counter() - started
        size_mib = path.stat().st_size / 2**20
    step_s, write_s = statistics.median(steps), statistics.median(writes)
    return dict(step_s=step_s, checkpoint_s=write_s, checkpoint_mib=size_mib, read_verified_s=read,
                checkpoint_in_steps=write_s / step_s, overhead_at_interval=write_s / (interval * step_s + write_s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8, help="MambaOut-T's batch (UperNet's is 2, the paper's)")
    parser.add_argument("--interval", type=int, default=EngineConfig.checkpoint_interval,
                        help="steps between mid-epoch checkpoints (default: train's)")
    parser.add_argument("--out", default="benchmark_results")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "interval": args.interval, "cases": {}}
    print(f"{results['cpu']}, {results['threads']} threads; checkpoint every {args.interval} steps")
    print(f"{'case':<34} {'step s':>8} {'ckpt s':>8} {'MiB':>7} {'read s':>7} {'ckpt/step':>9} {'overhead':>9}")
    for template, case in CASES.items():
        batch = args.batch if case["kind"] == "classification" else 2
        row = measure(case["kind"], case["size"], batch, args.repeats, args.interval)
        name = template.format(batch=batch)
        results["cases"][name] = row
        print(f"{name:<34} {row['step_s']:8.2f} {row['checkpoint_s']:8.2f} {row['checkpoint_mib']:7.0f} "
              f"{row['read_verified_s']:7.2f} {row['checkpoint_in_steps']:9.2f} {row['overhead_at_interval']:9.2%}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoint_cost.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

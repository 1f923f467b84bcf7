"""Training and validation throughput of our MambaOut against timm's same model, driven by the same loops.

Training: forward, backward and an AdamW step under bf16 autocast (batch 32, 224x224 by default) for
`mambaout_femto`, ours and timm's, the same step function for both. Validation: `mambaout.engine.evaluate.evaluate`
(the loop `mambaout validate` and training use) over in-memory batches at 224 for `mambaout_tiny`: ours as
`mambaout validate` runs it (through `prepare_for_inference`) and timm's model as timm's validate.py runs it
(eval mode, fp32). Cases alternate repeat by repeat in one process so a noisy machine slows them alike; the report
gives medians, spreads and ours/timm ratios, and writes training_cpu.json and training_cpu.png under --out.

    python benchmarks/training_cpu.py --repeats 5 --out benchmark_results

--recipes: what training a family with its own recipe costs per step next to training it with MambaOut's recipe.
For one model of each family, one optimizer step as the engine runs it: `ClassificationTask`'s model, mixup and loss
(`build_model`, `build_loss`, `prepare`, `loss`), the optimizer of `Task.optimizer` (the recipe's no-weight-decay
rule), and the engine's own `TrainStep` (autocast, `backward`, `update_weights`: unscaling, clipping, the optimizer
step, the EMA update), every choice taken from `TrainConfig(model=..., recipe=...)`. Each model runs under its own
recipe and under --baseline-recipe (MambaOut-Femto's), interleaved repeat by repeat in one process; the report gives
medians, spreads, own/baseline ratios and each recipe's per-step settings, prints lscpu's model and ISA flags, and
writes training_cpu_recipes.json and training_cpu_recipes.png under --out. Data loading and the lr schedule are not
timed.

    python benchmarks/training_cpu.py --recipes --repeats 3 --out benchmark_results
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path

import matplotlib
import timm
import torch
from torch import nn

import mambaout
from mambaout.engine.evaluate import evaluate
from mambaout.engine.inference import cpu_supports_bf16, prepare_for_inference
from mambaout.engine.loop import TrainStep
from mambaout.engine.task import Batch
from mambaout.engine.train import ClassificationTask
from mambaout.engine.train_config import TrainConfig

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


RECIPE_MODELS = ("mambaout_femto", "vmamba_tiny", "vim_tiny", "local_vim_tiny", "local_vmamba_tiny", "plainmamba_l1",
                 "deit_tiny")  # fmt: skip
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")


def cpu_report() -> dict:
    """lscpu's model name and the ISA flags that decide CPU training speed (bf16 autocast above all)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        text = ""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    if not flags:  # no lscpu: the kernel's list
        match = re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
        flags = set(match.group(1).split()) if match else set()
    return dict(model=fields.get("Model name", platform.processor() or platform.machine()).strip(),
                flags={flag: flag in flags for flag in CPU_FLAGS},
                torch_capability=torch.backends.cpu.get_cpu_capability(),
                native_bf16=cpu_supports_bf16())  # fmt: skip


class RecipeStep:
    """One model under one recipe, set up as `engine.loop._fit` and `ClassificationTask.build` set a run up, and its
    optimizer step as `engine.loop._train_one_epoch` runs it (one process, no accumulation)."""

    def __init__(self, model_name: str, recipe: str | None, batch: int, size: int, num_classes: int = 1000) -> None:
        device = torch.device("cpu")
        self.config = config = TrainConfig(model=model_name, recipe=recipe, batch_size=batch, img_size=size,
                                           num_classes=num_classes, device="cpu")  # fmt: skip
        self.task = task = ClassificationTask(config)
        # ClassificationTask.build without its datasets, then engine.loop._fit's step
        torch.manual_seed(0)  # both recipes of a model start from the same weights
        task.world_size = 1
        model = task.build_model(num_classes).to(device)
        task.build_loss(num_classes)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        if config.grad_checkpointing:
            model.set_grad_checkpointing(True)
        self.train_step = TrainStep.create(config, model, task.optimizer(model, config.resolved_lr(1)), device)
        self.updates = 0
        generator = torch.Generator().manual_seed(1)
        self.images = torch.randn(batch, 3, size, size, generator=generator)
        self.targets = torch.randint(0, num_classes, (batch,), generator=generator)
        model.train()
        self.train_step.optimizer.zero_grad(set_to_none=True)

    def settings(self) -> dict:
        c = self.config
        return dict(recipe=c.recipe, amp_recipe=c.amp or "fp32", amp_used=self.train_step.amp or "fp32",
                    grad_scaler=self.train_step.scaler is not None,
                    clip=None if c.clip_grad is None else f"{c.clip_mode} {c.clip_grad:g}",
                    ema=c.model_ema_decay, drop_path=c.drop_path, no_weight_decay=c.no_weight_decay, opt=c.opt,
                    mixup=c.mixup, cutmix=c.cutmix, loss=type(self.task.loss_fn).__name__)  # fmt: skip

    def step(self) -> float:
        """Seconds for one optimizer step (the batch is copied before the clock starts: mixup works in place)."""
        task, step = self.task, self.train_step
        batch = Batch(self.images.clone(), self.targets.clone(), len(self.images), [])
        start = time.perf_counter()
        batch = task.prepare(batch)
        with step.autocast(torch.device("cpu")):
            loss, _ = task.loss(step.train_model, batch)
        loss.item()  # the engine reads the loss every step (its NaN stop)
        step.backward(loss)
        self.updates += 1
        step.update_weights(self.updates)
        return time.perf_counter() - start


def describe_settings(s: dict) -> str:
    amp = s["amp_used"] if s["amp_used"] == s["amp_recipe"] else f"{s['amp_used']} (recipe {s['amp_recipe']})"
    return (f"{amp}, {'clip ' + s['clip'] if s['clip'] else 'no clip'}, "
            f"{'EMA ' + format(s['ema'], 'g') if s['ema'] else 'no EMA'}, dp {s['drop_path']:g}, "
            f"wd {s['no_weight_decay']}")  # fmt: skip


def recipes_main(args: argparse.Namespace) -> None:
    cpu = cpu_report()
    print(
        f"CPU: {cpu['model']}; flags: "
        + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu["flags"].items())
        + f"; torch CPU capability {cpu['torch_capability']}, native bf16 {cpu['native_bf16']}",
        flush=True,
    )
    setup_start = time.perf_counter()
    cases: dict[tuple[str, str], RecipeStep] = {}
    for name in args.recipe_models:
        cases[(name, "own")] = RecipeStep(name, None, args.recipe_batch, args.size)
        cases[(name, "baseline")] = RecipeStep(name, args.baseline_recipe, args.recipe_batch, args.size)
        for key in ((name, "own"), (name, "baseline")):
            cases[key].step()  # untimed warm-up: first-call allocations, kernel selection
        print(
            f"set up {name}: own {describe_settings(cases[(name, 'own')].settings())}; "
            f"{args.baseline_recipe}: {describe_settings(cases[(name, 'baseline')].settings())}",
            flush=True,
        )
    print(f"set up and warm-up: {time.perf_counter() - setup_start:.0f} s", flush=True)

    seconds: dict[tuple[str, str], list[float]] = {key: [] for key in cases}
    for repeat in range(args.repeats):
        for name in args.recipe_models:
            # own and baseline back to back, their order swapped every repeat
            for who in ("own", "baseline") if repeat % 2 == 0 else ("baseline", "own"):
                steps = [cases[(name, who)].step() for _ in range(args.recipe_steps)]
                seconds[(name, who)].append(statistics.mean(steps))
                print(f"repeat {repeat}: {name:<18} {who:<8} {seconds[(name, who)][-1]:7.3f} s/step", flush=True)

    rows = []
    for name in args.recipe_models:
        own, base = seconds[(name, "own")], seconds[(name, "baseline")]
        paired = [a / b for a, b in zip(own, base)]  # each repeat's pair ran back to back
        rows.append(dict(model=name, batch=args.recipe_batch,
                         own=cases[(name, "own")].settings(), baseline=cases[(name, "baseline")].settings(),
                         own_s_per_step=statistics.median(own), own_spread=max(own) - min(own),
                         baseline_s_per_step=statistics.median(base), baseline_spread=max(base) - min(base),
                         ratio=statistics.median(own) / statistics.median(base),
                         paired_ratio_min=min(paired), paired_ratio_max=max(paired)))  # fmt: skip

    print(
        f"\n{args.size}x{args.size}, batch {args.recipe_batch}, {args.threads} threads, "
        f"{args.recipe_steps} step(s) per repeat, median of {args.repeats} interleaved repeats; "
        f"CPU {cpu['model']} (" + ", ".join(f for f, on in cpu["flags"].items() if on) + ")\n"
    )
    print(
        f"| model | own recipe | own per step | own s/step (spread) | {args.baseline_recipe} per step | "
        f"{args.baseline_recipe} s/step (spread) | own / {args.baseline_recipe} (paired range) |"
    )
    print("|---|---|---|---:|---|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['own']['recipe']} | {describe_settings(r['own'])} | "
            f"{r['own_s_per_step']:.3f} ({r['own_spread']:.3f}) | {describe_settings(r['baseline'])} | "
            f"{r['baseline_s_per_step']:.3f} ({r['baseline_spread']:.3f}) | "
            f"{r['ratio']:.2f}x ({r['paired_ratio_min']:.2f}-{r['paired_ratio_max']:.2f}) |"
        )

    args.out.mkdir(parents=True, exist_ok=True)
    meta = dict(torch=torch.__version__, timm=timm.__version__, cpu=cpu, threads=args.threads, size=args.size,
                batch=args.recipe_batch, steps_per_repeat=args.recipe_steps, repeats=args.repeats,
                baseline_recipe=args.baseline_recipe,
                timed="task.prepare (mixup/cutmix), forward + loss under autocast, loss.item(), backward, clip, "
                      "optimizer step, zero_grad, EMA update; not the data loader or the lr schedule")  # fmt: skip
    (args.out / "training_cpu_recipes.json").write_text(json.dumps(dict(meta=meta, rows=rows, samples={
        f"{name}/{who}": values for (name, who), values in seconds.items()}), indent=2))  # fmt: skip
    fig, ax = plt.subplots(figsize=(8, 4))
    positions = list(range(len(rows)))
    ratios = [r["ratio"] for r in rows]
    errors = [[r["ratio"] - r["paired_ratio_min"] for r in rows], [r["paired_ratio_max"] - r["ratio"] for r in rows]]
    colors = ["tab:orange" if v > 1 else "tab:blue" for v in ratios]
    ax.bar(positions, ratios, 0.6, yerr=errors, capsize=3, color=colors)
    ax.axhline(1.0, color="black", linewidth=0.8)
    for p, r in zip(positions, rows):
        ax.annotate(f"{r['ratio']:.2f}x\n{r['own']['amp_used']}", (p, r["paired_ratio_max"]), ha="center",
                    va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")  # fmt: skip
    ax.set_xticks(positions, [r["model"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"s/step, own recipe / {args.baseline_recipe}'s")
    ax.set_title(f"Own recipe vs {args.baseline_recipe}'s: one optimizer step, batch {args.recipe_batch} at "
                 f"{args.size}, {args.threads} CPU threads (median of {args.repeats})", fontsize=9)  # fmt: skip
    ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(args.out / "training_cpu_recipes.png", dpi=100)
    print(f"\nwrote {args.out / 'training_cpu_recipes.json'} and training_cpu_recipes.png")


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
    parser.add_argument(
        "--recipes",
        action="store_true",
        help="instead: each family's own recipe against --baseline-recipe, per optimizer step",
    )
    parser.add_argument("--recipe-models", nargs="+", default=list(RECIPE_MODELS), help="models for --recipes")
    parser.add_argument("--baseline-recipe", default="mambaout_femto", help="the recipe each model is compared under")
    parser.add_argument(
        "--recipe-batch",
        type=int,
        default=4,
        help="batch for --recipes (even: mixup pairs images; the slowest families take 10-20 s a step at 4 on 2 cores)",
    )
    parser.add_argument("--recipe-steps", type=int, default=1, help="timed optimizer steps per --recipes repeat")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.recipes:
        recipes_main(args)
        return

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

"""Training and validation throughput of our MambaOut against timm's same model at its fastest on this CPU.

Training (`--train-models`, MambaOut-Femto and -Tiny at batch 16 and 224 by default): one optimizer step, forward,
cross-entropy, backward and AdamW, of ours as `mambaout train` runs it (the engine's precision: bf16 autocast where the
CPU computes bf16 natively, else fp32; the Gated CNN block's fused training op; torch's fused AdamW; freed memory kept
in the heap, `--keep-freed-memory`) next to timm's same model in every configuration timm's train.py offers on a CPU
(fp32 or bf16 autocast where native, NCHW or --channels-last, eager or, with --compile-timm, --torchcompile); the ratio
is against the fastest of them. Each repeat of a case runs in a fresh process of its own, one process at a time,
after --warmup-steps untimed steps, so that heap settings stay with their case; every timm configuration runs once
more in a process that keeps freed memory (as MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=-1 would), reported beside as
the ratio without that part of our gain.
Validation: `mambaout.tasks.classification.evaluate.evaluate` over in-memory batches at 224 for `mambaout_tiny`, ours as
`mambaout validate` runs it (`prepare_for_inference`) and timm's model as timm's validate.py runs it (eval, fp32).
Cases alternate repeat by repeat, one at a time, so a noisy machine slows them alike; the report gives medians,
spreads and ratios, prints lscpu's model, and writes training_cpu.json and training_cpu.png under --out.

    python benchmarks/training_cpu.py --repeats 3 --out benchmark_results

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
import multiprocessing
import platform
import re
import statistics
import subprocess
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import matplotlib
import timm
import torch
from torch import nn

import mambaout
from mambaout.engine.host_memory import keep_freed_memory
from mambaout.engine.inference import cpu_supports_bf16, prepare_for_inference
from mambaout.engine.loop import TrainStep, training_precision
from mambaout.engine.task import FUSED_OPTIMIZERS, Batch
from mambaout.tasks.classification.config import TrainConfig
from mambaout.tasks.classification.evaluate import evaluate
from mambaout.tasks.classification.task import ClassificationTask

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend


class TrainCase:
    """One model's optimizer step (forward, cross-entropy, backward, AdamW) in one configuration."""

    def __init__(self, model: nn.Module, batch: int, size: int, amp: torch.dtype | None, channels_last: bool = False,
                 compiled: bool = False, fused_adamw: bool = False) -> None:
        torch.manual_seed(0)
        self.model = model.train()
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if compiled else self.model
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=fused_adamw or None)
        self.amp = amp
        self.images = torch.randn(batch, 3, size, size)
        if channels_last:
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        self.labels = torch.randint(0, 1000, (batch,))

    def step(self) -> None:
        with torch.autocast("cpu", dtype=self.amp or torch.float32, enabled=self.amp is not None):
            loss = nn.functional.cross_entropy(self.forward(self.images), self.labels)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def seconds(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        return time.perf_counter() - start


@dataclass(frozen=True)
class CaseSpec:
    """How one training case is built and in what kind of process it runs."""

    ours: bool
    amp: torch.dtype | None = None
    channels_last: bool = False
    compiled: bool = False
    kept_memory: bool = False  # the process keeps freed memory (`mambaout train` on a CPU does; timm's train.py not)

    def build(self, model_name: str, batch: int, size: int) -> TrainCase:
        model = (mambaout if self.ours else timm).create_model(model_name)
        return TrainCase(model, batch, size, self.amp, self.channels_last, self.compiled,
                         fused_adamw=self.ours and "adamw" in FUSED_OPTIMIZERS)


TIMM_KEPT = " +kept memory"  # timm's configurations in a process that keeps freed memory: not timm's train.py


def case_specs(compile_timm: bool) -> dict[str, CaseSpec]:
    """Ours as `mambaout train` runs it (the engine's precision for a recipe's --amp, fused AdamW, freed memory kept
    as TrainConfig.keep_freed_memory does by default) and timm's model in every configuration timm's train.py offers
    on a CPU: fp32 or bf16 autocast (where the CPU has native bf16), NCHW or --channels-last, eager or --torchcompile
    (with --compile-timm); each timm configuration again in a process that keeps freed memory, for reference."""
    amp = torch.bfloat16 if training_precision("fp16", torch.device("cpu")) == "bf16" else None
    specs = {"ours": CaseSpec(ours=True, amp=amp, kept_memory=TrainConfig.keep_freed_memory)}
    precisions = [("fp32", None)] + ([("bf16", torch.bfloat16)] if cpu_supports_bf16() else [])
    for kept in (False, True):
        for label, dtype in precisions:
            for layout in ("nchw", "channels_last"):
                for compiled in (False, True) if compile_timm else (False,):
                    name = f"timm {label} {layout}" + (" compiled" if compiled else "") + (TIMM_KEPT if kept else "")
                    specs[name] = CaseSpec(ours=False, amp=dtype, channels_last=layout == "channels_last",
                                           compiled=compiled, kept_memory=kept)
    return specs


def _case_process(conn: Connection, spec: CaseSpec, model_name: str, batch: int, size: int, threads: int,
                  warmup: int, steps: int) -> None:
    torch.set_num_threads(threads)
    if spec.kept_memory:
        keep_freed_memory()
    case = spec.build(model_name, batch, size)
    case.seconds(warmup)  # untimed: compilation, first-call allocations, malloc's adaptive thresholds settling
    conn.send(case.seconds(steps))


def case_seconds(spec: CaseSpec, model_name: str, batch: int, size: int, threads: int, warmup: int,
                 steps: int) -> float:
    """Seconds for `steps` optimizer steps of one case in a fresh process of its own, the only one running: each
    case's heap settings stay its own and no idle case holds memory while another runs."""
    context = multiprocessing.get_context("spawn")
    conn, child = context.Pipe(duplex=False)
    process = context.Process(target=_case_process, args=(child, spec, model_name, batch, size, threads, warmup, steps))
    process.start()
    child.close()
    try:
        seconds = conn.recv()
    except EOFError:  # the worker died before it sent its time
        seconds = None
    process.join()
    if seconds is None:
        raise RuntimeError(f"{model_name} ({spec}) died with exit code {process.exitcode}")
    return seconds


def validation_seconds(model: nn.Module, batches: int, batch: int, size: int) -> float:
    data = [(torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,)), []) for _ in range(batches)]
    evaluate(model, data[:1], "cpu", progress=False)  # warm-up
    return evaluate(model, data, "cpu", progress=False).seconds


RECIPE_MODELS = ("mambaout_femto", "vmamba_tiny", "vim_tiny", "local_vim_tiny", "local_vmamba_tiny", "plainmamba_l1",
                 "deit_tiny")
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
                native_bf16=cpu_supports_bf16())


class RecipeStep:
    """One model under one recipe, set up as `engine.loop._fit` and `ClassificationTask.build` set a run up, and its
    optimizer step as `engine.loop._train_one_epoch` runs it (one process, no accumulation)."""

    def __init__(self, model_name: str, recipe: str | None, batch: int, size: int, num_classes: int = 1000) -> None:
        device = torch.device("cpu")
        self.config = config = TrainConfig(model=model_name, recipe=recipe, batch_size=batch, img_size=size,
                                           num_classes=num_classes, device="cpu")
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
                    mixup=c.mixup, cutmix=c.cutmix, loss=type(self.task.loss_fn).__name__)

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
            f"wd {s['no_weight_decay']}")


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
                         paired_ratio_min=min(paired), paired_ratio_max=max(paired)))

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
                      "optimizer step, zero_grad, EMA update; not the data loader or the lr schedule")
    (args.out / "training_cpu_recipes.json").write_text(json.dumps(dict(meta=meta, rows=rows, samples={
        f"{name}/{who}": values for (name, who), values in seconds.items()}), indent=2))
    fig, ax = plt.subplots(figsize=(8, 4))
    positions = list(range(len(rows)))
    ratios = [r["ratio"] for r in rows]
    errors = [[r["ratio"] - r["paired_ratio_min"] for r in rows], [r["paired_ratio_max"] - r["ratio"] for r in rows]]
    colors = ["tab:orange" if v > 1 else "tab:blue" for v in ratios]
    ax.bar(positions, ratios, 0.6, yerr=errors, capsize=3, color=colors)
    ax.axhline(1.0, color="black", linewidth=0.8)
    for p, r in zip(positions, rows):
        ax.annotate(f"{r['ratio']:.2f}x\n{r['own']['amp_used']}", (p, r["paired_ratio_max"]), ha="center",
                    va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(positions, [r["model"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"s/step, own recipe / {args.baseline_recipe}'s")
    ax.set_title(f"Own recipe vs {args.baseline_recipe}'s: one optimizer step, batch {args.recipe_batch} at "
                 f"{args.size}, {args.threads} CPU threads (median of {args.repeats})", fontsize=9)
    ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(args.out / "training_cpu_recipes.png", dpi=100)
    print(f"\nwrote {args.out / 'training_cpu_recipes.json'} and training_cpu_recipes.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-models", nargs="+", default=["mambaout_femto", "mambaout_tiny"])
    parser.add_argument("--compile-timm", action="store_true",
                        help="also time timm's model under torch.compile (minutes of compilation per model)")
    parser.add_argument("--val-model", default="mambaout_tiny")
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--val-batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=2, help="timed optimizer steps per training repeat")
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed optimizer steps before them")
    parser.add_argument("--val-batches", type=int, default=2, help="batches per validation repeat")
    parser.add_argument("--repeats", type=int, default=3)
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

    cpu = cpu_report()
    print(f"CPU: {cpu['model']} ({', '.join(f for f, on in cpu['flags'].items() if on)}), "
          f"native bf16 {cpu['native_bf16']}", flush=True)
    rows, samples = [], {}
    specs = case_specs(args.compile_timm)
    for model_name in args.train_models:
        rates: dict[str, list[float]] = {key: [] for key in specs}
        order = list(specs)
        for repeat in range(args.repeats):
            for key in order[repeat % len(order) :] + order[: repeat % len(order)]:  # rotate the order each repeat
                seconds = case_seconds(specs[key], model_name, args.train_batch, args.size, args.threads,
                                       args.warmup_steps, args.steps)
                rates[key].append(args.steps * args.train_batch / seconds)
                print(f"repeat {repeat}: train {model_name} {key:<40} {rates[key][-1]:7.2f} images/s", flush=True)
        medians = {key: statistics.median(values) for key, values in rates.items()}
        best = max((key for key in medians if key != "ours" and TIMM_KEPT not in key), key=medians.get)
        best_kept = max((key for key in medians if TIMM_KEPT in key), key=medians.get)
        rows.append(dict(task="train", model=model_name, batch=args.train_batch, ours_images_per_s=medians["ours"],
                         timm_images_per_s=medians[best], timm_config=best, ratio=medians["ours"] / medians[best],
                         timm_kept_config=best_kept, ratio_to_timm_kept=medians["ours"] / medians[best_kept],
                         timm_configs=medians, ours_spread=max(rates["ours"]) - min(rates["ours"]),
                         timm_spread=max(rates[best]) - min(rates[best])))
        samples.update({f"train {model_name}/{key}": values for key, values in rates.items()})

    ours_val = prepare_for_inference(mambaout.create_model(args.val_model), device="cpu")
    timm_val = timm.create_model(args.val_model).eval()
    images_val = args.val_batches * args.val_batch
    val_cases = {"ours": ours_val, "timm": timm_val}
    val_rates: dict[str, list[float]] = {key: [] for key in val_cases}
    for repeat in range(args.repeats):
        for key in ("ours", "timm") if repeat % 2 == 0 else ("timm", "ours"):
            val_rates[key].append(images_val / validation_seconds(val_cases[key], args.val_batches, args.val_batch,
                                                                  args.size))
            print(f"repeat {repeat}: validate {key:<4} {val_rates[key][-1]:7.2f} images/s", flush=True)
    ours, theirs = statistics.median(val_rates["ours"]), statistics.median(val_rates["timm"])
    rows.append(dict(task="validate", model=args.val_model, batch=args.val_batch, ours_images_per_s=ours,
                     timm_images_per_s=theirs, timm_config="timm fp32 eval", ratio=ours / theirs,
                     ours_spread=max(val_rates["ours"]) - min(val_rates["ours"]),
                     timm_spread=max(val_rates["timm"]) - min(val_rates["timm"])))
    samples.update({f"validate/{key}": values for key, values in val_rates.items()})

    print(f"\n{args.size}x{args.size}, {args.threads} threads, median of {args.repeats} interleaved repeats, "
          f"CPU {cpu['model']}\n")
    print("| task | model | batch | ours images/s | timm's best images/s | timm's best configuration | ours / timm |")
    print("|---|---|---:|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['task']} | {r['model']} | {r['batch']} | {r['ours_images_per_s']:.2f} | "
              f"{r['timm_images_per_s']:.2f} | {r['timm_config']} | {r['ratio']:.2f}x |")
    for r in rows:
        if "timm_configs" in r:
            print(f"{r['model']}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["timm_configs"].items()))
            print(f"  ours / timm's best in a process that keeps freed memory ({r['timm_kept_config']}, not what "
                  f"timm's train.py runs): {r['ratio_to_timm_kept']:.2f}x")

    args.out.mkdir(parents=True, exist_ok=True)
    meta = dict(torch=torch.__version__, timm=timm.__version__, cpu=cpu, threads=args.threads, size=args.size,
                repeats=args.repeats, steps=args.steps,
                train="forward + cross-entropy + backward + AdamW; ours with the engine's precision and fused AdamW",
                validate="fp32, mambaout.tasks.classification.evaluate")
    (args.out / "training_cpu.json").write_text(json.dumps(dict(meta=meta, rows=rows, samples=samples), indent=2))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"{r['task']}\n{r['model']}" for r in rows]
    positions = range(len(rows))
    ax.bar([p - 0.2 for p in positions], [r["ours_images_per_s"] for r in rows], 0.4, label="mambaout")
    ax.bar([p + 0.2 for p in positions], [r["timm_images_per_s"] for r in rows], 0.4, label="timm's best")
    for p, r in zip(positions, rows):
        ax.annotate(f"{r['ratio']:.2f}x", (p, max(r["ours_images_per_s"], r["timm_images_per_s"])), ha="center",
                    va="bottom", fontsize=8)
    ax.set_xticks(list(positions), labels)
    ax.set_ylabel("images/s")
    ax.set_title(f"{args.size}x{args.size} on {args.threads} CPU threads, {cpu['model']} (median of {args.repeats})",
                 fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "training_cpu.png", dpi=100)
    print(f"wrote {args.out / 'training_cpu.json'} and training_cpu.png")


if __name__ == "__main__":
    main()

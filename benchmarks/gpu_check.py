"""One command for a machine with one NVIDIA GPU: does everything that only a GPU exercises work, and how fast is it?

    python benchmarks/gpu_check.py --out benchmark_results          # or: make gpu-check

Four sections, each row guarded (a failing row prints FAIL with its error line and the script goes on; the exit code is
1 when any row failed), under 8 minutes on one recent GPU:

1. scan: the Triton selective scan against the float64 per-step reference (the oracle of the tests), float32 and
   bfloat16 inputs, forward (output and last state) and backward (every input's gradient), at the scan shapes of
   VMamba-T (v0) stage 1, VMamba-T[s1l8] stage 1 and Vim-Ti at 224. Error: max |x - ref| and max |x - ref| / max |ref|
   (the tests' measure: an element-wise ratio is meaningless where the reference crosses zero), against a tolerance.
2. train: 20 bf16-autocast optimizer steps of one model per family on one fixed synthetic batch (batch 8 at 224), run
   by the engine's own pieces: `TrainConfig` + `ClassificationTask` (model, loss, the recipe's optimizer and
   no-weight-decay groups) + `TrainStep` (autocast, backward, clipping, optimizer step), with mixup, cutmix, label
   smoothing, drop path and EMA off and a fixed lr, so that overfitting the batch must lower the loss.
3. ddp: DistributedDataParallel over nccl in this one process (world size 1, a file:// rendezvous): a few steps must
   leave the same weights as the same steps without DDP, and an all_reduce must give the expected sum.
4. throughput: images/s at 224, batch 256, bf16 autocast inference: our MambaOut-T through `prepare_for_inference`
   (the path of `mambaout validate`) and timm's `mambaout_tiny`, each eager and torch.compile'd; our VMamba-T (v0 and
   [s1l8]) and Vim-Ti eager; beside the published figures and the GPUs they were measured on.

`--device cpu --smoke` runs the same code at tiny shapes on the CPU (the test suite's check of this script): the CPU
scan backend (numba, else chunked) in place of Triton, gloo in place of nccl, the registry's *_test variants, and
dynamo's "eager" backend in place of inductor (inductor needs minutes on a small CPU). `--device cpu` alone runs the
full sizes on the CPU (tens of minutes: the float64 reference's backward at L 3136 alone takes minutes there).
Without CUDA and without `--device cpu` the script exits with code 2 and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import timm
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import mambaout
from _machine import cpu_model
from mambaout.engine.inference import InferenceModel, prepare_for_inference
from mambaout.engine.loop import TrainStep
from mambaout.engine.task import Batch
from mambaout.ops.selective_scan import selective_scan
from mambaout.tasks.classification.config import TrainConfig
from mambaout.tasks.classification.task import ClassificationTask

SECTIONS = ("scan", "train", "ddp", "throughput")
# seconds each section should take on one recent GPU (printed beside what it took; the total stays under 8 minutes)
GPU_BUDGETS = {"scan": 60.0, "train": 120.0, "ddp": 20.0, "throughput": 240.0}
SMOKE_BUDGETS = {"scan": 10.0, "train": 15.0, "ddp": 5.0, "throughput": 15.0}
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


# ---------------------------------------------------------------------------------------------------------------------
# Rows and the guard around each


@dataclass
class Row:
    section: str
    check: str
    status: str  # "PASS" or "FAIL"
    measured: str
    published: str = ""
    seconds: float = 0.0
    data: dict = field(default_factory=dict)


def error_line(error: BaseException) -> str:
    """The exception's type and first line: the table has room for one line, the traceback goes to stderr."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


def guarded(section: str, check: str, fn: Callable[[], list[Row]], device: torch.device) -> list[Row]:
    """`fn`'s rows, or one FAIL row with the error line when it raises: one broken check must not hide the others."""
    start = time.perf_counter()
    try:
        rows = fn()
    except Exception as error:  # any failure of a check is that check's result
        import traceback

        traceback.print_exc(file=sys.stderr)
        rows = [Row(section, check, "FAIL", error_line(error), seconds=time.perf_counter() - start)]
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the next check (an OOM one above all) starts from free memory
    for row in rows:
        print(f"  {row.status}  {row.check}: {row.measured} ({row.seconds:.1f} s)", flush=True)
    return rows


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------------------------
# Settings: the GPU run, or its CPU smoke version


@dataclass(frozen=True)
class ScanCase:
    """One selective-scan call as a model makes it: `directions` scans folded into the channel dimension."""

    label: str
    batch: int
    directions: int
    inner: int
    state: int
    length: int
    grouped: bool  # B/C as (batch, directions, N, L) (VMamba's groups), else (batch, N, L) (Vim's one group)
    gate: bool  # a z input (Vim gates inside the scan; VMamba gates after its out norm)

    @property
    def dim(self) -> int:
        return self.directions * self.inner

    def describe(self) -> str:
        bc = f"({self.batch}, {self.directions}, {self.state}, {self.length})" if self.grouped else (
            f"({self.batch}, {self.state}, {self.length})")
        return (f"u ({self.batch}, {self.directions}x{self.inner}, {self.length}), B/C {bc}, "
                f"{'z, ' if self.gate else ''}D, delta_bias, softplus")


# VMamba-T (v0, `vmamba_tiny`) stage 1 at 224: 56x56 tokens, 4 directions x d_inner 2 x 96, N 16, no z in the scan.
# Batch 2, not a training batch: the scan is independent per image, and the float64 per-step oracle keeps ~2.5 GB of
# autograd state per image at L 3136.
VMAMBA_S1 = ScanCase("VMamba-T stage 1", 2, 4, 192, 16, 3136, grouped=True, gate=False)
# VMamba-T[s1l8] (`vmamba2_tiny`, the model of the published 1686 images/s): d_inner 1 x 96, N 1
VMAMBA2_S1 = ScanCase("VMamba-T[s1l8] stage 1", 2, 4, 96, 1, 3136, grouped=True, gate=False)
# Vim-Ti at 224: 196 patches + the class token, d_inner 2 x 192, N 16; each direction is its own scan call
VIM_TI = ScanCase("Vim-Ti", 8, 1, 384, 16, 197, grouped=False, gate=True)
SMOKE_SCANS = (replace(VMAMBA_S1, batch=1, inner=4, state=4, length=49),
               replace(VMAMBA2_S1, batch=1, inner=4, length=49),
               replace(VIM_TI, batch=2, inner=8, state=4, length=17))

# error / max |ref| allowed, (forward, backward); tests/test_scan_triton.py's tolerances. bf16 rounds outputs and input
# gradients to 8 bits (2^-8 = 3.9e-3 of the element, less of the maximum).
SCAN_TOLERANCES = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (1e-2, 1e-2)}

TRAIN_MODELS = ("mambaout_tiny", "vmamba_tiny", "vim_tiny", "local_vim_tiny", "local_vmamba_tiny", "plainmamba_l1",
                "deit_tiny")
SMOKE_TRAIN_MODELS = ("mambaout_test", "vmamba_test", "vim_test", "local_vim_test", "local_vmamba_test",
                      "plainmamba_test", "deit_test")
NUM_CLASSES = 10
# A fixed lr for every family: the recipes' peak lrs are set for global batches of 1024-4096 after a warmup, and a
# batch of 8 overfits at this one without diverging.
TRAIN_LR = 5e-4


@dataclass(frozen=True)
class Speed:
    """One throughput row: whose model, which registry/timm name, compiled or not, the published figure."""

    label: str
    source: str  # "ours" or "timm"
    model: str
    compiled: bool
    published: str


A100 = "A100, batch 128 (VMamba's performance.md)"
RTX4090_EAGER = "3965 (RTX 4090, AMP; MambaOut README, timm)"
RTX4090_COMPILED = "6572 (RTX 4090, AMP, compiled; MambaOut README, timm)"
SPEEDS = (
    Speed("MambaOut-T timm eager", "timm", "mambaout_tiny", False, RTX4090_EAGER),
    Speed("MambaOut-T ours eager", "ours", "mambaout_tiny", False, RTX4090_EAGER),
    Speed("MambaOut-T timm compiled", "timm", "mambaout_tiny", True, RTX4090_COMPILED),
    Speed("MambaOut-T ours compiled", "ours", "mambaout_tiny", True, RTX4090_COMPILED),
    # the 1686 images/s are VMamba-T[s1l8]'s (vmamba2_tiny); Vanilla-VMamba-T (vmamba_tiny, v0) has 638
    Speed("VMamba-T[s1l8] ours eager", "ours", "vmamba2_tiny", False, f"1686 ({A100})"),
    Speed("Vanilla-VMamba-T ours eager", "ours", "vmamba_tiny", False, f"638 ({A100})"),
    Speed("Vim-Ti ours eager", "ours", "vim_tiny", False, "2357 (A100)"),
)
# timm has no test-sized MambaOut: its smallest, at the smoke size
SMOKE_SPEEDS = (
    Speed("MambaOut timm eager", "timm", "mambaout_femto", False, ""),
    Speed("MambaOut ours eager", "ours", "mambaout_test", False, ""),
    Speed("MambaOut timm compiled", "timm", "mambaout_femto", True, ""),
    Speed("MambaOut ours compiled", "ours", "mambaout_test", True, ""),
    Speed("VMamba ours eager", "ours", "vmamba_test", False, ""),
    Speed("Vim ours eager", "ours", "vim_test", False, ""),
)


@dataclass(frozen=True)
class Settings:
    device: torch.device
    smoke: bool
    scan_backend: str
    scan_cases: tuple[ScanCase, ...]
    train_models: tuple[str, ...]
    train_batch: int
    train_size: int
    train_steps: int
    ddp_model: str
    ddp_size: int
    speeds: tuple[Speed, ...]
    bench_batch: int
    bench_size: int
    bench_warmup: int
    bench_iters: int
    compile_backend: str | None  # None: the package's own compile path (inductor); "eager": dynamo tracing only
    budgets: dict[str, float]


def make_settings(device: torch.device, smoke: bool, scan_backend: str | None = None) -> Settings:
    if scan_backend is None:
        scan_backend = "triton" if device.type == "cuda" else ("numba" if _numba_importable() else "chunked")
    if smoke:
        return Settings(device, True, scan_backend, SMOKE_SCANS, SMOKE_TRAIN_MODELS, train_batch=4, train_size=64,
                        train_steps=6, ddp_model="mambaout_test", ddp_size=64, speeds=SMOKE_SPEEDS, bench_batch=2,
                        bench_size=64, bench_warmup=1, bench_iters=2, compile_backend="eager",
                        budgets=SMOKE_BUDGETS)
    return Settings(device, False, scan_backend, (VMAMBA_S1, VMAMBA2_S1, VIM_TI), TRAIN_MODELS, train_batch=8,
                    train_size=224, train_steps=20, ddp_model="mambaout_femto", ddp_size=224, speeds=SPEEDS,
                    bench_batch=256, bench_size=224, bench_warmup=3, bench_iters=10, compile_backend=None,
                    budgets=GPU_BUDGETS)


def _numba_importable() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------------------------
# 1. Selective-scan accuracy

ScanFn = Callable[..., tuple[Tensor, Tensor]]


def scan_inputs(case: ScanCase, dtype: torch.dtype, device: torch.device, seed: int = 0) -> dict[str, Tensor]:
    """Mamba's initialisation (A = -(1..N), dt = softplus(delta + bias) in [1e-3, 0.1]) with activations of unit scale;
    the activations in `dtype`, A, D and the bias in float32 as the models keep them."""
    g = torch.Generator().manual_seed(seed)
    b, d, n, length = case.batch, case.dim, case.state, case.length
    dt = torch.exp(torch.rand(d, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    bc_shape = (b, case.directions, n, length) if case.grouped else (b, n, length)
    inputs = {
        "u": torch.randn(b, d, length, generator=g).to(dtype),
        "delta": (torch.randn(b, d, length, generator=g) * 0.5).to(dtype),
        "A": -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1),
        "B": torch.randn(bc_shape, generator=g).to(dtype),
        "C": torch.randn(bc_shape, generator=g).to(dtype),
        "D": 1.0 + 0.1 * torch.randn(d, generator=g),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),  # inverse softplus
    }
    if case.gate:
        inputs["z"] = torch.randn(b, d, length, generator=g).to(dtype)
    return {k: v.to(device) for k, v in inputs.items()}


def backend_scan(backend: str) -> ScanFn:
    """The public op with one backend, returning (out, last state)."""

    def run(**kwargs):
        return selective_scan(**kwargs, delta_softplus=True, return_last_state=True, backend=backend)

    return run


def _run_scan(scan: ScanFn, inputs: dict[str, Tensor], weights: tuple[Tensor, Tensor], device: torch.device):
    """(out, last state, {name: grad or None}, forward s, backward s) of one forward and backward."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    synchronize(device)
    start = time.perf_counter()
    out, last = scan(**leaves)
    synchronize(device)
    forward_s = time.perf_counter() - start
    # the weights are exactly representable in the tested dtype, so the float64 run gets the same upstream gradient
    loss = (out.to(weights[0].dtype) * weights[0]).sum() + (last.to(weights[1].dtype) * weights[1]).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    synchronize(device)
    return out, last, dict(zip(leaves, grads)), forward_s, time.perf_counter() - start - forward_s


def _errors(actual: Tensor, expected: Tensor) -> tuple[float, float]:
    """(max |actual - expected|, that / max |expected|)."""
    abs_err = (actual.double() - expected).abs().max().item()
    return abs_err, abs_err / max(expected.abs().max().item(), 1e-30)


def scan_rows(case: ScanCase, dtype: torch.dtype, settings: Settings, scan: ScanFn | None = None,
              name: str | None = None) -> list[Row]:
    """A forward row and a backward row: `scan` (default: the settings' backend) against the float64 reference."""
    device = settings.device
    scan = scan or backend_scan(settings.scan_backend)
    name = name or settings.scan_backend
    inputs = scan_inputs(case, dtype, device)
    g = torch.Generator().manual_seed(1)
    out_shape, last_shape = (case.batch, case.dim, case.length), (case.batch, case.dim, case.state)
    weights = tuple(torch.randn(s, generator=g).to(dtype).float().to(device) for s in (out_shape, last_shape))
    out, last, grads, fwd_s, bwd_s = _run_scan(scan, inputs, weights, device)
    reference = {k: v.double() for k, v in inputs.items()}
    ref_out, ref_last, ref_grads, ref_fwd_s, ref_bwd_s = _run_scan(
        backend_scan("reference"), reference, tuple(w.double() for w in weights), device
    )
    fwd_tol, bwd_tol = SCAN_TOLERANCES[dtype]
    label = f"{case.label} {str(dtype).removeprefix('torch.')} {name} vs fp64 reference"

    fwd = {"out": _errors(out, ref_out), "last_state": _errors(last, ref_last)}
    worst_fwd = max(fwd, key=lambda k: fwd[k][1])
    fwd_ok = all(rel <= fwd_tol for _, rel in fwd.values()) and bool(torch.isfinite(out).all())
    rows = [Row("scan", f"{label}, forward", "PASS" if fwd_ok else "FAIL",
                f"worst {worst_fwd}: max|err| {fwd[worst_fwd][0]:.2e}, /max|ref| {fwd[worst_fwd][1]:.2e} "
                f"(tol {fwd_tol:g}); {case.describe()}", seconds=fwd_s + ref_fwd_s,
                data=dict(errors=fwd, tolerance=fwd_tol, seconds=fwd_s))]

    missing = [k for k in ref_grads if grads.get(k) is None]
    bwd = {k: _errors(grads[k], ref_grads[k]) for k in ref_grads if k not in missing}
    worst = max(bwd, key=lambda k: bwd[k][1]) if bwd else None
    bwd_ok = not missing and all(rel <= bwd_tol and math.isfinite(rel) for _, rel in bwd.values())
    measured = f"worst d{worst}: max|err| {bwd[worst][0]:.2e}, /max|ref| {bwd[worst][1]:.2e}" if worst else ""
    measured += f" (tol {bwd_tol:g}) over d" + ", d".join(bwd)
    if missing:
        measured = f"no gradient for {', '.join(missing)}; " + measured
    rows.append(Row("scan", f"{label}, backward", "PASS" if bwd_ok else "FAIL", measured, seconds=bwd_s + ref_bwd_s,
                    data=dict(errors=bwd, missing=missing, tolerance=bwd_tol, seconds=bwd_s)))
    return rows


def scan_section(settings: Settings) -> list[Row]:
    rows = []
    for case in settings.scan_cases:
        for dtype in (torch.float32, torch.bfloat16):
            check = f"{case.label} {dtype}"
            rows += guarded("scan", check, lambda c=case, d=dtype: scan_rows(c, d, settings), settings.device)
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# 2. Training steps of every family


def train_row(model_name: str, settings: Settings) -> list[Row]:
    """`train_steps` optimizer steps on one fixed batch, set up as `engine.loop._fit` sets a run up."""
    device, batch, size = settings.device, settings.train_batch, settings.train_size
    torch.manual_seed(0)
    config = TrainConfig(model=model_name, device=device.type, batch_size=batch, img_size=size,
                         num_classes=NUM_CLASSES, amp="bf16", mixup=0.0, cutmix=0.0, smoothing=0.0, drop_path=0.0,
                         model_ema_decay=0.0)
    task = ClassificationTask(config)
    task.world_size = 1
    model = task.build_model(NUM_CLASSES).to(device)
    task.build_loss(NUM_CLASSES)
    step = TrainStep.create(config, model, task.optimizer(model, TRAIN_LR), device)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, size, size, generator=g).to(device)
    targets = (torch.arange(batch) % NUM_CLASSES).to(device)
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    timed_from = start
    for update in range(1, settings.train_steps + 1):
        if update == 2:  # the first step compiles kernels and allocates: not a speed
            synchronize(device)
            timed_from = time.perf_counter()
        prepared = task.prepare(Batch(images, targets, batch, []))
        with step.autocast(device):
            loss, _ = task.loss(step.train_model, prepared)
        losses.append(loss.item())  # the engine reads it every step too (its NaN stop)
        step.backward(loss)
        step.update_weights(update)
    synchronize(device)
    end = time.perf_counter()
    rate = (settings.train_steps - 1) * batch / (end - timed_from) if settings.train_steps > 1 else float("nan")
    finite = all(math.isfinite(v) for v in losses)
    ok = finite and losses[-1] < losses[0]
    verdict = "" if finite else "non-finite loss; "
    measured = (
        f"{verdict}loss {losses[0]:.3f} -> {losses[-1]:.3f} in {settings.train_steps} steps, {rate:.0f} "
        f"images/s ({step.amp or 'fp32'} autocast, clip {config.clip_grad}, {config.opt} lr {TRAIN_LR:g})"
    )
    return [Row("train", f"{model_name} batch {batch} at {size}", "PASS" if ok else "FAIL", measured,
                seconds=end - start, data=dict(losses=losses, images_per_s=rate, amp=step.amp))]


def train_section(settings: Settings) -> list[Row]:
    return [row for name in settings.train_models
            for row in guarded("train", name, lambda n=name: train_row(n, settings), settings.device)]


# ---------------------------------------------------------------------------------------------------------------------
# 3. DDP in one process


@contextlib.contextmanager
def process_group(backend: str) -> Iterator[None]:
    """A world-size-1 process group on a file:// rendezvous (no port to pick, nothing leaves the machine)."""
    if dist.is_initialized():
        raise RuntimeError("a process group is already initialised in this process")
    with tempfile.TemporaryDirectory() as folder:
        dist.init_process_group(backend, init_method=f"file://{folder}/rendezvous", world_size=1, rank=0)
        try:
            yield
        finally:
            dist.destroy_process_group()


def ddp_row(settings: Settings) -> list[Row]:
    device = settings.device
    backend = "nccl" if device.type == "cuda" else "gloo"
    start = time.perf_counter()
    with process_group(backend):
        torch.manual_seed(0)
        plain = mambaout.create_model(settings.ddp_model, num_classes=NUM_CLASSES).to(device)
        wrapped = DistributedDataParallel(copy.deepcopy(plain), device_ids=[device.index or 0] if device.type == "cuda"
                                          else None)
        g = torch.Generator().manual_seed(2)
        images = torch.randn(2, 3, settings.ddp_size, settings.ddp_size, generator=g).to(device)
        targets = torch.tensor([0, 1], device=device)
        for model in (plain, wrapped):
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            for _ in range(3):
                nn.functional.cross_entropy(model(images), targets).backward()  # DDP all-reduces the gradients here
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        drift = max((a - b).abs().max().item() for a, b in zip(plain.parameters(), wrapped.module.parameters()))
        scale = max(p.abs().max().item() for p in plain.parameters())
        value = torch.tensor([1.0, 2.0, 3.0], device=device) * (dist.get_rank() + 1)
        dist.all_reduce(value)  # sum over the world of rank-scaled values: (1, 2, 3) x sum(rank + 1)
        expected = torch.tensor([1.0, 2.0, 3.0]) * sum(r + 1 for r in range(dist.get_world_size()))
        reduced_ok = torch.equal(value.cpu(), expected)
        synchronize(device)
    # the same three SGD steps with and without DDP: equal up to non-deterministic kernels' rounding
    weights_ok = drift <= 1e-4 * max(scale, 1.0)
    ok = reduced_ok and weights_ok
    measured = (
        f"world size 1: 3 SGD steps of {settings.ddp_model}, max |DDP - plain| weight "
        f"{drift:.1e}; all_reduce {value.tolist()} (expected {expected.tolist()})"
    )
    return [
        Row(
            "ddp",
            f"DistributedDataParallel over {backend}",
            "PASS" if ok else "FAIL",
            measured,
            seconds=time.perf_counter() - start,
            data=dict(weight_drift=drift, all_reduce=value.tolist()),
        )
    ]


def ddp_section(settings: Settings) -> list[Row]:
    return guarded("ddp", "DistributedDataParallel", lambda: ddp_row(settings), settings.device)


# ---------------------------------------------------------------------------------------------------------------------
# 4. Inference throughput


def images_per_second(run: Callable[[Tensor], Tensor], images: Tensor, warmup: int, iters: int,
                      device: torch.device) -> tuple[float, Tensor]:
    for _ in range(warmup):  # compilation, cudnn's algorithm search, the allocator's first pools
        out = run(images)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        out = run(images)
    synchronize(device)
    return iters * len(images) / (time.perf_counter() - start), out


def runner(speed: Speed, settings: Settings) -> Callable[[Tensor], Tensor]:
    """The forward pass as its owner runs it: ours through `prepare_for_inference`, timm's under plain autocast."""
    device = settings.device
    if speed.source == "ours":
        model = mambaout.create_model(speed.model)
        own_compile = speed.compiled and settings.compile_backend is None
        wrapped = prepare_for_inference(model, device=device, precision="bf16", channels_last="auto",
                                        compile=own_compile)
        if speed.compiled and not own_compile:
            return torch.compile(wrapped, backend=settings.compile_backend)
        return wrapped
    model = timm.create_model(speed.model).eval().to(device)
    forward = torch.compile(model, backend=settings.compile_backend or "inductor") if speed.compiled else model

    def run(x: Tensor) -> Tensor:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            return forward(x)

    return run


def speed_row(speed: Speed, settings: Settings, rates: dict[tuple[str, str, bool], float]) -> list[Row]:
    device = settings.device
    torch._dynamo.reset()  # each compiled model starts from an empty cache
    start = time.perf_counter()
    run = runner(speed, settings)
    g = torch.Generator().manual_seed(3)
    images = torch.randn(settings.bench_batch, 3, settings.bench_size, settings.bench_size, generator=g).to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # dynamo's notes about graph breaks
        rate, out = images_per_second(run, images, settings.bench_warmup, settings.bench_iters, device)
    finite = bool(torch.isfinite(out.float()).all())
    # prepare_for_inference falls back to eager (with a warning) when compilation fails: a compiled row must not
    # report that eager speed as compiled
    fell_back = speed.compiled and isinstance(run, InferenceModel) and run.compiled is None
    rates[(speed.source, speed.model, speed.compiled)] = rate
    theirs = rates.get(("timm", speed.model, speed.compiled))  # a ratio only for the same model, run the same way
    measured = f"{rate:.0f} images/s" + ("" if finite else ", non-finite outputs")
    measured += ", torch.compile failed: ran eagerly" if fell_back else ""
    if speed.source == "ours" and theirs:
        measured += f" ({rate / theirs:.2f}x timm's)"
    compiled = "" if not speed.compiled else f", torch.compile ({settings.compile_backend or 'inductor'})"
    measured += f"; bf16 autocast{compiled}, {settings.bench_warmup} warm-up + {settings.bench_iters} timed batches"
    check = f"{speed.label} ({speed.model}) batch {settings.bench_batch} at {settings.bench_size}"
    return [Row("throughput", check, "PASS" if finite and not fell_back else "FAIL", measured, speed.published,
                seconds=time.perf_counter() - start, data=dict(images_per_s=rate))]


def throughput_section(settings: Settings) -> list[Row]:
    if settings.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as timm's benchmark.py runs
    rates: dict[tuple[str, str, bool], float] = {}
    rows = []
    for speed in settings.speeds:
        rows += guarded("throughput", speed.label, lambda s=speed: speed_row(s, settings, rates), settings.device)
    return rows


SECTION_RUNNERS: dict[str, Callable[[Settings], list[Row]]] = {
    "scan": scan_section,
    "train": train_section,
    "ddp": ddp_section,
    "throughput": throughput_section,
}


# ---------------------------------------------------------------------------------------------------------------------
# The report


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        triton = _version("triton")
        return (f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}, torch {torch.__version__}, "
                f"triton {triton}, timm {timm.__version__})")
    return f"CPU {cpu_model()} (torch {torch.__version__}, timm {timm.__version__})"


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return "not installed"




def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[Row], header: str, timings: list[dict], total_s: float) -> str:
    lines = [header, "", "| section | check | result | measured | published | s |", "|---|---|---|---|---|---:|"]
    lines += [f"| {r.section} | {_cell(r.check)} | {r.status} | {_cell(r.measured)} | {_cell(r.published)} | "
              f"{r.seconds:.1f} |" for r in rows]
    lines += ["", "| section | budget s | took s |", "|---|---:|---:|"]
    lines += [f"| {t['section']} | {t['budget_s']:.0f} | {t['seconds']:.1f} |" for t in timings]
    failed = sum(r.status != "PASS" for r in rows)
    lines += ["", f"total {total_s:.0f} s; {len(rows) - failed} of {len(rows)} rows passed"]
    return "\n".join(lines)


def run_checks(settings: Settings, sections: tuple[str, ...] = SECTIONS) -> tuple[list[Row], list[dict], float]:
    """Every row of `sections`, and each section's time beside its budget."""
    rows: list[Row] = []
    timings = []
    total_start = time.perf_counter()
    for section in sections:
        budget = settings.budgets[section]
        print(f"== {section} (budget {budget:.0f} s) ==", flush=True)
        start = time.perf_counter()
        rows += SECTION_RUNNERS[section](settings)
        took = time.perf_counter() - start
        over = " OVER BUDGET" if took > budget else ""
        print(f"== {section}: {took:.1f} s of {budget:.0f} s{over} ==", flush=True)
        timings.append(dict(section=section, budget_s=budget, seconds=took))
    return rows, timings, time.perf_counter() - total_start


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, test variants, a few steps")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument(
        "--scan-backend",
        choices=("triton", "numba", "chunked"),
        help="the backend checked against the reference (default: triton on cuda, numba on cpu)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmark_results"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False). This check needs one NVIDIA GPU; "
              "`--device cpu --smoke` runs its CPU smoke version.", file=sys.stderr)
        return 2
    if device.type not in ("cuda", "cpu"):
        print(f"gpu_check: --device must be cuda or cpu, not {args.device!r}", file=sys.stderr)
        return 2
    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)
        torch.cuda.set_device(device)
    settings = make_settings(device, args.smoke, args.scan_backend)
    mode = "smoke (tiny shapes)" if settings.smoke else "full"
    header = f"# gpu_check on {machine(device)}: {mode}, scan backend {settings.scan_backend}"
    print(header, flush=True)
    rows, timings, total_s = run_checks(settings, tuple(args.sections))
    table = markdown(rows, header, timings, total_s)
    print("\n" + table, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "gpu_check_smoke" if settings.smoke else "gpu_check"
    meta = dict(machine=machine(device), device=str(device), smoke=settings.smoke, scan_backend=settings.scan_backend,
                torch=torch.__version__, timm=timm.__version__, total_s=total_s)
    (args.out / f"{name}.json").write_text(json.dumps(dict(meta=meta, sections=timings, rows=[asdict(r) for r in rows]),
                                                      indent=2))
    (args.out / f"{name}.md").write_text(table + "\n")
    print(f"wrote {args.out / name}.json and {name}.md")
    return 1 if any(r.status != "PASS" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

"""One benchmark case (model, input size, batch, precision, mode) measured in a fresh child process.

Each case runs in its own process so that its peak memory is its own (CPU: the child's peak RSS from
`getrusage`; CUDA: `max_memory_allocated`) and so that a case that runs out of memory, crashes or hangs is
recorded and the sweep goes on. Children are forked from a forkserver that has already imported torch and this
package, so a case starts in a fraction of a second instead of paying the imports again.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import multiprocessing
import resource
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..engine.inference import PRECISIONS, prepare_for_inference
from ..ops.selective_scan import scan_backend

TIMM_PREFIX = "timm:"
MODES = ("infer", "train")
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


@dataclass(frozen=True)
class Case:
    """What to measure: `model` is a registered name or `timm:<name>`; `size` is (height, width)."""

    model: str
    size: tuple[int, int]
    batch: int = 1
    precision: str = "fp32"
    mode: str = "infer"
    device: str = "cpu"
    channels_last: bool = False
    compile: bool = False
    repeats: int = 5
    warmup: int = 2
    scan_backend: str = "auto"
    threads: int | None = None  # torch's intra-op threads on CPU (None: torch's default, one per core)
    # Emulates a smaller machine: the most memory the case may add once its model is built (CPU: a cap on the
    # address space, which over-counts resident memory, so the cap is approximate; CUDA: the allocator's cap).
    memory_limit_mb: float | None = None


def build_model(name: str, size: tuple[int, int] | None = None) -> nn.Module:
    """A registered model, or a timm model for `timm:<name>` (random weights; fixed-size ViTs built at `size`)."""
    if name.startswith(TIMM_PREFIX):
        import timm

        timm_name = name[len(TIMM_PREFIX) :]
        kwargs: dict[str, Any] = {}
        cfg = timm.models.get_pretrained_cfg(timm_name)
        if size is not None and cfg is not None and cfg.fixed_input_size:
            kwargs["img_size"] = size
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    from ..factory import create_model

    return create_model(name)


def classify_failure(error: BaseException) -> str:
    """'oom' for the ways torch and Python report exhausted memory, 'error' for anything else."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return "oom"
    if isinstance(error, RuntimeError) and any(m in str(error).lower() for m in _OOM_MESSAGES):
        return "oom"
    return "error"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _threads(threads: int | None):
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def matmul_peak_gflops(
    device: str = "cpu", precision: str = "fp32", n: int | None = None, repeats: int = 3, threads: int | None = None
) -> float:
    """The best GFLOP/s of an n x n matmul at `precision`: the yardstick for a model's effective GFLOP/s."""
    dev = torch.device(device)
    n = n or (8192 if dev.type == "cuda" else 2048)
    a = torch.randn(n, n, device=dev, dtype=PRECISIONS[precision])
    b = torch.randn(n, n, device=dev, dtype=PRECISIONS[precision])
    best = float("inf")
    with _threads(threads):
        a @ b  # warm-up: library initialisation, thread pools, kernel selection
        for _ in range(repeats):
            _synchronize(dev)
            start = time.perf_counter()
            a @ b
            _synchronize(dev)
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _peak_rss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform.startswith("linux") else None


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing from /proc/self/status")


def _memory_before_timing(device: torch.device) -> int:
    """Memory held before the timed steps, with the peak reset to it so that the peak is the timed steps' own.

    Without the reset, a CPU peak would include one-off costs of the first call that no later batch pays again
    (loading a JIT's compiler and kernels: about 100 MiB for numba). Memory that malloc kept from the warm-up is
    handed back first, or the timed steps would reuse it unseen (CUDA's count excludes its cache anyway).
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:  # Linux: "5" resets the peak RSS to the current RSS
            f.write("5")
        return _proc_status_bytes("VmRSS")
    except OSError:  # elsewhere: the peak so far (the increase then understates a case below an earlier peak)
        return _peak_rss_bytes()


def _limit_memory(device: torch.device, limit_mb: float) -> None:
    extra = int(limit_mb * 2**20)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        fraction = (torch.cuda.memory_allocated(device) + extra) / total
        torch.cuda.set_per_process_memory_fraction(min(fraction, 1.0), device)
    else:
        resource.setrlimit(resource.RLIMIT_AS, (_proc_status_bytes("VmSize") + extra, resource.RLIM_INFINITY))


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


def _infer_step(case: Case, model: nn.Module, device: torch.device):
    model = prepare_for_inference(
        model, device=device, precision=case.precision, channels_last=case.channels_last, compile=case.compile
    )

    def step(x: torch.Tensor) -> None:
        with torch.inference_mode():
            model(x)

    return step


def _train_step(case: Case, model: nn.Module, device: torch.device):
    model = model.train().to(device)
    if case.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none
    scaler = torch.amp.GradScaler(device.type, enabled=case.precision == "fp16")
    forward = torch.compile(model) if case.compile else model
    labels = torch.randint(0, getattr(model, "num_classes", 1000), (case.batch,), device=device)

    def step(x: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, case.precision):
            loss = nn.functional.cross_entropy(forward(x).float(), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def measure(case: Case) -> dict[str, Any]:
    """Time `case` in this process; returns latencies in ms and peak memory in MiB (raises on OOM)."""
    device = torch.device(case.device)
    if case.threads:
        torch.set_num_threads(case.threads)
    model = build_model(case.model, case.size)
    step = (_train_step if case.mode == "train" else _infer_step)(case, model, device)
    in_chans = getattr(model, "pretrained_cfg", {}).get("input_size", (3,))[0]
    memory_format = torch.channels_last if case.channels_last else torch.contiguous_format
    x = torch.randn(case.batch, in_chans, *case.size, device=device).contiguous(memory_format=memory_format)
    _synchronize(device)
    if case.memory_limit_mb is not None:
        _limit_memory(device, case.memory_limit_mb)

    latencies = []
    with scan_backend(case.scan_backend):
        for _ in range(case.warmup):
            step(x)
        _synchronize(device)
        baseline = _memory_before_timing(device)
        for _ in range(case.repeats):
            _synchronize(device)
            start = time.perf_counter()
            step(x)
            _synchronize(device)
            latencies.append(time.perf_counter() - start)

    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _peak_rss_bytes()
    quartiles = statistics.quantiles(latencies, n=4, method="inclusive") if len(latencies) > 1 else latencies * 3
    median = statistics.median(latencies)
    return dict(
        latency_ms_median=1e3 * median,
        latency_ms_min=1e3 * min(latencies),
        latency_ms_max=1e3 * max(latencies),
        latency_ms_p25=1e3 * quartiles[0],
        latency_ms_p75=1e3 * quartiles[2],
        images_per_s=case.batch / median,
        peak_memory_mb=peak / 2**20,
        baseline_memory_mb=baseline / 2**20,
        memory_increase_mb=(peak - baseline) / 2**20,
        memory_kind="cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss",
    )


def _child(case: Case, conn) -> None:
    if sys.platform.startswith("linux"):
        # The child inherits 'forkserver' as its default; locks made under it (numba makes one when it starts its
        # threads) are registered with the parent's resource tracker and reported as leaked at the parent's exit.
        multiprocessing.set_start_method("fork", force=True)
    try:
        result = dict(status="ok", message="", **measure(case))
    except Exception as e:  # every failure goes back to the parent as a status, never as a dead child
        status = classify_failure(e)
        message = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        if status == "error":
            message += "\n" + "".join(traceback.format_exception(e)[-3:])
        result = dict(status=status, message=message)
    conn.send(result)
    conn.close()


@contextlib.contextmanager
def _child_process(case: Case):
    context = multiprocessing.get_context("forkserver")
    # Imported once by the forkserver, then shared by every child it forks (only takes effect at the server's start).
    context.set_forkserver_preload(["torch", __name__])
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(case, send), daemon=True)
    process.start()
    send.close()
    try:
        yield process, receive
    finally:
        if process.is_alive():
            process.kill()
        process.join()
        receive.close()


def run_case(case: Case, timeout: float | None = None) -> dict[str, Any]:
    """Measure `case` in a fresh child; status 'ok', 'oom', 'timeout' (child killed after `timeout` s) or 'error'."""
    start = time.perf_counter()
    with _child_process(case) as (process, receive):
        if receive.poll(timeout):
            try:
                result = receive.recv()
            except EOFError:  # the child died before answering
                process.join()
                result = _died(process.exitcode)
        else:
            result = dict(status="timeout", message=f"no result after {timeout:g} s, child killed")
    result["wall_s"] = time.perf_counter() - start
    return {**asdict(case), **result}


def _died(exitcode: int | None) -> dict[str, str]:
    if exitcode == -9:  # SIGKILL: on Linux almost always the kernel's out-of-memory killer
        return dict(status="oom", message="child killed by SIGKILL (the kernel's out-of-memory killer?)")
    return dict(status="error", message=f"child exited with code {exitcode} before reporting")

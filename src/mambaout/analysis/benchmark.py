"""A fair side-by-side speed and memory sweep over models and input sizes, written as JSON, CSV and plots.

Every (model, size) case runs in a fresh child process (see `benchmark_case`); cases are ordered size by size so
that models compared at one size run close together in time on a shared machine. Next to each measurement: the
model's MACs at that size (counted on the meta device), the effective GFLOP/s (2·MACs·images/s, three times that
for a training step, whose backward costs about twice its forward) and its fraction of the machine's matmul peak,
measured at the same precision at the start of the same run.
"""

from __future__ import annotations

import csv
import difflib
import json
import logging
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..engine.inference import PRECISIONS
from ..errors import InputSizeError, MambaoutError
from ..ops.selective_scan import BACKENDS
from ..registry import UnknownModelError, get_model_spec
from .benchmark_case import MODES, TIMM_PREFIX, Case, build_model, matmul_peak_gflops, run_case
from .flops import count_macs, model_flops

log = logging.getLogger(__name__)

STATUSES = ("ok", "oom", "timeout", "error", "skipped")
TRAIN_FLOPS_FACTOR = 3  # forward + backward (about twice the forward), the usual convention
COLUMNS = (
    "model", "source", "family", "height", "width", "batch", "precision", "mode", "device", "channels_last",
    "compile", "scan_backend", "threads", "status", "images_per_s", "latency_ms_median", "latency_ms_min",
    "latency_ms_max", "latency_ms_p25", "latency_ms_p75", "peak_memory_mb", "baseline_memory_mb",
    "memory_increase_mb", "memory_kind", "params_m", "gmacs", "effective_gflops", "peak_fraction", "published_top1",
    "repeats", "warmup", "memory_limit_mb", "wall_s", "message",
)


class BenchmarkError(MambaoutError, ValueError):
    """Benchmark options that cannot run."""

    exit_code = 12


@dataclass
class BenchmarkResult:
    meta: dict[str, Any]
    rows: list[dict[str, Any]]
    files: list[Path] = field(default_factory=list)


def check_model_names(names: Sequence[str]) -> None:
    """Fail before any case runs on a name that is neither registered nor `timm:<a timm model>`."""
    for name in names:
        if not name.startswith(TIMM_PREFIX):
            get_model_spec(name)  # raises UnknownModelError naming the closest registered models
            continue
        import timm

        timm_name = name[len(TIMM_PREFIX) :]
        if not timm.is_model(timm_name):
            close = difflib.get_close_matches(timm_name, timm.list_models(), n=5, cutoff=0.5)
            hint = f" Closest: {', '.join(TIMM_PREFIX + c for c in close)}." if close else ""
            raise UnknownModelError(f"unknown timm model {timm_name!r} in {name!r}.{hint}")


def _check_options(
    sizes, batch, precision, mode, device, repeats, warmup, timeout, scan_backend, threads, memory_limit_mb
) -> torch.device:
    if not sizes:
        raise BenchmarkError("give at least one size")
    if any(h < 1 or w < 1 for h, w in sizes) or batch < 1:
        raise BenchmarkError(f"sizes and batch must be positive, got sizes {list(sizes)}, batch {batch}")
    if repeats < 1 or warmup < 0:
        raise BenchmarkError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    if precision not in PRECISIONS:
        raise BenchmarkError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if mode not in MODES:
        raise BenchmarkError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if scan_backend not in BACKENDS:
        raise BenchmarkError(f"scan backend must be one of {', '.join(BACKENDS)}, not {scan_backend!r}")
    if threads is not None and threads < 1:
        raise BenchmarkError(f"threads must be positive, got {threads}")
    if timeout is not None and timeout <= 0:
        raise BenchmarkError(f"timeout must be positive, got {timeout}")
    if memory_limit_mb is not None and memory_limit_mb <= 0:
        raise BenchmarkError(f"memory limit must be positive, got {memory_limit_mb}")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise BenchmarkError(f"device must be cpu or cuda, not {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError("--device cuda, but CUDA is not available here (use --device cpu)")
    if dev.type == "cpu" and memory_limit_mb is not None and not Path("/proc/self/status").exists():
        raise BenchmarkError("a CPU memory limit needs Linux's /proc (it caps the address space)")
    return dev


def _model_info(name: str, size: tuple[int, int]) -> dict[str, Any]:
    """Source, family, params, GMACs per image at `size` and published top-1; InputSizeError for our models."""
    if name.startswith(TIMM_PREFIX):
        info = dict(source="timm", family=name[len(TIMM_PREFIX) :].split("_")[0], published_top1=None)
        try:
            with torch.device("meta"):
                model = build_model(name, size)
            in_chans = model.pretrained_cfg.get("input_size", (3,))[0]
            report = count_macs(model, (1, in_chans, *size), name=name)
        except Exception as e:  # some timm models cannot run on the meta device: time them all the same
            log.debug("cannot count MACs of %s: %s", name, e)
            return {**info, "params_m": None, "gmacs": None}
    else:
        spec = get_model_spec(name)
        info = dict(source="mambaout", family=spec.family, published_top1=spec.published.top1)
        report = model_flops(name, size=size)
    return {**info, "params_m": report.params / 1e6, "gmacs": report.macs / 1e9}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _skip_reason(row_history: list[dict[str, Any]], size: tuple[int, int]) -> str | None:
    """A smaller input of the same model that ran out of memory or time: a larger one would too."""
    for row in row_history:
        if row["status"] in ("oom", "timeout") and row["height"] * row["width"] < size[0] * size[1]:
            return f"not run: {row['status']} at {row['height']}x{row['width']}"
    return None


def run_benchmark(
    models: Sequence[str],
    sizes: Sequence[int | tuple[int, int]],
    *,
    batch: int = 1,
    precision: str = "fp32",
    mode: str = "infer",
    device: str = "cpu",
    channels_last: bool = False,
    compile: bool = False,
    repeats: int = 5,
    warmup: int = 2,
    timeout: float | None = None,
    scan_backend: str = "auto",
    threads: int | None = None,
    memory_limit_mb: float | None = None,
    matmul_size: int | None = None,
    out: str | Path | None = None,
    progress: bool | None = None,
) -> BenchmarkResult:
    """Measure every (model, size) case; write results.json, results.csv and PNG plots to `out` if given.

    A case that runs out of memory or time is recorded ('oom', 'timeout'; larger sizes of that model are then
    'skipped'), one that fails otherwise is 'error' with the message, and the sweep goes on.
    """
    check_model_names(models)
    sizes = [(s, s) if isinstance(s, int) else tuple(s) for s in sizes]
    dev = _check_options(
        sizes, batch, precision, mode, device, repeats, warmup, timeout, scan_backend, threads, memory_limit_mb
    )
    if progress is None:
        progress = sys.stdout.isatty()

    peak = matmul_peak_gflops(str(dev), precision, n=matmul_size, threads=threads)
    meta = dict(
        mode=mode, precision=precision, batch=batch, device=str(dev), device_name=_device_name(dev),
        channels_last=channels_last, compile=compile, repeats=repeats, warmup=warmup, timeout_s=timeout,
        scan_backend=scan_backend, memory_limit_mb=memory_limit_mb, threads=threads or torch.get_num_threads(),
        matmul_gflops=peak, flops_per_mac=2 * (TRAIN_FLOPS_FACTOR if mode == "train" else 1),
        torch=torch.__version__, python=platform.python_version(), platform=platform.platform(),
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    cases = [
        Case(name, size, batch, precision, mode, str(dev), channels_last, compile, repeats, warmup, scan_backend,
             threads, memory_limit_mb)
        for size in sizes for name in models
    ]
    rows: list[dict[str, Any]] = []
    bar = tqdm(cases, desc="benchmark", unit="case", disable=not progress)
    for case in bar:
        bar.set_postfix_str(f"{case.model} {case.size[0]}x{case.size[1]}")
        rows.append(_run_one(case, timeout, meta, [r for r in rows if r["model"] == case.model]))
    bar.close()

    result = BenchmarkResult(meta, rows)
    if out is not None:
        result.files = write_results(result, out)
    return result


def _run_one(case: Case, timeout: float | None, meta: dict[str, Any], history: list[dict[str, Any]]) -> dict:
    skipped = _skip_reason(history, case.size)
    try:
        info = _model_info(case.model, case.size)
    except InputSizeError as e:
        info, measured = dict(source=None, family=None), dict(status="error", message=str(e))
    else:
        measured = dict(status="skipped", message=skipped) if skipped else run_case(case, timeout)
    row = {column: None for column in COLUMNS}
    row.update({k: v for k, v in vars(case).items() if k != "size"}, height=case.size[0], width=case.size[1])
    row.update(info)
    row.update({k: v for k, v in measured.items() if k in COLUMNS})
    if row["status"] == "ok" and row["gmacs"] is not None:
        row["effective_gflops"] = meta["flops_per_mac"] * row["gmacs"] * row["images_per_s"]
        row["peak_fraction"] = row["effective_gflops"] / meta["matmul_gflops"]
    return row


def write_results(result: BenchmarkResult, out: str | Path) -> list[Path]:
    """results.json (meta and rows), results.csv (rows) and the PNG plots; returns the paths written."""
    from .benchmark_plots import write_plots  # matplotlib only when writing: keeps `mambaout --help` quick

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out / "results.json", out / "results.csv"
    json_path.write_text(json.dumps(dict(meta=result.meta, results=result.rows), indent=2))
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(result.rows)
    return [json_path, csv_path, *write_plots(result.rows, result.meta, out)]


def format_table(result: BenchmarkResult) -> str:
    """A plain-text summary: one line per case."""
    meta = result.meta
    lines = [
        f"{meta['mode']}, batch {meta['batch']}, {meta['precision']}, {meta['device_name']}, {meta['threads']} "
        f"threads; matmul peak {meta['matmul_gflops']:.0f} GFLOP/s; median of {meta['repeats']} after "
        f"{meta['warmup']} warm-up",
        f"{'model':<22} {'size':>9} {'status':>7} {'img/s':>9} {'ms/batch':>9} {'min-max ms':>15} {'peak MiB':>9} "
        f"{'+MiB':>8} {'GMACs':>7} {'GFLOP/s':>8} {'%peak':>6}",
    ]

    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    for r in result.rows:
        size = f"{r['height']}x{r['width']}"
        spread = "-" if r["latency_ms_min"] is None else f"{r['latency_ms_min']:.1f}-{r['latency_ms_max']:.1f}"
        lines.append(
            f"{r['model']:<22} {size:>9} {r['status']:>7} {num(r['images_per_s'], '.2f'):>9} "
            f"{num(r['latency_ms_median'], '.1f'):>9} {spread:>15} {num(r['peak_memory_mb'], '.0f'):>9} "
            f"{num(r['memory_increase_mb'], '.0f'):>8} {num(r['gmacs'], '.2f'):>7} "
            f"{num(r['effective_gflops'], '.1f'):>8} {num(r['peak_fraction'], '.1%'):>6}"
        )
        if r["status"] != "ok" and r["message"]:
            lines.append(f"    {r['message'].splitlines()[0]}")
    return "\n".join(lines)

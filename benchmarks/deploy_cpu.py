"""Deployment backends on the CPU, side by side: images/s at 224 for batch 1 and 16, interleaved repeats.

Backends, per model: PyTorch fp32 eager; our fast path (`prepare_for_inference(fast=True)`: bf16 autocast where the
CPU has bf16 units, folded norms, channels-last and micro-batches for conv networks, torch.compile with frozen
weights) and the same without torch.compile (what `predict` and the demo run by default); ONNX Runtime CPU (all
graph optimizations) on the file `mambaout export` writes; ONNX Runtime with int8 dynamic quantization of the
MatMul / Gemm weights. For models timm also has (MambaOut), timm's configurations: fp32 eager, fp32 torch.compile,
fp32 torch.compile max-autotune, and bf16 autocast + compile where the CPU has bf16 units; "timm best" is the
fastest of them at each batch among those that agree with fp32 eager. Top-1 agreement with fp32 eager is measured
on generated images at every batch size (compiled code is specialised per shape, and can be wrong at one and right
at another); a configuration below AGREEMENT_FLOOR at a batch is not a candidate for "timm best" there.

Models run one after another (each one's backends interleaved, then freed), so memory holds one model's backends.

`--cap-isa avx2` reruns the script with torch, oneDNN, MKL and fbgemm held to AVX2 (ATEN_CPU_CAPABILITY and friends),
which is how an AVX2-only CPU (AMD EPYC Zen 2/3) runs our code and timm's; ONNX Runtime dispatches on the CPU's own
flags and cannot be held back, so its rows are left out there.

    python benchmarks/deploy_cpu.py --models mambaout_femto mambaout_tiny vmamba_tiny vim_tiny --demo-requests 30
    python benchmarks/deploy_cpu.py --models mambaout_femto --batches 16 --cap-isa avx2

Writes deploy_cpu.json (lscpu model and flags, the ISA cap) and deploy_cpu.png in --out.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ISA_CAPS = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",  # ATen's kernels and inductor's generated code
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
    }
}

if __name__ == "__main__" and "--cap-isa" in sys.argv:  # the caps must be set before torch loads
    cap = sys.argv[sys.argv.index("--cap-isa") + 1]
    if cap in ISA_CAPS and os.environ.get("MAMBAOUT_BENCH_ISA_CAP") != cap:
        env = {**os.environ, **ISA_CAPS[cap], "MAMBAOUT_BENCH_ISA_CAP": cap}
        sys.exit(subprocess.run([sys.executable, *sys.argv], env=env).returncode)

import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from mambaout import create_model  # noqa: E402
from mambaout.apps.export import export_model  # noqa: E402
from mambaout.engine.inference import cpu_supports_bf16, prepare_for_inference  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

Runner = Callable[[np.ndarray], np.ndarray]
REFERENCE = "torch_fp32_eager"
# random weights give near-tied logits that bf16 rounding flips now and then (0.97 seen); broken code gives ~0
AGREEMENT_FLOOR = 0.9


def lscpu() -> dict[str, object]:
    text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {
        "model": fields.get("Model name", "").strip(),
        "cpus": fields.get("CPU(s)", "").strip(),
        "flags_of_note": sorted(f for f in flags if f.startswith(("avx", "amx", "fma"))),
        "flags": flags,
    }


def torch_runner(model: Callable[[torch.Tensor], torch.Tensor], autocast_bf16: bool = False) -> Runner:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16):
            return model(torch.from_numpy(x)).float().numpy()

    return run


def ort_runner(path: Path) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def quantized(path: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path.with_suffix(".int8.onnx")
    quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    return out


TIMM_COMPILED = {  # key: (torch.compile mode, bf16 autocast)
    "timm_fp32_compile": (None, False),
    "timm_fp32_compile_max_autotune": ("max-autotune-no-cudagraphs", False),
    "timm_bf16_autocast_compile": (None, True),
}


def timm_compiled(reference: torch.nn.Module, key: str) -> Runner:
    mode, bf16 = TIMM_COMPILED[key]
    return torch_runner(torch.compile(copy.deepcopy(reference), mode=mode), autocast_bf16=bf16)


def crash_in_child(name: str, key: str, batch_sizes: list[int]) -> str | None:
    """Run one compiled timm configuration in a child process first, at every batch size: inductor's code can crash
    the process (max-autotune's GEMM template segfaulted at batch 1 on a Xeon with AMX), which would lose every
    result. None if it ran, else how it ended; the child's compilations stay in inductor's cache for the real run."""
    command = [sys.executable, __file__, "--probe", name, key, "--batches", *map(str, batch_sizes)]
    code = subprocess.run(command, capture_output=True).returncode
    if code == 0:
        return None
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


def timm_runners(name: str, model: torch.nn.Module, batch_sizes: list[int]) -> tuple[dict[str, Runner], dict]:
    """timm's configurations of the same weights (our MambaOut layout is timm's), where timm has the model, and the
    compiled ones that crashed in a child process (left out)."""
    import timm

    if name not in timm.list_models(name):
        return {}, {}
    reference = timm.create_model(name, pretrained=False).eval()
    reference.load_state_dict(model.state_dict())
    runners, crashed = {"timm_fp32_eager": torch_runner(reference)}, {}
    for key, (_, bf16) in TIMM_COMPILED.items():
        if bf16 and not cpu_supports_bf16():  # emulated bf16 is 15x slower than fp32, as the issue measured
            continue
        failure = crash_in_child(name, key, batch_sizes)
        if failure is None:
            runners[key] = timm_compiled(reference, key)
        else:
            crashed[key] = failure
    return runners, crashed


def probe(name: str, key: str, batch_sizes: list[int]) -> None:
    """The child of `crash_in_child`: compile and call, twice per batch size."""
    import timm

    run = timm_compiled(timm.create_model(name, pretrained=False).eval(), key)
    for b in batch_sizes:
        for _ in range(2):
            run(np.zeros((b, 3, 224, 224), dtype=np.float32))


def backends(name: str, work: Path, with_onnx: bool, batch_sizes: list[int]) -> tuple[dict[str, Runner], dict]:
    model = create_model(name).eval()
    runners = {
        REFERENCE: torch_runner(model),
        # what `predict` and the demo run unless told to compile
        "ours_fast_path_no_compile": torch_runner(prepare_for_inference(model, fast=True, compile=False)),
        "ours_fast_path": torch_runner(prepare_for_inference(model, fast=True)),
    }
    if with_onnx:
        onnx_path = work / f"{name}.onnx"
        export_model(model, "onnx", onnx_path, (224, 224), dynamic_batch=True)
        runners["onnxruntime_fp32"] = ort_runner(onnx_path)
        runners["onnxruntime_int8_dynamic"] = ort_runner(quantized(onnx_path))
    timm_rows, crashed = timm_runners(name, model, batch_sizes)
    runners.update(timm_rows)
    return runners, crashed


def top1(run: Runner, images: np.ndarray, batch: int) -> np.ndarray:
    """The top class of each image, `batch` images per call."""
    return np.concatenate([run(images[i : i + batch]) for i in range(0, len(images), batch)]).argmax(1)


def images_per_second(run: Runner, batch: np.ndarray, iterations: int) -> float:
    start = time.perf_counter()
    for _ in range(iterations):
        run(batch)
    return iterations * len(batch) / (time.perf_counter() - start)


def measure_model(name: str, args: argparse.Namespace, batches: dict[int, np.ndarray], agreement: np.ndarray) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        with_onnx = not os.environ.get("MAMBAOUT_BENCH_ISA_CAP")
        runners, crashed = backends(name, Path(tmp), with_onnx, list(batches))
        for run in tqdm(runners.values(), desc=f"{name}: warm-up (compiles)", disable=None):
            for batch in batches.values():
                run(batch)
                run(batch)  # compiled code can specialise on the first call
        reference = top1(runners[REFERENCE], agreement, max(batches))  # eager fp32 gives the same at any batch
        entry = {
            "top1_agreement_vs_fp32": {
                backend: {f"batch_{b}": float((top1(run, agreement, b) == reference).mean()) for b in batches}
                for backend, run in runners.items()
                if backend != REFERENCE
            },
            "images_per_second": {},
            "crashed": crashed,
        }
        samples: dict[tuple[str, int], list[float]] = {}
        for _ in tqdm(range(args.repeats), desc=f"{name}: interleaved rounds", disable=None):
            for backend, run in runners.items():
                for b, batch in batches.items():
                    samples.setdefault((backend, b), []).append(images_per_second(run, batch, args.iterations))
    for (backend, b), values in samples.items():
        entry["images_per_second"].setdefault(backend, {})[f"batch_{b}"] = {
            "median": statistics.median(values),
            "samples": values,
        }
    timm_rows = {k: v for k, v in entry["images_per_second"].items() if k.startswith("timm_")}
    if timm_rows:
        entry["ours_fast_path_vs_timm_best"] = {}
        agreement_of = entry["top1_agreement_vs_fp32"]
        for key in entry["images_per_second"]["ours_fast_path"]:
            correct = [k for k in timm_rows if agreement_of[k][key] >= AGREEMENT_FLOOR]
            if not correct:
                continue
            best = max(correct, key=lambda k: timm_rows[k][key]["median"])
            ratio = entry["images_per_second"]["ours_fast_path"][key]["median"] / timm_rows[best][key]["median"]
            entry["ours_fast_path_vs_timm_best"][key] = {
                "timm_best": best,
                "ratio": ratio,
                "left_out_for_disagreement": sorted(set(timm_rows) - set(correct)),
            }
    return entry


def demo_latency(requests: int) -> dict[str, float]:
    """Median and p95 seconds of one prediction through the demo's HTTP API (gradio_client, one at a time)."""
    import socket

    from gradio_client import Client, handle_file
    from PIL import Image

    from mambaout.apps.demo import launch_demo
    from mambaout.factory import save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        model = create_model("mambaout_femto", num_classes=10)
        save_checkpoint(model, Path(tmp) / "femto.safetensors", class_names=[f"c{i}" for i in range(10)])
        image = Path(tmp) / "image.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(image)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        demo = launch_demo(checkpoint=Path(tmp) / "femto.safetensors", port=port, block=False)
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            key = "checkpoint: femto.safetensors"
            client.predict(key, handle_file(str(image)), api_name="/classify")  # warm-up
            times = []
            for _ in range(requests):
                start = time.perf_counter()
                client.predict(key, handle_file(str(image)), api_name="/classify")
                times.append(time.perf_counter() - start)
        finally:
            demo.close()
    return {"requests": requests, "median_s": statistics.median(times), "p95_s": float(np.percentile(times, 95))}


def plot(results: dict, path: Path) -> None:
    models = list(results["models"])
    batch_keys = list(next(iter(results["models"].values()))["images_per_second"][REFERENCE])
    fig, axes = plt.subplots(len(batch_keys), len(models), figsize=(4.5 * len(models), 3.8 * len(batch_keys)),
                             squeeze=False)
    for row, key in enumerate(batch_keys):
        for ax, name in zip(axes[row], models):
            speeds = results["models"][name]["images_per_second"]
            labels = list(speeds)
            ax.barh(labels, [speeds[b][key]["median"] for b in labels],
                    color=["tab:orange" if b.startswith("ours_") else "tab:blue" for b in labels])
            ax.set_title(f"{name}, {key.replace('_', ' ')}")
            ax.set_xlabel("images/s (median)")
            ax.tick_params(axis="y", labelsize=7)
    cap = results["isa_cap"] or "none"
    fig.suptitle(f"{results['cpu']['model']}, {results['torch_threads']} threads, 224px, ISA cap: {cap}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mambaout_femto", "mambaout_tiny", "vmamba_tiny", "vim_tiny"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (the median is reported)")
    parser.add_argument("--iterations", type=int, default=2, help="calls per timing")
    parser.add_argument("--cap-isa", choices=sorted(ISA_CAPS), help="hold torch's libraries to this ISA")
    parser.add_argument("--demo-requests", type=int, default=0, help="also time the demo's HTTP API")
    parser.add_argument("--agreement-images", type=int, default=32)
    parser.add_argument("--out", default="benchmark_results")
    parser.add_argument("--probe", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(*args.probe, args.batches)
        return
    if args.cap_isa and os.environ.get("MAMBAOUT_BENCH_ISA_CAP") != args.cap_isa:
        parser.error("write the cap as two words, --cap-isa avx2: it must be read before torch loads")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    batches = {b: rng.standard_normal((b, 3, 224, 224)).astype(np.float32) for b in args.batches}
    agreement = rng.standard_normal((args.agreement_images, 3, 224, 224)).astype(np.float32)
    results: dict[str, object] = {
        "cpu": lscpu(),
        "isa_cap": os.environ.get("MAMBAOUT_BENCH_ISA_CAP"),
        "isa_cap_env": {k: os.environ[k] for k in ISA_CAPS.get(args.cap_isa or "", {}) if k in os.environ},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "fast_path_bf16": cpu_supports_bf16(),
        "torch_threads": torch.get_num_threads(),
        "models": {},
    }
    for name in args.models:
        results["models"][name] = measure_model(name, args, batches, agreement)
        gc.collect()
        (out / "deploy_cpu.json").write_text(json.dumps(results, indent=2))  # partial results survive a crash
    if args.demo_requests:
        results["demo_http_latency"] = demo_latency(args.demo_requests)
    (out / "deploy_cpu.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "deploy_cpu.png")
    print(f"CPU: {results['cpu']['model']} ({', '.join(results['cpu']['flags_of_note'])}); "
          f"torch capability {results['torch_cpu_capability']}, ISA cap {results['isa_cap'] or 'none'}")
    for name, entry in results["models"].items():
        for backend, by_batch in entry["images_per_second"].items():
            speeds = "  ".join(f"{k} {v['median']:7.1f} img/s" for k, v in by_batch.items())
            agree = entry["top1_agreement_vs_fp32"].get(backend, {})
            agreements = ", ".join(f"{v:.3f}" for v in agree.values())
            print(f"{name:<16} {backend:<32} {speeds}" + (f"  top-1 agreement {agreements}" if agree else ""))
        for backend, failure in entry["crashed"].items():
            print(f"{name:<16} {backend:<32} crashed ({failure}): left out")
        for key, best in entry.get("ours_fast_path_vs_timm_best", {}).items():
            left_out = best["left_out_for_disagreement"]
            note = f" ({', '.join(left_out)} left out: wrong top-1)" if left_out else ""
            print(f"{name:<16} ours fast path / {best['timm_best']} at {key}: {best['ratio']:.2f}x{note}")
    if "demo_http_latency" in results:
        print("demo HTTP latency:", results["demo_http_latency"])
    print(f"wrote {out / 'deploy_cpu.json'} and {out / 'deploy_cpu.png'}")


if __name__ == "__main__":
    main()

"""Deployment backends on the CPU, side by side: images/s at 224 for batch 1 and 16, interleaved repeats.

Backends: PyTorch fp32 eager; our fast path (`prepare_for_inference(fast=True)`: bf16 autocast where the CPU has
bf16 units, folded norms, channels-last; `--compile` adds torch.compile); ONNX Runtime CPU (all graph
optimizations) on the file `mambaout export` writes; ONNX Runtime with int8 dynamic quantization of the MatMul /
Gemm weights (top-1 agreement with fp32 measured on generated images); timm's mambaout_femto eager and compiled where
the model is MambaOut-Femto. Optionally the median and p95 latency of one prediction through the demo's HTTP API.

    python benchmarks/deploy_cpu.py --models mambaout_femto vim_tiny --repeats 3 --demo-requests 30

Writes deploy_cpu.json (lscpu model and flags included) in --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mambaout import create_model
from mambaout.apps.export import export_model
from mambaout.engine.inference import prepare_for_inference

Runner = Callable[[np.ndarray], np.ndarray]


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


def torch_runner(model: torch.nn.Module) -> Runner:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
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


def backends(name: str, work: Path, compile_fast: bool) -> dict[str, Runner]:
    model = create_model(name).eval()
    runners = {"torch_fp32_eager": torch_runner(model)}
    runners["ours_fast_path"] = torch_runner(prepare_for_inference(model, fast=True, compile=compile_fast))
    onnx_path = work / f"{name}.onnx"
    export_model(model, "onnx", onnx_path, (224, 224), dynamic_batch=True)
    runners["onnxruntime_fp32"] = ort_runner(onnx_path)
    runners["onnxruntime_int8_dynamic"] = ort_runner(quantized(onnx_path))
    if name == "mambaout_femto":
        import timm

        reference = timm.create_model("mambaout_femto", pretrained=False).eval()
        reference.load_state_dict(model.state_dict())  # our layout is timm's
        runners["timm_eager"] = torch_runner(reference)
        runners["timm_compiled"] = torch_runner(torch.compile(reference))
    return runners


def top1_agreement(reference: Runner, other: Runner, images: np.ndarray) -> float:
    return float((reference(images).argmax(1) == other(images).argmax(1)).mean())


def images_per_second(run: Runner, batch: np.ndarray, iterations: int) -> float:
    start = time.perf_counter()
    for _ in range(iterations):
        run(batch)
    return iterations * len(batch) / (time.perf_counter() - start)


def demo_latency(requests: int) -> dict[str, float]:
    """Median and p95 seconds of one prediction through the demo's HTTP API (gradio_client, one at a time)."""
    import socket

    from gradio_client import Client, handle_file
    from PIL import Image

    from mambaout.factory import save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        model = create_model("mambaout_femto", num_classes=10)
        save_checkpoint(model, Path(tmp) / "femto.safetensors", class_names=[f"c{i}" for i in range(10)])
        image = Path(tmp) / "image.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(image)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        from mambaout.apps.demo import launch_demo

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mambaout_femto", "mambaout_tiny", "vmamba_tiny", "vim_tiny"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (the median is reported)")
    parser.add_argument("--iterations", type=int, default=3, help="calls per timing")
    parser.add_argument("--compile", action="store_true", help="torch.compile our fast path")
    parser.add_argument("--demo-requests", type=int, default=0, help="also time the demo's HTTP API")
    parser.add_argument("--agreement-images", type=int, default=32)
    parser.add_argument("--out", default="benchmark_results")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    batches = {b: rng.standard_normal((b, 3, 224, 224)).astype(np.float32) for b in args.batches}
    results: dict[str, object] = {"cpu": lscpu(), "torch_threads": torch.get_num_threads(), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        runners = {name: backends(name, Path(tmp), args.compile) for name in args.models}
        agreement_images = rng.standard_normal((args.agreement_images, 3, 224, 224)).astype(np.float32)
        for name, by_backend in runners.items():
            for run in by_backend.values():  # warm-up (and compilation) outside the timings
                for batch in batches.values():
                    run(batch)
            reference = by_backend["torch_fp32_eager"]
            results["models"][name] = {
                "top1_agreement_vs_fp32": {
                    backend: top1_agreement(reference, run, agreement_images)
                    for backend, run in by_backend.items()
                    if backend != "torch_fp32_eager"
                },
                "images_per_second": {},
            }
        samples: dict[tuple[str, str, int], list[float]] = {}
        for _ in range(args.repeats):  # interleaved: every configuration once per round
            for name, by_backend in runners.items():
                for backend, run in by_backend.items():
                    for b, batch in batches.items():
                        speed = images_per_second(run, batch, args.iterations)
                        samples.setdefault((name, backend, b), []).append(speed)
        for (name, backend, b), values in samples.items():
            entry = results["models"][name]["images_per_second"].setdefault(backend, {})
            entry[f"batch_{b}"] = {"median": statistics.median(values), "samples": values}
    if args.demo_requests:
        results["demo_http_latency"] = demo_latency(args.demo_requests)
    (out / "deploy_cpu.json").write_text(json.dumps(results, indent=2))
    print(f"CPU: {results['cpu']['model']} ({', '.join(results['cpu']['flags_of_note'])})")
    for name, entry in results["models"].items():
        for backend, by_batch in entry["images_per_second"].items():
            speeds = "  ".join(f"{k} {v['median']:7.1f} img/s" for k, v in by_batch.items())
            agree = entry["top1_agreement_vs_fp32"].get(backend)
            print(f"{name:<16} {backend:<26} {speeds}" + ("" if agree is None else f"  top-1 agreement {agree:.3f}"))
    if "demo_http_latency" in results:
        print("demo HTTP latency:", results["demo_http_latency"])


if __name__ == "__main__":
    main()

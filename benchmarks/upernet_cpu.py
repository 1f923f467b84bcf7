"""UperNet inference on this CPU with MambaOut-T, VMamba-T, Vim-S and timm's convnext_tiny backbones, side by side.

The paper's two test settings: a 512x512 image segmented whole, and a 512x2048 image by sliding 512x512 windows
(stride 341: six windows, mmseg's slide_inference). Every segmenter has the same UperNet head (512 channels, 150
ADE20K classes); convnext_tiny comes from timm through `features_only=True` (a baseline the dense recipes know).
Each case runs in its own process, so its peak memory (the growth of the process's peak RSS over the loaded model)
is its own; images/s is the median over the repeats after a warm-up. Writes upernet_cpu.json and upernet_cpu.png.

    python benchmarks/upernet_cpu.py --repeats 2 --out benchmark_results
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import matplotlib
import timm
import torch
from torch import nn

import mambaout
from mambaout.tasks.segmentation.inference import InferenceSettings, image_logits
from mambaout.tasks.segmentation.upernet import Segmenter

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend

BACKBONES = ["mambaout_tiny", "vmamba_tiny", "vim_small", "timm:convnext_tiny"]
SETTINGS = {"whole 512x512": ("whole", (512, 512)), "slide 512x2048": ("slide", (512, 2048))}


class TimmFeatures(nn.Module):
    """A timm `features_only` model with the `out_channels` a Segmenter reads."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.body = timm.create_model(name, features_only=True, pretrained=False)
        self.out_channels = self.body.feature_info.channels()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)


def build(backbone: str) -> Segmenter:
    if backbone.startswith("timm:"):
        return Segmenter(TimmFeatures(backbone[5:]), num_classes=150).eval()
    return mambaout.create_segmenter(backbone, num_classes=150).eval()


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_case(backbone: str, setting: str, repeats: int, warmup: int) -> dict:
    """One case in this process: seconds per image and memory."""
    mode, (height, width) = SETTINGS[setting]
    model = build(backbone)
    settings = InferenceSettings(mode, img_scale=(width, height))
    image = torch.randn(1, 3, height, width)
    loaded = _rss_mb()
    times = []
    with torch.inference_mode():
        for index in range(warmup + repeats):
            started = time.perf_counter()
            image_logits(model, image, settings)
            if index >= warmup:
                times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    median = statistics.median(times)
    return {"backbone": backbone, "setting": setting, "images_per_second": 1 / median, "seconds": times,
            "peak_rss_mb": peak, "added_mb": peak - loaded,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def plot(results: list[dict], path: Path, title: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(SETTINGS)
    for k, setting in enumerate(SETTINGS):
        rows = [r for r in results if r["setting"] == setting]
        xs = [i + k * width for i in range(len(rows))]
        axes[0].bar(xs, [r["images_per_second"] for r in rows], width, label=setting)
        axes[1].bar(xs, [r["added_mb"] for r in rows], width, label=setting)
    names = [r["backbone"] for r in results if r["setting"] == next(iter(SETTINGS))]
    for ax, label in zip(axes, ("images/s (higher is better)", "peak memory over the model, MB")):
        ax.set_xticks([i + width * (len(SETTINGS) - 1) / 2 for i in range(len(names))], names, rotation=15)
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=BACKBONES)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", default="benchmark_results")
    parser.add_argument("--case", nargs=2, metavar=("BACKBONE", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # a child process: one case, its result on stdout
        print(json.dumps(run_case(*args.case, args.repeats, args.warmup)))
        return
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True,
                text=True).stdout.splitlines() if line.startswith("Model name")), platform.processor())
    results = []
    for setting in SETTINGS:
        for backbone in args.backbones:
            command = [sys.executable, __file__, "--case", backbone, setting, "--repeats", str(args.repeats),
                       "--warmup", str(args.warmup)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{backbone} {setting}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(result)
            print(f"{setting:>15}  {backbone:<20} {result['images_per_second']:8.3f} images/s  "
                  f"peak +{result['added_mb']:7.0f} MB  ({result['params_m']:.1f} M params)", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__, "repeats": args.repeats}
    (out / "upernet_cpu.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    plot(results, out / "upernet_cpu.png", f"UperNet inference, fp32, batch 1, {cpu}, {meta['threads']} threads")
    print(f"wrote {out / 'upernet_cpu.json'} and {out / 'upernet_cpu.png'}")


if __name__ == "__main__":
    main()

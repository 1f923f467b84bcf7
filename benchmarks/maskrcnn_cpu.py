"""Full Mask R-CNN inference at 800x1333 on CPU: a MambaOut backbone vs torchvision's maskrcnn_resnet50_fpn.

Both detectors have random weights, the same heads (torchvision's), 80 classes, and keep 100 detections per image
(score threshold 0, so both paste 100 masks: the same post-processing work whatever the random weights score). The
same image (a generated COCO-style scene, upscaled to 800x1333) goes through each model's whole forward pass:
resize/normalize, backbone, FPN, RPN, RoI heads, mask pasting. Repeats are interleaved (A, B, A, B, ...) so that a
shared machine's load hits both alike; the median of each is reported with the ratio. Also timed: each backbone's
own forward, to show where the time goes, and the MambaOut detector in channels-last and with bf16 autocast where
the CPU has native bf16 (AVX512-BF16 / AMX).

    python benchmarks/maskrcnn_cpu.py --repeats 5 --out benchmark_results/maskrcnn_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

from _machine import cpu_model
from mambaout.data.synthetic_coco import draw_scene
from mambaout.engine.inference import cpu_supports_bf16
from mambaout.tasks.detection.model import create_detector

HEADS = dict(box_score_thresh=0.0, box_detections_per_img=100)




def test_image(height: int, width: int) -> torch.Tensor:
    image, _ = draw_scene(np.random.default_rng(0), width // 8, height // 8)
    pixels = torch.from_numpy(np.array(image.resize((width, height)))).permute(2, 0, 1)
    return pixels.float() / 255


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mambaout_tiny")
    parser.add_argument("--size", nargs=2, type=int, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="benchmark_results/maskrcnn_cpu.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    image = test_image(*args.size)
    ours = create_detector(args.backbone, 80, **HEADS).eval()
    theirs = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=81, **HEADS).eval()
    ours_channels_last = create_detector(args.backbone, 80, **HEADS).eval().to(memory_format=torch.channels_last)
    bf16 = cpu_supports_bf16()

    def detect(model: torch.nn.Module, dtype: torch.dtype | None = None) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                return model([image])

        return run

    def backbone(model: torch.nn.Module) -> Callable[[], object]:
        batch, _ = model.transform([image])

        def run() -> object:
            with torch.inference_mode():
                return model.backbone(batch.tensors)

        return run

    cases = {
        "maskrcnn_resnet50_fpn": detect(theirs),
        f"maskrcnn_{args.backbone}": detect(ours),
        f"maskrcnn_{args.backbone}_channels_last": detect(ours_channels_last),
        "resnet50_fpn backbone": backbone(theirs),
        f"{args.backbone}_fpn backbone": backbone(ours),
    }
    if bf16:
        cases[f"maskrcnn_{args.backbone}_bf16"] = detect(ours, torch.bfloat16)
    for _ in range(args.warmup):
        for run in cases.values():
            run()
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, run in cases.items():
            seconds[name].append(timed(run))
    reference = statistics.median(seconds["maskrcnn_resnet50_fpn"])
    rows = {name: {"median_s": statistics.median(s), "min_s": min(s), "images_per_s": 1 / statistics.median(s),
                   "vs_resnet50_fpn": reference / statistics.median(s) if not name.endswith("backbone") else None}
            for name, s in seconds.items()}
    backbone_ratio = rows["resnet50_fpn backbone"]["median_s"] / rows[f"{args.backbone}_fpn backbone"]["median_s"]
    result = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "size": list(args.size), "repeats": args.repeats, "native_bf16": bf16, "cases": rows,
              "backbone_speed_ratio": backbone_ratio, "raw_seconds": seconds}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{result['cpu']}, {result['threads']} threads, torch {torch.__version__}, {args.size[0]}x{args.size[1]}, "
          f"{args.repeats} interleaved repeats (median)")
    for name, row in rows.items():
        ratio = "" if row["vs_resnet50_fpn"] is None else f"  {row['vs_resnet50_fpn']:.2f}x maskrcnn_resnet50_fpn"
        print(f"  {name:<40} {row['median_s']:7.2f} s  {row['images_per_s']:6.3f} img/s{ratio}")
    print(f"  backbone + FPN alone: {backbone_ratio:.2f}x resnet50_fpn's speed")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

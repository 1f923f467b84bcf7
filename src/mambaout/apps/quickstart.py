"""`make quickstart`: a tour of the package that needs no download."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..data.synthetic import write_dataset


def _run(*args: str) -> int:
    print(f"\n$ mambaout {' '.join(args)}", flush=True)
    return subprocess.call([sys.executable, "-m", "mambaout.cli", *args])


def run_quickstart(out: str | Path) -> int:
    out = Path(out)
    data = write_dataset(out / "shapes", train_per_class=2, val_per_class=1, size=64)
    images = sorted(str(p) for p in (data / "val").glob("*/*.png"))[:3]
    status = 0
    status |= _run("models")
    status |= _run("flops", "mambaout_tiny")
    status |= _run("predict", "mambaout_femto", *images, "--topk", "3")
    print(f"\ngenerated images: {data}")
    return status

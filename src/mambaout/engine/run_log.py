"""What a training run leaves to read: args.yaml, summary.csv, TensorBoard events and a PNG of the curves."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import yaml

from ..checkpoints import atomic_write

SUMMARY, ARGS, CURVES = "summary.csv", "args.yaml", "curves.png"


class RunLog:
    """Per-epoch records of one run folder. The summary is rewritten atomically each epoch, and on resume rows of
    epochs the checkpoint does not cover are dropped, so the table always matches the weights."""

    def __init__(self, directory: str | Path, resumed_epoch: int | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rows = self._read_rows(resumed_epoch)
        self._writer = None

    def _read_rows(self, resumed_epoch: int | None) -> list[dict[str, Any]]:
        path = self.directory / SUMMARY
        if resumed_epoch is None or not path.exists():
            return []
        with open(path, newline="") as f:
            return [row for row in csv.DictReader(f) if int(row["epoch"]) <= resumed_epoch]

    def write_args(self, options: dict[str, Any]) -> None:
        text = yaml.safe_dump(options, sort_keys=False)
        atomic_write(self.directory / ARGS, lambda tmp: Path(tmp).write_text(text))

    @property
    def tensorboard(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.directory / "tensorboard"))
        return self._writer

    def scalar(self, name: str, value: float, step: int) -> None:
        self.tensorboard.add_scalar(name, value, step)

    def epoch(self, row: dict[str, Any]) -> None:
        """Record one epoch: summary.csv, TensorBoard scalars, curves.png."""
        self.rows.append(row)
        fields = list(dict.fromkeys(key for r in self.rows for key in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.directory / SUMMARY, lambda tmp: Path(tmp).write_text(buffer.getvalue()))
        for key, value in row.items():
            if key != "epoch" and isinstance(value, int | float):
                self.tensorboard.add_scalar(f"epoch/{key}", value, row["epoch"])
        self.tensorboard.flush()
        plot_curves(self.rows, self.directory / CURVES)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Losses, validation metrics (accuracy, AP, mIoU: whatever the task logs) and learning rate against epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key):
        points = [(int(r["epoch"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        return [p[0] for p in points], [p[1] for p in points]

    columns = list(dict.fromkeys(key for r in rows for key in r))
    losses = [(key, key.replace("_", " ")) for key in columns if key.endswith("loss")]
    scores = [(key, key.replace("_", " ")) for key in columns
              if key.startswith(("val_", "ema_val_")) and not key.endswith(("loss", "skipped"))]
    panels = [("loss", losses), ("validation", scores), ("learning rate", [("lr", "lr")])]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (title, keys) in zip(axes, panels):
        for key, label in keys:
            xs, ys = series(key)
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    data = io.BytesIO()
    fig.savefig(data, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data.getvalue()))

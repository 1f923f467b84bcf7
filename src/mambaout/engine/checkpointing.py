"""Training checkpoints: everything a run needs to continue exactly, written atomically, found again after a crash.

The output folder holds `last.pth` (the newest epoch), `best.pth` (best validation metric) and up to
`--checkpoint-hist` epoch files `checkpoint-<epoch>.pth`. Each is written to a temporary file, fsynced and renamed
(checkpoints.atomic_write), so a run killed at any instant leaves the previous complete files in place and never a
half-written file under a checkpoint's name. `--resume auto` loads the newest of them that reads back completely.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoints import CheckpointError, atomic_write, read_checkpoint

log = logging.getLogger("mambaout")

FORMAT = "mambaout-train-1"
LAST, BEST = "last.pth", "best.pth"
_EPOCH_FILE = re.compile(r"checkpoint-(\d+)\.pth$")
_REQUIRED = ("model", "optimizer", "epoch", "rng")


def capture_rng() -> dict[str, Any]:
    """This process's random states (torch, CUDA, numpy, Python) as plain data that weights_only loading accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos},
        "numpy_gauss": [has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    has_gauss, gauss = state["numpy_gauss"]
    keys = numpy_state["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy_state["kind"], keys, int(numpy_state["pos"]), int(has_gauss), float(gauss)))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointKeeper:
    """Writes last/best/history in one output folder (rank 0 only) and prunes the history to `keep` files."""

    def __init__(self, directory: str | os.PathLike, keep: int) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def save(self, state: dict[str, Any], epoch: int, is_best: bool) -> Path:
        last = self.directory / LAST
        atomic_write(last, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))
        # copies, not hard links: damage to one file (a disk error, a truncation) must not reach the others
        if self.keep > 0:
            atomic_write(self.directory / f"checkpoint-{epoch}.pth", lambda tmp: shutil.copyfile(last, tmp))
            self._prune()
        if is_best:
            atomic_write(self.directory / BEST, lambda tmp: shutil.copyfile(last, tmp))
        return last

    def _prune(self) -> None:
        for _, path in epoch_files(self.directory)[self.keep :]:
            path.unlink(missing_ok=True)


def epoch_files(directory: Path) -> list[tuple[int, Path]]:
    """`checkpoint-<epoch>.pth` files, newest epoch first."""
    found = []
    for path in directory.glob("checkpoint-*.pth"):
        match = _EPOCH_FILE.search(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A complete training checkpoint (read without executing code), or CheckpointError saying what is wrong."""
    state, _ = read_checkpoint(path)
    if state.get("format") != FORMAT:
        raise CheckpointError(
            f"{os.fspath(path)!r} is not a mambaout training checkpoint (no optimizer/epoch state); "
            "to start from its weights use --initial-checkpoint"
        )
    missing = [key for key in _REQUIRED if key not in state]
    if missing:
        raise CheckpointError(f"training checkpoint {os.fspath(path)!r} lacks {', '.join(missing)}")
    return state


def find_resume_checkpoint(directory: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in `directory` that reads back completely; damaged ones are skipped with a warning."""
    directory = Path(directory)
    candidates = []
    if (directory / LAST).exists():
        candidates.append(directory / LAST)
    candidates += [path for _, path in epoch_files(directory)]
    newest: tuple[Path, dict[str, Any]] | None = None
    for path in candidates:
        try:
            state = load_training_checkpoint(path)
        except CheckpointError as e:
            log.warning("skipping %s: %s", path, e)
            continue
        if newest is None or state["epoch"] > newest[1]["epoch"]:
            newest = (path, state)
        if path.name == LAST:  # last.pth is written first every epoch: nothing older can be newer than it
            break
    return newest


def has_checkpoints(directory: str | os.PathLike) -> bool:
    directory = Path(directory)
    return (directory / LAST).exists() or bool(epoch_files(directory))

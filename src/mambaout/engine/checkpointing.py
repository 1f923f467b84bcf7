"""Training checkpoints: everything a run needs to continue exactly, written atomically, found again after a crash.

The output folder holds `last.pth` (the newest state: an epoch's end, or every `--checkpoint-interval` steps
within an epoch), `best.pth` (best validation metric) and up to `--checkpoint-hist` epoch files
`checkpoint-<epoch>.pth`. Each is written to a temporary file, fsynced and renamed (checkpoints.atomic_write), so a
run killed at any instant leaves the previous complete files in place and never a half-written file under a
checkpoint's name, and each carries a checksum of its content that every read verifies. `--resume auto` loads the
newest of them that reads back complete and verified, and says which it skipped.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoints import CheckpointError, atomic_write, check_fits, read_checkpoint
from ..checkpoints.files import with_checksum
from ..errors import MambaoutError

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


class CheckpointWriteError(MambaoutError, OSError):
    """A checkpoint that could not be written (full disk, read-only or unwritable folder); earlier ones are intact."""

    exit_code = 10

    def __str__(self) -> str:
        return str(self.strerror)


class CheckpointKeeper:
    """Writes last/best/history in one output folder (rank 0 only) and prunes the history to `keep` files."""

    def __init__(self, directory: str | os.PathLike, keep: int) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def save(self, state: dict[str, Any], epoch: int | None, is_best: bool = False) -> Path:
        """last.pth, and for an epoch's end (`epoch` given) its history file and best.pth when `is_best`."""
        state = with_checksum({"format": FORMAT, **state})
        last = self.directory / LAST
        with self._reported(state):
            atomic_write(last, lambda tmp: torch.save(state, tmp))
            # copies, not hard links: damage to one file (a disk error, a truncation) must not reach the others
            if epoch is not None and self.keep > 0:
                atomic_write(self.directory / f"checkpoint-{epoch}.pth", lambda tmp: shutil.copyfile(last, tmp))
                self._prune()
            if epoch is not None and is_best:
                atomic_write(self.directory / BEST, lambda tmp: shutil.copyfile(last, tmp))
        return last

    def _prune(self) -> None:
        for _, path in epoch_files(self.directory)[self.keep :]:
            path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _reported(self, state: dict[str, Any]) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            raise CheckpointWriteError(e.errno, write_failure(self.directory, e, state_bytes(state)),
                                       str(self.directory)) from e


def state_bytes(state: Any) -> int:
    """The bytes of the tensors in a checkpoint's state: about the size of its file."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(value) for value in state)
    return 0


def write_failure(directory: Path, error: OSError, needed: int) -> str:
    """What failed, where, the space a checkpoint needs against the space left, and what to do."""
    try:
        free = f"{shutil.disk_usage(directory).free / 2**20:,.0f} MiB"
    except OSError:
        free = "unknown"
    reason = error.strerror or errno.errorcode.get(error.errno or 0, type(error).__name__)
    return (
        f"cannot write a checkpoint in {directory}: {reason}. A checkpoint of this run takes about "
        f"{needed / 2**20:,.0f} MiB (last.pth, and as much again for each history copy and best.pth); {free} free "
        "there. The earlier checkpoints are intact: free space or make the folder writable (or choose another "
        "--output), then continue with --resume auto"
    )


def check_writable(directory: Path) -> None:
    """A run's output folder can be created and written, or CheckpointWriteError before any training."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-"):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise CheckpointWriteError(
            e.errno, f"the output folder {directory} is not writable ({reason}): choose another --output, or make "
            "it writable", str(directory)
        ) from e


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


def load_trained_model(path: str | os.PathLike, task: str, meta_key: str, command: str,
                       build: Callable[[dict[str, Any]], nn.Module],
                       use_ema: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """The model a training checkpoint of `task` holds (on CPU, eval mode) and the metadata the task stored under
    `meta_key`: `build(meta)` makes the network, the checkpoint's weights (or its EMA's) fill it strictly."""
    where = os.fspath(path)
    state = load_training_checkpoint(path)
    meta = state.get(meta_key)
    if state.get("task") != task or not isinstance(meta, dict):
        raise CheckpointError(f"{where!r} is a {state.get('task', 'different task')} checkpoint, not one "
                              f"`mambaout {command}` wrote")
    weights = state.get("model_ema") if use_ema else state["model"]
    if weights is None:
        raise CheckpointError(f"{where!r} was trained without --model-ema: it has no EMA weights")
    model = build(meta)
    check_fits(model.state_dict(), weights, where)
    model.load_state_dict(weights)
    return model.eval(), meta


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
        if newest is None or resume_position(state) > resume_position(newest[1]):
            newest = (path, state)
        if path.name == LAST:  # last.pth is written first every time: nothing older can be newer than it
            break
    return newest


def resume_position(state: dict[str, Any]) -> tuple[int, int]:
    """(the epoch a run resumed from `state` trains next, the optimizer steps of it already done)."""
    return state["epoch"] + 1, state.get("step_in_epoch", 0)


def has_checkpoints(directory: str | os.PathLike) -> bool:
    directory = Path(directory)
    return (directory / LAST).exists() or bool(epoch_files(directory))

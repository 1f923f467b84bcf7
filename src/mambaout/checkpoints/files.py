"""Reading and writing checkpoint files without ever executing pickled code."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors.torch import safe_open as _safe_open

from ..errors import MambaoutError

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
# Harmless classes that official training checkpoints carry beside the weights (Vim stores its argparse
# Namespace). Anything else that is not plain data is refused by torch's weights-only unpickler.
SAFE_GLOBALS = [argparse.Namespace]


class CheckpointError(MambaoutError, RuntimeError):
    """A checkpoint file that cannot be read or does not fit the model."""

    exit_code = 4


# The key under which a checkpoint we write carries the checksum of the rest of its content: torch's zip reader
# does not check its CRCs, so a flipped bit in a tensor would otherwise load silently.
CHECKSUM_KEY = "content_sha256"


def content_checksum(obj: Any) -> str:
    """SHA-256 of a checkpoint's content (every tensor's dtype, shape and bytes, every other value's repr), walked
    in order; a top-level `CHECKSUM_KEY` is left out."""
    digest = hashlib.sha256()

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
            if tensor.numel():
                digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
        elif isinstance(value, dict):
            digest.update(f"D{len(value)}".encode())
            for key, item in value.items():
                digest.update(repr(key).encode())
                walk(item)
        elif isinstance(value, (list, tuple)):
            digest.update(f"L{len(value)}".encode())
            for item in value:
                walk(item)
        else:
            digest.update(f"V{value!r}".encode())

    walk({key: value for key, value in obj.items() if key != CHECKSUM_KEY} if isinstance(obj, dict) else obj)
    return digest.hexdigest()


def with_checksum(state: dict[str, Any]) -> dict[str, Any]:
    """`state` with the checksum that `read_checkpoint` verifies."""
    return {**state, CHECKSUM_KEY: content_checksum(state)}


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """The file's top-level object and its metadata (safetensors header metadata, else empty)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes)")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return _read_torch(path), {}


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """A safetensors file's header metadata, read without loading the tensors (empty for other formats)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    try:
        with _safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read safetensors file {str(path)!r}: {e}") from e


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    metadata = read_metadata(path)
    try:
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read safetensors file {str(path)!r}: {e}") from e


def _read_torch(path: Path) -> dict[str, Any]:
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _CODE_REFUSAL.search(str(e))
        if refused is None:  # garbage opcodes, not a refused object: a damaged or foreign file
            raise CheckpointError(
                f"cannot read checkpoint {str(path)!r} (damaged, or not a checkpoint?): {_pickle_error(e)}"
            ) from e
        raise CheckpointError(
            f"refusing to load {str(path)!r}: it holds pickled objects other than tensors and plain data, "
            f"which could run code when loaded ({refused.group(0)}). If you trust the file, re-save its "
            "state_dict as .safetensors."
        ) from e
    except Exception as e:  # torch's unpickler lets KeyError, IndexError, ... escape on random bytes
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r} (truncated or not a checkpoint?): {_first_line(e)}"
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a dict of tensors")
    if CHECKSUM_KEY in obj and content_checksum(obj) != obj[CHECKSUM_KEY]:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is damaged: its content does not match the checksum written with it (a disk "
            "or copy error); use an earlier checkpoint"
        )
    return obj


# What torch's weights-only unpickler says when it refuses an object that would run code on loading (an
# unlisted or blocked global, a call or construction of one); its other errors mean damaged bytes.
_CODE_REFUSAL = re.compile(r"GLOBAL \S+|unrecognized function \S+|create new object\b[^\n]*")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _pickle_error(e: BaseException) -> str:
    # torch.load buries the unpickler's own words under advice about weights_only
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
    return found.group(1).strip() if found else _first_line(e)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A reader (or a run resumed after a crash at any instant) sees the old file or the complete new one, never a
    half-written one; the directory is fsynced too so the rename itself survives a power cut.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_safetensors(
    state_dict: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, Any] | None = None
) -> Path:
    """Write tensors atomically (see atomic_write); metadata values are JSON-encoded when not str."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

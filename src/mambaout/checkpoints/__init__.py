"""Checkpoint files: safe reading, official-layout conversion, release downloads, strict loading."""

from .download import PretrainedUnavailableError, cache_dir, fetch_pretrained
from .files import CheckpointError, atomic_write, read_checkpoint, read_metadata, write_safetensors
from .layouts import unwrap
from .loading import CheckpointMismatchError, Weights, check_fits, load_weights, read_weights, save_weights

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "PretrainedUnavailableError",
    "Weights",
    "atomic_write",
    "cache_dir",
    "check_fits",
    "fetch_pretrained",
    "load_weights",
    "read_checkpoint",
    "read_metadata",
    "read_weights",
    "save_weights",
    "unwrap",
    "write_safetensors",
]

"""Checkpoint files: safe reading, official-layout conversion, release downloads (Hub and URLs), strict loading."""

from .download import PretrainedUnavailableError, cache_dir
from .files import CheckpointError, atomic_write, read_checkpoint, read_metadata, write_safetensors
from .hub import HubModel, fetch_pretrained, is_hub_name, read_hub_model
from .layouts import unwrap
from .loading import CheckpointMismatchError, Weights, check_fits, load_weights, read_weights, save_weights

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "HubModel",
    "PretrainedUnavailableError",
    "Weights",
    "atomic_write",
    "cache_dir",
    "check_fits",
    "fetch_pretrained",
    "is_hub_name",
    "load_weights",
    "read_checkpoint",
    "read_hub_model",
    "read_metadata",
    "read_weights",
    "save_weights",
    "unwrap",
    "write_safetensors",
]

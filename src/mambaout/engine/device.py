"""The device a command runs on: the one asked for, or the GPU when there is one; a clear error otherwise."""

from __future__ import annotations

import torch

from ..errors import MambaoutError


class DeviceError(MambaoutError, ValueError):
    """A device this machine does not have."""

    exit_code = 7


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device`, or the GPU when there is one; a clear error for a device that is not there."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise DeviceError(f"unknown device {str(device)!r} (use cpu, cuda, cuda:1, mps, ...)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {str(device)!r} asked for, but PyTorch sees no CUDA GPU here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"device {str(device)!r} asked for, but there are {torch.cuda.device_count()} GPUs")
    return device

"""The inference path shared by predict, validate, benchmark and the demo: precision, memory format, compilation."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class InferenceModel(nn.Module):
    """Runs the wrapped model under autocast (when not fp32) with channels-last inputs; returns float32 outputs."""

    def __init__(self, model: nn.Module, device_type: str, precision: str, channels_last: bool) -> None:
        super().__init__()
        self.model = model
        self.device_type = device_type
        self.precision = precision
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.precision == "fp32":
            context = contextlib.nullcontext()
        else:
            context = torch.autocast(self.device_type, dtype=PRECISIONS[self.precision])
        with context:
            return self.model(x).float()


def prepare_for_inference(
    model: nn.Module,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    channels_last: bool = False,
    compile: bool = False,
) -> InferenceModel:
    """The model in eval mode on `device`, wrapped to run at `precision` ('fp32', 'bf16', 'fp16')."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, not {precision!r}")
    device = torch.device(device)
    model = model.eval().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    wrapped = InferenceModel(model, device.type, precision, channels_last)
    if compile:
        wrapped.model = torch.compile(model)
    return wrapped

"""The weight gradient of a stride-1 'same' depthwise conv on channels-last tensors, through numba (CPU).

aten computes it at 6-25x the forward's time on CPU (`benchmarks/depthwise_backward_cpu.py`) although it has the
forward's multiply-adds. Here each (image, row) of the input and of the output gradient is one flat W*C vector: tap
(i, j) of every channel is the dot product, over the row's W positions, of the input row h+i-pad shifted by (j-pad)*C
with the gradient row, so every tap is one long contiguous multiply-add that LLVM vectorizes, accumulated per tap
and position into a per-thread k*k*W*C buffer; summing the buffers over threads and W gives the k*k taps of each
channel. Indices are unsigned: numba's negative-index wrap-around check on signed ones is a branch inside the loop
that keeps LLVM from vectorizing it.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from ._scan_numba import _FASTMATH, _set_threads


@njit(parallel=True, cache=True, fastmath=_FASTMATH, error_model="numpy")
def _weight_grad_partials(x, g, kernel, channels, partials):  # pragma: no cover - compiled by numba
    """x, g: (rows = N*H, H, W*C) views as (N, H, W*C); partials: (T, k, k, W*C), zeroed, one per thread chunk."""
    images, height, width_c = x.shape
    chunks = partials.shape[0]
    pad = kernel // 2
    rows = images * height
    for chunk in prange(chunks):
        acc = partials[chunk]
        for row in range(chunk * rows // chunks, (chunk + 1) * rows // chunks):
            n, h = row // height, row % height
            gr = g[n, h]
            for i in range(kernel):
                source = h + i - pad
                if source < 0 or source >= height:
                    continue
                xr = x[n, source]
                for j in range(kernel):
                    shift = (j - pad) * channels
                    lo = max(0, -shift)
                    hi = min(width_c, width_c - shift)
                    a = acc[i, j]
                    # unsigned offsets: m + shift >= 0 for every m in [lo, hi)
                    offset = np.uintp(shift + width_c)
                    for m in range(np.uintp(lo), np.uintp(hi)):
                        a[m] += xr[m + offset - np.uintp(width_c)] * gr[m]


def depthwise_weight_grad(x: Tensor, grad_out: Tensor, kernel: int) -> Tensor:
    """d loss / d weight, (C, 1, k, k), of a stride-1 depthwise conv with padding k // 2: float64 for float64 inputs,
    else float32 (bf16 and fp16 inputs are accumulated in float32).

    x and grad_out are the conv's input and output gradient as channels-last (N, H, W, C) tensors.
    """
    images, height, width, channels = x.shape
    dtype = torch.float64 if torch.float64 in (x.dtype, grad_out.dtype) else torch.float32
    xs = x.detach().to(dtype).contiguous()
    gs = grad_out.detach().to(dtype).contiguous()
    _set_threads(xs.numel() * kernel * kernel)
    chunks = max(1, min(torch.get_num_threads(), images * height))
    partials = torch.zeros(chunks, kernel, kernel, width * channels, dtype=dtype)
    _weight_grad_partials(
        xs.view(images, height, width * channels).numpy(),
        gs.view(images, height, width * channels).numpy(),
        kernel,
        channels,
        partials.numpy(),
    )
    taps = partials.view(chunks, kernel, kernel, width, channels).sum((0, 3))
    return taps.permute(2, 0, 1).unsqueeze(1).contiguous()

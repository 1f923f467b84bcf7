"""Chunked closed-form selective scan in plain PyTorch (any device, differentiable through autograd).

Inside a chunk of T steps let cum_t = A * (dt_1 + ... + dt_t) per (channel, state). Then

    x_t = sum_{s <= t} exp(cum_t - cum_s) * dt_s * B_s * u_s + exp(cum_t) * x_0.

The factorised form exp(cum_t) * exp(-cum_s) overflows float32 once -cum passes ~88 (ordinary dt at chunk 64, large
dt at chunk 16), so the difference cum_t - cum_s (<= 0 for A <= 0, dt >= 0) is formed before exponentiating and the
s > t half is masked to -inf, whose exp is an exact 0 with a zero gradient. The state is carried across chunks by
exp(cum_T) (<= 1) times the carried state, so no step ever forms a number larger than the true result.
"""

import torch
from torch import Tensor

from ._scan_common import compute_dtype, epilogue, grouped_bc, prepare_delta


def _chunk(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk: u, dt (b, G, dg, T); A (G, dg, N); B, C (b, G, N, T); x (b, G, dg, N) -> y (b, G, dg, T), x_end."""
    steps = u.shape[-1]
    # time leads channels, (b, G, T, dg, N), so that the sum over N below is one batched mat-vec on contiguous memory
    cum = torch.cumsum(dt.transpose(-1, -2)[..., None] * A[:, None], dim=2)
    decay = cum[:, :, :, None] - cum[:, :, None, :]  # (b, G, T(t), T(s), dg, N): log-decay from step s to step t
    causal = torch.ones(steps, steps, dtype=torch.bool, device=u.device).tril()
    # in place: each (b, dim, T, T, N) temporary is the bulk of the time on a CPU, and neither op's backward needs
    # its input
    decay.masked_fill_(~causal[:, :, None, None], float("-inf")).exp_()
    w = dt * u  # (b, G, dg, T)
    cb = C.transpose(-1, -2)[:, :, :, None, :] * B.transpose(-1, -2)[:, :, None, :, :]  # (b, G, T(t), T(s), N)
    # intra-chunk: y_t = sum_s w_s sum_n decay[t, s, n] C_t[n] B_s[n]
    kernel = (decay @ cb[..., None]).squeeze(-1)  # (b, G, T, T, dg)
    y = torch.einsum("bgtsd,bgds->bgdt", kernel, w)
    # carried-in state: y_t += sum_n C_t[n] exp(cum_t[n]) x[n]
    y = y + torch.einsum("bgnt,bgtdn,bgdn->bgdt", C, cum.exp(), x)
    # state after the chunk: the last row of the decay matrix, plus the carried state decayed over the whole chunk
    x_end = torch.einsum("bgsdn,bgns,bgds->bgdn", decay[:, :, -1], B, w) + cum[:, :, -1].exp() * x
    return y, x_end


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    chunk_size: int = 16,
) -> tuple[Tensor, Tensor]:
    """Return (out in u's dtype, last state (batch, dim, N) in the compute dtype)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, length = u.shape
    state = A.shape[1]
    Bg, Cg = grouped_bc(B.to(dtype), C.to(dtype))
    groups = Bg.shape[1]
    per_group = dim // groups
    dt = prepare_delta(delta, delta_bias, delta_softplus, dtype).view(batch, groups, per_group, length)
    ug = u.to(dtype).view(batch, groups, per_group, length)
    Ag = A.to(dtype).view(groups, per_group, state)
    x = u.new_zeros(batch, groups, per_group, state, dtype=dtype)
    ys = []
    # A Python loop over chunks keeps the (b, dim, T, T, N) temporaries to one chunk at a time
    for start in range(0, length, chunk_size):
        stop = min(start + chunk_size, length)
        y, x = _chunk(ug[..., start:stop], dt[..., start:stop], Ag, Bg[..., start:stop], Cg[..., start:stop], x)
        ys.append(y)
    y = torch.cat(ys, dim=-1).reshape(batch, dim, length)
    out = epilogue(y, u, D, z)
    return out.to(u.dtype), x.reshape(batch, dim, state)

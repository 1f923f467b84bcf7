"""Chunked closed-form selective scan in plain PyTorch (any device, differentiable through autograd).

Inside a chunk of T steps let cum_t = A * (dt_1 + ... + dt_t) per (channel, state) and v_s = dt_s * B_s * u_s. Then

    x_t = exp(cum_t) * (x_0 + sum_{s <= t} exp(-cum_s) * v_s),

so every state of the chunk comes from one cumulative sum and two exponentials per (step, channel, state): no
(T, T) matrices, and only one chunk's (batch, dim, T, N) temporaries at a time.

The factor exp(-cum_s) leaves the float32 range once the in-chunk log-decay passes ~88 (large dt or long chunks).
Exact guard: the (batch, channel) rows of a chunk whose total log-decay passes ``_GUARD`` are re-done with the
per-step recurrence x_t = exp(dt_t A) x_{t-1} + v_t (multiplicative, so it can only underflow), and their factorised
values are computed from a zeroed log-decay so that they stay finite (a NaN in the discarded branch of a select
would still poison the gradient).
"""

import torch
from torch import Tensor

from ._scan_common import compute_dtype, epilogue, grouped_bc, prepare_delta

# exp(60) ~ 1e26 leaves 12 orders of magnitude of headroom below float32's 3.4e38 for |v| and the running sum
_GUARD = 60.0


def _chunk(dt: Tensor, w: Tensor, A: Tensor, Bt: Tensor, Ct: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk: dt, w = dt * u (b, G, dg, T); A (G, dg, N); Bt, Ct (b, G, T, N); x (b, G, dg, N).

    Returns y (b, G, dg, T) and the state after the chunk (b, G, dg, N).
    """
    dA = dt[..., None] * A[:, :, None, :]  # (b, G, dg, T, N)
    cum = dA.cumsum(-2)
    v = w[..., None] * Bt[:, :, None]  # (b, G, dg, T, N)
    risky = (cum[..., -1, :] < -_GUARD).any(-1)  # (b, G, dg): rows whose factorised form could overflow
    any_risky = bool(risky.any())
    if any_risky:
        cum = cum.masked_fill(risky[..., None, None], 0.0)
    states = torch.exp(cum) * (torch.cumsum(torch.exp(-cum) * v, dim=-2) + x[..., None, :])
    if any_risky:
        # the per-step recurrence on the risky rows only, then scattered back over their (finite) placeholders
        dA_r, v_r, x_r = dA[risky], v[risky], x[risky]  # (k, T, N), (k, T, N), (k, N)
        steps = []
        for t in range(dA_r.shape[1]):
            x_r = torch.exp(dA_r[:, t]) * x_r + v_r[:, t]
            steps.append(x_r)
        exact = torch.index_put(torch.zeros_like(states), (risky,), torch.stack(steps, dim=1))
        states = torch.where(risky[..., None, None], exact, states)
    y = (states * Ct[:, :, None]).sum(-1)
    return y, states[..., -1, :]


def _prologue(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, delta_bias: Tensor | None, softplus: bool, dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Full-length inputs of the chunk loop in the compute dtype: dt, w = dt * u (b, G, dg, L); A (G, dg, N);
    time-major B and C (b, G, L, N), so that each chunk's slice broadcasts over channels with N innermost."""
    batch, dim, length = u.shape
    Bg, Cg = grouped_bc(B.to(dtype), C.to(dtype))
    groups = Bg.shape[1]
    per_group = dim // groups
    Bt, Ct = Bg.transpose(-1, -2).contiguous(), Cg.transpose(-1, -2).contiguous()
    dt = prepare_delta(delta, delta_bias, softplus, dtype).view(batch, groups, per_group, length)
    w = dt * u.to(dtype).view(batch, groups, per_group, length)
    return dt, w, A.to(dtype).view(groups, per_group, A.shape[1]), Bt, Ct


def _bounds(length: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_size, length)) for start in range(0, length, chunk_size)]


def _scan_chunks(dt, w, A, Bt, Ct, chunk_size: int) -> tuple[Tensor, Tensor, list[Tensor]]:
    """y (b, G, dg, L), the last state and the state entering every chunk."""
    batch, groups, per_group, length = dt.shape
    x = dt.new_zeros(batch, groups, per_group, A.shape[-1])
    ys, starts = [], []
    # A Python loop over chunks keeps the (b, dim, T, N) temporaries to one chunk at a time
    for start, stop in _bounds(length, chunk_size):
        starts.append(x)
        y, x = _chunk(dt[..., start:stop], w[..., start:stop], A, Bt[:, :, start:stop], Ct[:, :, start:stop], x)
        ys.append(y)
    return torch.cat(ys, dim=-1), x, starts


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
    y, x, _ = _scan_chunks(*_prologue(u, delta, A, B, C, delta_bias, delta_softplus, dtype), chunk_size)
    out = epilogue(y.reshape(batch, dim, length), u, D, z)
    return out.to(u.dtype), x.reshape(batch, dim, A.shape[1])


def selective_scan_chunked_backward(
    grad_out: Tensor,
    grad_state: Tensor,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    chunk_size: int,
) -> list[Tensor | None]:
    """Gradients for (u, delta, A, B, C, D, z, delta_bias); None for an absent input.

    Memory-bounded: the forward keeps only the state entering each chunk (1 / chunk_size of the states), and the
    chunks are then differentiated one at a time, last to first, each recomputed under ``torch.func.vjp`` (a custom
    op's kernel runs with the autograd keys excluded; functorch's transforms re-enable them for their own level).
    """
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, length = u.shape
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    slots = [i for i, t in enumerate(inputs) if t is not None]

    def full(present: tuple[Tensor, ...]) -> list:
        args = list(inputs)
        for i, t in zip(slots, present):
            args[i] = t
        return args

    def prologue(*present):
        u_, delta_, A_, B_, C_, _, _, bias_ = full(present)
        return _prologue(u_, delta_, A_, B_, C_, bias_, delta_softplus, dtype)

    def finish(y, *present):
        u_, _, _, _, _, D_, z_, _ = full(present)
        return epilogue(y.reshape(batch, dim, length), u_, D_, z_).to(u.dtype)

    present = [inputs[i] for i in slots]
    (dt, w, Ag, Bt, Ct), prologue_vjp = torch.func.vjp(prologue, *present)
    y, _, starts = _scan_chunks(dt, w, Ag, Bt, Ct, chunk_size)
    _, finish_vjp = torch.func.vjp(finish, y, *present)
    grad_y, *grads = finish_vjp(grad_out)
    g_dt, g_w, g_A, g_B, g_C = (torch.zeros_like(t) for t in (dt, w, Ag, Bt, Ct))
    g_x = grad_state.to(dtype).reshape(starts[0].shape)
    for (start, stop), x in zip(reversed(_bounds(length, chunk_size)), reversed(starts)):
        chunk_inputs = (dt[..., start:stop], w[..., start:stop], Ag, Bt[:, :, start:stop], Ct[:, :, start:stop], x)
        _, chunk_vjp = torch.func.vjp(_chunk, *chunk_inputs)
        gdt, gw, gA, gB, gC, g_x = chunk_vjp((grad_y[..., start:stop], g_x))
        g_dt[..., start:stop], g_w[..., start:stop] = gdt, gw
        g_B[:, :, start:stop], g_C[:, :, start:stop] = gB, gC
        g_A += gA
    grads = [a + b for a, b in zip(grads, prologue_vjp((g_dt, g_w, g_A, g_B, g_C)))]
    out: list[Tensor | None] = [None] * len(inputs)
    for i, g in zip(slots, grads):
        out[i] = g
    return out

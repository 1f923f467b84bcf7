"""Chunked closed-form selective scan in plain PyTorch (any device, differentiable through autograd).

Inside a chunk of T steps let cum_t = A * (dt_1 + ... + dt_t) per (channel, state) and v_s = dt_s * B_s * u_s. Then

    x_t = exp(cum_t) * (x_0 + sum_{s <= t} v_s / exp(cum_s)),

so every state of the chunk comes from one cumulative sum of dt (N times smaller than the states), one exponential,
one division and one cumulative sum per (step, channel, state): no (T, T) matrices, and only one chunk's
(batch, dim, T, N) temporaries at a time. The chunk's tensors are time-major, (b, G, T, channels, N): the cumulative
sum then adds whole contiguous slabs, and the output y_t = x_t . C_t is one batched matrix-vector product.

exp(cum_s) leaves float32's normal range once the in-chunk log-decay passes ~87 (large dt or long chunks), the
gradient of the division (-v / exp(cum)^2) once it passes ~44, and the gradient w.r.t. A loses precision long before
(3e-5 relative at 40, 9e-4 at 59, against 1e-5 below 30).
Exact guard: the (batch, channel) rows of a chunk whose total log-decay passes ``_GUARD`` are re-done with the
per-step recurrence x_t = exp(dt_t A) x_{t-1} + v_t (multiplicative, so it can only underflow), and their factorised
values are computed from a zeroed log-decay so that they stay finite (a NaN in the discarded branch of a select
would still poison the gradient).
"""

import torch
from torch import Tensor

from ._scan_common import compute_dtype, epilogue, grouped_bc, prepare_delta

# exp(-30) ~ 1e-13: the division and its gradient stay far inside float32's range, and A's gradient within ~1e-5
_GUARD = 30.0
# a chunk's (batch, dim, T, N) temporaries are kept near this many elements (2 MB of float32, within one core's L2),
# within 8 and 32 steps: at the VMamba-T stage-1 and Vim-Ti shapes (N = 16) that is 8 steps, and 16 or 32 run those
# 1.3-1.9x slower on a 2-core CPU; with VMamba2's N = 1, 32 steps run 1.2x faster than 8 (fewer, larger operations)
_CHUNK_ELEMENTS = 1 << 19
_MIN_CHUNK, _MAX_CHUNK = 8, 32


def default_chunk_size(batch: int, dim: int, state: int) -> int:
    """Steps per chunk for a (batch, dim, L) scan with N = ``state``: temporaries of about _CHUNK_ELEMENTS."""
    return max(_MIN_CHUNK, min(_MAX_CHUNK, _CHUNK_ELEMENTS // (batch * dim * state)))


def _chunk(dt: Tensor, w: Tensor, A: Tensor, Bt: Tensor, Ct: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk, time-major: dt, w = dt * u (b, G, T, dg); A (G, dg, N); Bt, Ct (b, G, T, N); x (b, G, dg, N).

    Returns y (b, G, T, dg) and the state after the chunk (b, G, dg, N).
    """
    cum = dt.cumsum(2)[..., None] * A[:, None]  # (b, G, T, dg, N)
    risky = (cum[:, :, -1] < -_GUARD).any(-1)  # (b, G, dg): rows whose factorised form could underflow
    any_risky = bool(risky.any())
    if any_risky:
        cum = cum.masked_fill(risky[:, :, None, :, None], 0.0)
    decay = torch.exp(cum)
    v = w[..., None] * Bt[:, :, :, None]  # (b, G, T, dg, N)
    states = decay * (torch.cumsum(v / decay, dim=2) + x[:, :, None])
    if any_risky:
        # the per-step recurrence on the risky rows only, channel-major (k, T, N), then scattered back over their
        # (finite) placeholders
        dt_r, v_r, x_r = dt.movedim(2, 3)[risky], v.movedim(2, 3)[risky], x[risky]
        A_r = A.expand(risky.shape[0], *A.shape)[risky]
        steps = []
        for t in range(dt_r.shape[1]):
            x_r = torch.exp(dt_r[:, t, None] * A_r) * x_r + v_r[:, t]
            steps.append(x_r)
        exact = torch.index_put(torch.zeros_like(states.movedim(2, 3)), (risky,), torch.stack(steps, dim=1))
        states = torch.where(risky[:, :, None, :, None], exact.movedim(3, 2), states)
    y = (states @ Ct[..., None]).squeeze(-1)
    # a copy, not a view: the caller keeps every chunk's entering state, and a view would keep the chunk's whole
    # (b, G, T, dg, N) states alive with it (T times the memory, and fresh pages for every chunk)
    return y, states[:, :, -1].clone()


def _prologue(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, delta_bias: Tensor | None, softplus: bool, dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Full-length, time-major inputs of the chunk loop in the compute dtype: dt, w = dt * u (b, G, L, dg);
    A (G, dg, N); B and C (b, G, L, N), so that each chunk's slice is contiguous and broadcasts with N innermost."""
    batch, dim, length = u.shape
    Bg, Cg = grouped_bc(B.to(dtype), C.to(dtype))
    groups = Bg.shape[1]
    per_group = dim // groups
    Bt, Ct = Bg.transpose(-1, -2).contiguous(), Cg.transpose(-1, -2).contiguous()
    dt = prepare_delta(delta, delta_bias, softplus, dtype).view(batch, groups, per_group, length)
    w = dt * u.to(dtype).view(batch, groups, per_group, length)
    dt, w = dt.transpose(2, 3).contiguous(), w.transpose(2, 3).contiguous()
    return dt, w, A.to(dtype).view(groups, per_group, A.shape[1]), Bt, Ct


def _channel_major(y: Tensor) -> Tensor:
    """(b, G, L, dg) -> (b, G * dg, L)."""
    batch, groups, length, per_group = y.shape
    return y.transpose(2, 3).reshape(batch, groups * per_group, length)


def _bounds(length: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_size, length)) for start in range(0, length, chunk_size)]


def _scan_chunks(dt, w, A, Bt, Ct, chunk_size: int, keep_starts: bool) -> tuple[Tensor, Tensor, list[Tensor]]:
    """y (b, G, L, dg), the last state and, if ``keep_starts`` (for the backward), the state entering every chunk."""
    batch, groups, length, per_group = dt.shape
    x = dt.new_zeros(batch, groups, per_group, A.shape[-1])
    ys, starts = [], []
    # A Python loop over chunks keeps the (b, dim, T, N) temporaries to one chunk at a time
    for start, stop in _bounds(length, chunk_size):
        if keep_starts:
            starts.append(x)
        y, x = _chunk(dt[:, :, start:stop], w[:, :, start:stop], A, Bt[:, :, start:stop], Ct[:, :, start:stop], x)
        ys.append(y)
    return torch.cat(ys, dim=2), x, starts


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
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Return (out in u's dtype, last state (batch, dim, N) in the compute dtype); ``chunk_size=None``: see
    `default_chunk_size`."""
    if chunk_size is None:
        chunk_size = default_chunk_size(u.shape[0], u.shape[1], A.shape[1])
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, _ = u.shape
    y, x, _ = _scan_chunks(*_prologue(u, delta, A, B, C, delta_bias, delta_softplus, dtype), chunk_size, False)
    out = epilogue(_channel_major(y), u, D, z)
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
    chunk_size: int | None,
) -> list[Tensor | None]:
    """Gradients for (u, delta, A, B, C, D, z, delta_bias); None for an absent input.

    Memory-bounded: the forward keeps only the state entering each chunk (1 / chunk_size of the states), and the
    chunks are then differentiated one at a time, last to first, each recomputed under ``torch.func.vjp`` (a custom
    op's kernel runs with the autograd keys excluded; functorch's transforms re-enable them for their own level).
    """
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    length = u.shape[2]
    if chunk_size is None:
        chunk_size = default_chunk_size(u.shape[0], u.shape[1], A.shape[1])
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
        return epilogue(_channel_major(y), u_, D_, z_).to(u.dtype)

    present = [inputs[i] for i in slots]
    (dt, w, Ag, Bt, Ct), prologue_vjp = torch.func.vjp(prologue, *present)
    y, _, starts = _scan_chunks(dt, w, Ag, Bt, Ct, chunk_size, True)
    _, finish_vjp = torch.func.vjp(finish, y, *present)
    grad_y, *grads = finish_vjp(grad_out)
    g_dt, g_w, g_A, g_B, g_C = (torch.zeros_like(t) for t in (dt, w, Ag, Bt, Ct))
    g_x = grad_state.to(dtype).reshape(starts[0].shape)
    for (start, stop), x in zip(reversed(_bounds(length, chunk_size)), reversed(starts)):
        chunk_inputs = (dt[:, :, start:stop], w[:, :, start:stop], Ag, Bt[:, :, start:stop], Ct[:, :, start:stop], x)
        _, chunk_vjp = torch.func.vjp(_chunk, *chunk_inputs)
        gdt, gw, gA, gB, gC, g_x = chunk_vjp((grad_y[:, :, start:stop], g_x))
        g_dt[:, :, start:stop], g_w[:, :, start:stop] = gdt, gw
        g_B[:, :, start:stop], g_C[:, :, start:stop] = gB, gC
        g_A += gA
    grads = [a + b for a, b in zip(grads, prologue_vjp((g_dt, g_w, g_A, g_B, g_C)))]
    out: list[Tensor | None] = [None] * len(inputs)
    for i, g in zip(slots, grads):
        out[i] = g
    return out

"""Fused CPU selective scan through numba: one pass over L per (batch, channel), the N states in registers.

numba ships wheels (no compiler at install) and compiles these kernels on first use (cached on disk afterwards).
The scan is bound by its B*D*L*N exponentials, so float32 uses an inlined Cephes-style expf (Cody-Waite range
reduction, degree-5 minimax polynomial, exponent built by a bit cast, ~1 ulp) that LLVM vectorizes over the N
states; numba's ``math.exp`` is a scalar libm call per element. Arguments below about -87.3 (results under float32's
smallest normal number, 1.2e-38) flush to an exact 0. float64 uses ``math.exp``.

Forward: parallel over batch x channel. Backward: parallel over batch x group (each task owns its group's slice of
the B and C gradients, so there are no races); per channel it re-runs the forward, keeping the states and decays of
that one channel (2 L N numbers per thread, not per batch), then runs the reverse recurrence.
"""

import math

import numpy as np
import torch
from llvmlite import ir
from numba import config, njit, prange, set_num_threads, types
from numba.extending import intrinsic, overload
from torch import Tensor

from ._scan_common import compute_dtype, epilogue, grouped_bc, prepare_delta

# reassociation lets LLVM vectorize the sums over N; no nnan/ninf, so infinities and NaNs still propagate
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_EXP_LO = np.float32(-87.33654)  # log(2 ** -126)
_EXP_HI = np.float32(88.0)  # below log(2 ** 127.5): keeps the exponent field finite
_P0, _P1, _P2 = np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), np.float32(8.3334519073e-3)
_P3, _P4, _P5 = np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), np.float32(5.0000001201e-1)
_HALF, _ONE, _ZERO = np.float32(0.5), np.float32(1.0), np.float32(0.0)


@intrinsic
def _float32_from_bits(typingctx, bits):
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


def _exp(x):  # pragma: no cover - replaced by the overload below inside numba
    return math.exp(x)


@overload(_exp, inline="always")
def _exp_overload(x):
    if x == types.float32:

        def expf(x):
            clamped = min(max(x, _EXP_LO), _EXP_HI)
            k = np.floor(clamped * _LOG2E + _HALF)
            r = clamped - k * _LN2_HI - k * _LN2_LO
            p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
            p = p * r * r + r + _ONE
            scale = _float32_from_bits(np.int32((np.int32(k) + np.int32(127)) << np.int32(23)))
            return p * scale if x >= _EXP_LO else _ZERO

        return expf
    return lambda x: math.exp(x)


@njit(inline="always", fastmath=_FASTMATH)
def _forward_row(u, dt, a, Bg, Cg, y, state):  # pragma: no cover - compiled by numba
    """One (batch, channel): u, dt, y (L,); a (N,); Bg, Cg (L, N). Returns the last state."""
    x = np.zeros(state, dtype=u.dtype)
    for t in range(u.shape[0]):
        delta = dt[t]
        w = delta * u[t]
        acc = w - w
        for n in range(state):
            xn = _exp(delta * a[n]) * x[n] + w * Bg[t, n]
            x[n] = xn
            acc += xn * Cg[t, n]
        y[t] = acc
    return x


@njit(inline="always", fastmath=_FASTMATH)
def _backward_row(u, dt, a, Bg, Cg, gy, glast, y, gu, gdt, gBg, gCg, xs, decays, state):  # pragma: no cover
    """One (batch, channel): recompute the states into xs (L + 1, N) and decays (L, N), then run the reverse
    recurrence. Writes y, gu, gdt (L,); accumulates into gBg, gCg (L, N); returns the gradient w.r.t. a (N,)."""
    length = u.shape[0]
    x = np.zeros(state, dtype=u.dtype)  # the running state in its own array: reading xs[t] while writing xs[t + 1]
    xs[0] = x  # kept LLVM from vectorizing this loop (6x slower)
    for t in range(length):
        delta = dt[t]
        w = delta * u[t]
        acc = w - w
        for n in range(state):
            decay = _exp(delta * a[n])
            xn = decay * x[n] + w * Bg[t, n]
            decays[t, n] = decay
            x[n] = xn
            xs[t + 1, n] = xn
            acc += xn * Cg[t, n]
        y[t] = acc
    gx = glast.copy()
    ga = np.zeros(state, dtype=u.dtype)
    for t in range(length - 1, -1, -1):
        delta = dt[t]
        uu = u[t]
        w = delta * uu
        gyt = gy[t]
        s_da = w - w
        s_b = w - w
        for n in range(state):
            gxn = gx[n] + gyt * Cg[t, n]  # total gradient reaching x_t
            gCg[t, n] += gyt * xs[t + 1, n]
            q = gxn * xs[t, n] * decays[t, n]  # gradient w.r.t. the log-decay dt_t * A_n
            s_da += q * a[n]
            ga[n] += q * delta
            s_b += gxn * Bg[t, n]
            gBg[t, n] += gxn * w
            gx[n] = gxn * decays[t, n]
        gdt[t] = s_da + s_b * uu
        gu[t] = s_b * delta
    return ga


def _make_kernels(fixed_state):
    """Forward and backward kernels; ``fixed_state`` > 0 makes N a compile-time constant (fully unrolled)."""

    @njit(parallel=True, cache=True, fastmath=_FASTMATH)
    def forward(u, dt, A, Bt, Ct, y, last):  # pragma: no cover - compiled by numba
        """u, dt, y (b, D, L); A (D, N); Bt, Ct (b, G, L, N); last (b, D, N)."""
        batch, dim, _ = u.shape
        per_group = dim // Bt.shape[1]
        state = fixed_state if fixed_state > 0 else A.shape[1]
        for task in prange(batch * dim):
            b = task // dim
            d = task - b * dim
            g = d // per_group
            last[b, d] = _forward_row(u[b, d], dt[b, d], A[d], Bt[b, g], Ct[b, g], y[b, d], state)

    @njit(parallel=True, cache=True, fastmath=_FASTMATH)
    def backward(u, dt, A, Bt, Ct, gy, glast, y, gu, gdt, gA, gBt, gCt):  # pragma: no cover - compiled by numba
        """Gradients of sum(gy * y) + sum(glast * last) for y = scan(u, dt, A, B, C) (no epilogue).

        Writes y (recomputed), gu, gdt (b, D, L), gA (b, D, N): per batch, summed by the caller; accumulates into
        the zero-initialised gBt, gCt (b, G, L, N). Parallel over (batch, group): each task owns its slice of gBt
        and gCt, and keeps one channel's states and decays at a time.
        """
        batch, dim, length = u.shape
        groups = Bt.shape[1]
        per_group = dim // groups
        state = fixed_state if fixed_state > 0 else A.shape[1]
        for task in prange(batch * groups):
            b = task // groups
            g = task - b * groups
            xs = np.empty((length + 1, A.shape[1]), dtype=u.dtype)
            decays = np.empty((length, A.shape[1]), dtype=u.dtype)
            for d in range(g * per_group, (g + 1) * per_group):
                gA[b, d] = _backward_row(
                    u[b, d],
                    dt[b, d],
                    A[d],
                    Bt[b, g],
                    Ct[b, g],
                    gy[b, d],
                    glast[b, d],
                    y[b, d],
                    gu[b, d],
                    gdt[b, d],
                    gBt[b, g],
                    gCt[b, g],
                    xs,
                    decays,
                    state,
                )

    return forward, backward


# Mamba's N = 16 everywhere in the models here: a constant trip count lets LLVM unroll the state loop
_FORWARD, _BACKWARD = _make_kernels(0)
_FORWARD_16, _BACKWARD_16 = _make_kernels(16)


def _kernels(state: int):
    return (_FORWARD_16, _BACKWARD_16) if state == 16 else (_FORWARD, _BACKWARD)


# below this many state updates (~0.5 ms on one core) waking a second thread costs more than it saves
_PARALLEL_MIN_WORK = 1 << 18


def _set_threads(work: int) -> None:
    """Follow torch's thread count (tests pin it to 1; numba's default is every core); one thread for small work."""
    torch_threads = torch.get_num_threads()
    set_num_threads(max(1, min(torch_threads, config.NUMBA_NUM_THREADS)) if work >= _PARALLEL_MIN_WORK else 1)
    # the first call starts numba's OpenMP pool, which resets the OpenMP thread count that torch shares
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)


def _kernel_inputs(u, delta, A, B, C, delta_bias, delta_softplus, dtype):
    Bg, Cg = grouped_bc(B.detach().to(dtype), C.detach().to(dtype))
    Bt = Bg.transpose(-1, -2).contiguous()
    Ct = Cg.transpose(-1, -2).contiguous()
    dt = prepare_delta(delta.detach(), None if delta_bias is None else delta_bias.detach(), delta_softplus, dtype)
    return u.detach().to(dtype).contiguous(), dt.contiguous(), A.detach().to(dtype).contiguous(), Bt, Ct


def selective_scan_numba(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> tuple[Tensor, Tensor]:
    """Return (out in u's dtype, last state (batch, dim, N) in the compute dtype). CPU tensors only; no autograd."""
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    uc, dt, Ac, Bt, Ct = _kernel_inputs(u, delta, A, B, C, delta_bias, delta_softplus, dtype)
    y = torch.empty_like(uc)
    last = uc.new_empty(u.shape[0], u.shape[1], A.shape[1])
    _set_threads(last.numel() * u.shape[2])
    _kernels(A.shape[1])[0](uc.numpy(), dt.numpy(), Ac.numpy(), Bt.numpy(), Ct.numpy(), y.numpy(), last.numpy())
    with torch.no_grad():
        out = epilogue(y, uc, None if D is None else D.detach(), None if z is None else z.detach())
    return out.to(u.dtype), last


def selective_scan_numba_backward(
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
) -> list[Tensor | None]:
    """Gradients for (u, delta, A, B, C, D, z, delta_bias) in their dtypes; None for an absent input."""
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    uc, dt, Ac, Bt, Ct = _kernel_inputs(u, delta, A, B, C, delta_bias, delta_softplus, dtype)
    g = grad_out.detach().to(dtype)
    # epilogue out = (y + D u) * silu(z): the scan's output y only receives g * silu(z)
    gate = None
    if z is not None:
        zc = z.detach().to(dtype)
        sig = torch.sigmoid(zc)
        gate = zc * sig
        gy = g * gate
    else:
        gy = g
    batch, dim, length = u.shape
    state = A.shape[1]
    y = torch.empty_like(uc)
    gu = torch.empty_like(uc)
    gdt = torch.empty_like(uc)
    gA = uc.new_empty(batch, dim, state)
    gBt = torch.zeros_like(Bt)
    gCt = torch.zeros_like(Ct)
    _set_threads(gA.numel() * length)
    _kernels(A.shape[1])[1](
        uc.numpy(),
        dt.numpy(),
        Ac.numpy(),
        Bt.numpy(),
        Ct.numpy(),
        gy.contiguous().numpy(),
        grad_state.detach().to(dtype).contiguous().numpy(),
        y.numpy(),
        gu.numpy(),
        gdt.numpy(),
        gA.numpy(),
        gBt.numpy(),
        gCt.numpy(),
    )
    grads: list[Tensor | None] = [None] * 8
    if D is not None:
        Dc = D.detach().to(dtype)
        gu = gu + gy * Dc[:, None]
        grads[5] = (gy * uc).sum((0, 2))
        pre = y + Dc[:, None] * uc
    else:
        pre = y
    if z is not None:
        grads[6] = g * pre * sig * (1 + zc * (1 - sig))  # d silu(z) / dz = sigmoid(z) (1 + z (1 - sigmoid(z)))
    if delta_softplus:
        raw = delta.detach().to(dtype)
        if delta_bias is not None:
            raw = raw + delta_bias.detach().to(dtype)[:, None]
        gdt = gdt * torch.sigmoid(raw)
    if delta_bias is not None:
        grads[7] = gdt.sum((0, 2))
    grads[0], grads[1], grads[2] = gu, gdt, gA.sum(0)
    grads[3] = _ungroup(gBt.transpose(-1, -2), B)
    grads[4] = _ungroup(gCt.transpose(-1, -2), C)
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    return [None if gr is None else gr.to(t.dtype).contiguous() for gr, t in zip(grads, inputs)]


def _ungroup(grad: Tensor, like: Tensor) -> Tensor:
    """Sum a (b, G, N, L) gradient back over the group refinement of grouped_bc, to ``like``'s shape."""
    own = 1 if like.dim() == 3 else like.shape[1]
    batch, groups, state, length = grad.shape
    grad = grad.reshape(batch, own, groups // own, state, length).sum(2)
    return grad.reshape(like.shape)

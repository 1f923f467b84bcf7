"""Fused CPU selective scan through numba.

numba ships wheels (no compiler at install) and compiles these kernels on first use (cached on disk afterwards).
The scan is bound by its B*D*L*N exponentials, so float32 uses an inlined Cephes-style expf (Cody-Waite range
reduction, degree-5 minimax polynomial, exponent built by a bit cast, ~1 ulp) that LLVM vectorizes; numba's
``math.exp`` is a scalar libm call per element. Arguments below about -87.3 (results under float32's smallest normal
number, 1.2e-38) flush to an exact 0. float64 uses ``math.exp``.

Forward: parallel over (batch, block of up to 64 channels of one group), one channel per vector lane. The channels of
a block share B and C (one broadcast per state and step), each lane accumulates its own output (no horizontal sum
over N), and the delta bias, softplus, D skip and z gate are fused in, one tile of steps at a time, so the inputs are
read once and the output written once (no full-size temporaries); while a tile is scanned, the rows of the tile two
ahead are prefetched. Backward: parallel over batch x group (each task
owns its group's slice of the B and C gradients, so there are no races); per channel it re-runs the forward, keeping
the states and decays of that one channel (2 L N numbers per thread, not per batch), then runs the reverse recurrence.
"""

import math

import numpy as np
import torch
from llvmlite import ir
from numba import config, njit, prange, set_num_threads, types
from numba.core import cgutils
from numba.extending import intrinsic, overload
from torch import Tensor

from ._scan_common import compute_dtype, grouped_bc, prepare_delta

# reassociation lets LLVM vectorize the sums over N; no nnan/ninf, so infinities and NaNs still propagate
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
# error_model="numpy" in the kernels: Python's division-by-zero check is a branch that keeps LLVM from vectorizing
# any loop with a division (the ones here divide by 1 + e or 2 + e, e >= 0)

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_EXP_LO = np.float32(-87.33654)  # log(2 ** -126)
_EXP_HI = np.float32(88.0)  # below log(2 ** 127.5): keeps the exponent field finite
_P0, _P1, _P2 = np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), np.float32(8.3334519073e-3)
_P3, _P4, _P5 = np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), np.float32(5.0000001201e-1)
_HALF, _ONE, _TWO, _ZERO = np.float32(0.5), np.float32(1.0), np.float32(2.0), np.float32(0.0)
_SOFTPLUS_THRESHOLD = np.float32(20.0)  # torch's: softplus(x) = x above it
# 1 / (2 k + 1): the atanh series of _log1p_small
_S1, _S2, _S3, _S4 = np.float32(1 / 3), np.float32(1 / 5), np.float32(1 / 7), np.float32(1 / 9)
_S5, _S6, _S7 = np.float32(1 / 11), np.float32(1 / 13), np.float32(1 / 15)

# channels of one group scanned side by side, one per vector lane: they share B and C, so one broadcast of B_n and
# C_n serves them all, and the inner loop is long enough to amortise its entry checks
_MAX_LANES = 64
_STEPS = 16  # time steps per tile: the tile's transposed inputs, deltas and outputs (16 x 64 x 4 B each) stay in L1
# the rows of the tile this many tiles ahead are prefetched into L2 while a tile is scanned, a few rows per step: the
# transposing loads read one cache line from each of up to 64 rows (192 with u, delta and out), too many streams for
# the hardware prefetchers
_PREFETCH_TILES = 2


@intrinsic
def _float32_from_bits(typingctx, bits):
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


def _make_prefetch(write: bool):
    """An intrinsic prefetch(address) into L2 (LLVM's llvm.prefetch, locality 2), for reading or for writing."""

    @intrinsic
    def prefetch(typingctx, address):
        if address != types.intp:
            return None

        def codegen(context, builder, signature, args):
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            name = "llvm.prefetch.p0" if str(i8p) == "ptr" else "llvm.prefetch.p0i8"  # opaque or typed pointers
            function = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), name
            )
            builder.call(function, [builder.inttoptr(args[0], i8p), i32(int(write)), i32(2), i32(1)])
            return context.get_dummy_value()

        return types.none(address), codegen

    return prefetch


_prefetch_read = _make_prefetch(write=False)
_prefetch_write = _make_prefetch(write=True)


@njit(inline="always")
def _address(array, b, c, t):  # pragma: no cover - compiled by numba
    """The address of array[b, c, t] as a signed integer (the pointer is unsigned: mixing the two gives a float)."""
    return np.intp(array.ctypes.data) + b * array.strides[0] + c * array.strides[1] + t * array.strides[2]


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
            # a product, not a select: inlined into a branch of its caller, a select trips numba's SSA check
            return p * scale * np.float32(x >= _EXP_LO)

        return expf
    return lambda x: math.exp(x)


def _log1p_small(e):  # pragma: no cover - replaced by the overload below inside numba
    return math.log1p(e)


@overload(_log1p_small, inline="always")
def _log1p_small_overload(e):
    """log1p(e) for 0 <= e <= 1; float32 as a polynomial that LLVM vectorizes (math.log1p is a libm call)."""
    if e == types.float32:

        def log1pf(e):
            # log1p(e) = 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + ...) with s = e / (2 + e) <= 1/3: no cancellation for
            # small e, and the series is below float32's rounding after the s^14 / 15 term
            s = e / (_TWO + e)
            s2 = s * s
            p = ((((((_S7 * s2 + _S6) * s2 + _S5) * s2 + _S4) * s2 + _S3) * s2 + _S2) * s2 + _S1) * s2 + _ONE
            return _TWO * s * p

        return log1pf
    return lambda e: math.log1p(e)


@njit(inline="always", fastmath=_FASTMATH)
def _softplus(x):  # pragma: no cover - compiled by numba
    """torch's softplus (threshold 20): log1p(exp(x)), written as max(x, 0) + log1p(exp(-|x|)) so it cannot overflow."""
    return x if x > _SOFTPLUS_THRESHOLD else max(x, _ZERO) + _log1p_small(_exp(-abs(x)))


@njit(inline="always", fastmath=_FASTMATH)
def _silu(x):  # pragma: no cover - compiled by numba
    """x * sigmoid(x), with the exponential of -|x| only (no overflow for large |x|)."""
    e = _exp(-abs(x))
    r = _ONE / (_ONE + e)
    return x * (r if x >= _ZERO else e * r)


@njit(inline="always")
def _load_tile(src, b, c0, width, t0, steps, tile):  # pragma: no cover - compiled by numba
    """tile[t, c] = src[b, c0 + c, t0 + t]: the transposing copy that puts one channel in each lane."""
    # lanes inner: LLVM gathers along c and stores whole tile rows, ~6x faster than scattering along t
    for t in range(steps):
        for c in range(width):
            tile[t, c] = src[b, c0 + c, t0 + t]


@njit(inline="always")
def _store_tile(tile, b, c0, width, t0, steps, dst):  # pragma: no cover - compiled by numba
    """dst[b, c0 + c, t0 + t] = tile[t, c], the inverse of _load_tile (lanes inner for the same reason)."""
    for t in range(steps):
        for c in range(width):
            dst[b, c0 + c, t0 + t] = tile[t, c]


@njit(inline="always", fastmath=_FASTMATH)
def _forward_block(u, delta, A, Bg, Cg, D, z, bias, flags, out, last, b, c0, width, lanes):  # pragma: no cover
    """Channels c0 .. c0 + width of batch element b, one per lane of ``lanes`` (>= width); all in one group, whose
    (N, L) rows are Bg, Cg. Writes out[b, c0:c0 + width] = (scan + D u) * silu(z) and last[b, c0:c0 + width].

    flags: (softplus, has D, has z, has bias).
    """
    softplus, has_d, has_z, has_bias = flags
    dtype = u.dtype
    length = u.shape[2]
    state = A.shape[1]
    # lanes past width stay zero (dt = softplus(0) or 0, u = 0, A = 0): their state stays exactly 0
    a = np.zeros((state, lanes), dtype)
    lane_bias = np.zeros(lanes, dtype)
    lane_d = np.zeros(lanes, dtype)
    for c in range(width):
        for n in range(state):
            a[n, c] = A[c0 + c, n]
        if has_bias:
            lane_bias[c] = bias[c0 + c]
        if has_d:
            lane_d[c] = D[c0 + c]
    x = np.zeros((state, lanes), dtype)
    raw_dt = np.zeros((_STEPS, lanes), dtype)
    raw_u = np.zeros((_STEPS, lanes), dtype)
    raw_z = np.zeros((_STEPS, lanes), dtype)
    dts = np.empty((_STEPS, lanes), dtype)
    ws = np.empty((_STEPS, lanes), dtype)
    ys = np.empty((_STEPS, lanes), dtype)
    rows_per_step = (width + _STEPS - 1) // _STEPS
    for t0 in range(0, length, _STEPS):
        steps = min(_STEPS, length - t0)
        ahead = t0 + _PREFETCH_TILES * _STEPS
        ahead_last = min(ahead + _STEPS, length) - 1  # the tile's row may straddle two cache lines
        _load_tile(delta, b, c0, width, t0, steps, raw_dt)
        _load_tile(u, b, c0, width, t0, steps, raw_u)
        if has_z:
            _load_tile(z, b, c0, width, t0, steps, raw_z)
        # one loop per flag setting: a branch inside would keep LLVM from vectorizing the loop
        if softplus:
            for t in range(steps):
                for c in range(lanes):
                    dts[t, c] = _softplus(raw_dt[t, c] + lane_bias[c])
        else:
            for t in range(steps):
                for c in range(lanes):
                    dts[t, c] = raw_dt[t, c] + lane_bias[c]
        for t in range(steps):
            for c in range(lanes):
                ws[t, c] = dts[t, c] * raw_u[t, c]
                ys[t, c] = 0
        for t in range(steps):
            tt = t0 + t
            if ahead < length:
                for c in range(c0 + t * rows_per_step, c0 + min((t + 1) * rows_per_step, width)):
                    for step in (ahead, ahead_last):
                        _prefetch_read(_address(delta, b, c, step))
                        _prefetch_read(_address(u, b, c, step))
                        if has_z:
                            _prefetch_read(_address(z, b, c, step))
                        _prefetch_write(_address(out, b, c, step))
            for n in range(state):
                bn = Bg[n, tt]
                cn = Cg[n, tt]
                # the vectorized loop: one channel per lane, so no horizontal sum; the lane count is a runtime
                # value on purpose (a constant short trip count gets fully unrolled before LLVM's loop vectorizer
                # sees it, and the SLP vectorizer makes gathers of the result)
                for c in range(lanes):
                    xn = _exp(dts[t, c] * a[n, c]) * x[n, c] + ws[t, c] * bn
                    x[n, c] = xn
                    ys[t, c] += xn * cn
        if has_d:
            for t in range(steps):
                for c in range(lanes):
                    ys[t, c] += lane_d[c] * raw_u[t, c]
        if has_z:
            for t in range(steps):
                for c in range(lanes):
                    ys[t, c] *= _silu(raw_z[t, c])
        _store_tile(ys, b, c0, width, t0, steps, out)
    for c in range(width):
        for n in range(state):
            last[b, c0 + c, n] = x[n, c]


@njit(parallel=True, cache=True, fastmath=_FASTMATH, error_model="numpy")
def _forward(u, delta, A, B, C, D, z, bias, flags, out, last):  # pragma: no cover - compiled by numba
    """u, delta, z, out (b, D, L); A (D, N); B, C (b, G, N, L); D, bias (D,); last (b, D, N).

    Parallel over (batch, block of up to _MAX_LANES channels of one group); the blocks of a group are of equal
    width (a multiple of 8, the vector width), so the static split of prange keeps the threads balanced.
    """
    batch, dim, _ = u.shape
    groups = B.shape[1]
    per_group = dim // groups
    blocks = (per_group + _MAX_LANES - 1) // _MAX_LANES
    lanes = ((per_group + blocks - 1) // blocks + 7) // 8 * 8
    blocks = (per_group + lanes - 1) // lanes
    for task in prange(batch * groups * blocks):
        b = task // (groups * blocks)
        rest = task - b * groups * blocks
        g = rest // blocks
        block = rest - g * blocks
        c0 = g * per_group + block * lanes
        width = min(lanes, per_group - block * lanes)
        _forward_block(u, delta, A, B[b, g], C[b, g], D, z, bias, flags, out, last, b, c0, width, lanes)


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


def _make_backward(fixed_state):
    """The backward kernel; ``fixed_state`` > 0 makes N a compile-time constant (fully unrolled)."""

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

    return backward


# Mamba's N = 16 everywhere in the models here: a constant trip count lets LLVM unroll the state loop
_BACKWARD = _make_backward(0)
_BACKWARD_16 = _make_backward(16)


def _backward_kernel(state: int):
    return _BACKWARD_16 if state == 16 else _BACKWARD


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

    def arg(t: Tensor | None, fallback: np.ndarray | None) -> np.ndarray:
        # an absent input is never read (its flag is off): an array of the same type keeps one compiled variant
        return fallback if t is None else t.detach().to(dtype).contiguous().numpy()

    uc = arg(u, None)
    Bg, Cg = grouped_bc(B.detach().to(dtype), C.detach().to(dtype))
    Ac = arg(A, None)
    per_channel = np.zeros(u.shape[1], dtype=uc.dtype)
    flags = (bool(delta_softplus), D is not None, z is not None, delta_bias is not None)
    out = torch.empty(u.shape, dtype=dtype)
    last = torch.empty(u.shape[0], u.shape[1], A.shape[1], dtype=dtype)
    _set_threads(last.numel() * u.shape[2])
    _forward(
        uc,
        arg(delta, None),
        Ac,
        Bg.contiguous().numpy(),
        Cg.contiguous().numpy(),
        arg(D, per_channel),
        arg(z, uc),
        arg(delta_bias, per_channel),
        flags,
        out.numpy(),
        last.numpy(),
    )
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
    _backward_kernel(A.shape[1])(
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

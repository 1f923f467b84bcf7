"""Selective scan as Triton kernels: state in registers, one program per (batch, block of channels).

The forward walks L sequentially and saves the state at the end of every ``chunk`` steps; the backward walks the
chunks from last to first, recomputes each chunk's states from the previous checkpoint into a per-program scratch
buffer and then runs the reverse recurrence. Every channel block lies inside one B group and one C group, so the
reductions over channels (dB, dC) are done in registers and written as per-block partials that PyTorch sums
afterwards: no atomics, the results are deterministic.
"""

import math

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:  # the package works without triton; is_available() then says False
    triton = None
    tl = None

CHUNK = 64
# a block holds BLOCK_D x N states in registers: 32 x 16 fp32 is 4 values per thread at 4 warps
MAX_BLOCK_D = 32


if triton is not None:
    # softplus(x) = x above this, as torch.nn.functional.softplus and mamba_ssm do
    SOFTPLUS_THRESHOLD = tl.constexpr(20.0)

    @triton.jit
    def _softplus(x):
        # log1p(exp(x)) without a log1p intrinsic: log(w) * e / (w - 1) with w = 1 + e is exact to rounding
        # (Goldberg's trick), where the plain log(1 + e) would lose e's digits for very negative x
        e = tl.exp(tl.minimum(x, SOFTPLUS_THRESHOLD))
        w = 1.0 + e
        safe = tl.where(w == 1.0, 2.0, w)
        lp = tl.where(w == 1.0, e, tl.log(safe) * e / (safe - 1.0))
        return tl.where(x > SOFTPLUS_THRESHOLD, x, lp)

    @triton.jit
    def _scan_fwd_kernel(
        u_ptr,
        delta_ptr,
        A_ptr,
        B_ptr,
        C_ptr,
        D_ptr,
        z_ptr,
        bias_ptr,
        out_ptr,
        ckpt_ptr,
        dim,
        L,
        N,
        n_chunks,
        per_group,
        blocks_per_group,
        groups_per_b,
        groups_per_c,
        n_b_groups,
        n_c_groups,
        CHUNK: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_N: tl.constexpr,
        HAS_D: tl.constexpr,
        HAS_Z: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        SOFTPLUS: tl.constexpr,
        ACC: tl.constexpr,
    ):
        blk = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        g = blk // blocks_per_group
        local = (blk % blocks_per_group) * BLOCK_D + tl.arange(0, BLOCK_D)
        d_mask = local < per_group
        d = g * per_group + local
        n = tl.arange(0, BLOCK_N)
        n_mask = n < N
        mask2 = d_mask[:, None] & n_mask[None, :]

        A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=mask2, other=0.0).to(ACC)
        if HAS_D:
            Dv = tl.load(D_ptr + d, mask=d_mask, other=0.0).to(ACC)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(ACC)
        row = (b * dim + d) * L  # (BLOCK_D,) offsets of the channels' rows in u, delta, z, out
        b_row = (b * n_b_groups + g // groups_per_b) * N * L + n * L  # (BLOCK_N,) rows of this block's B group
        c_row = (b * n_c_groups + g // groups_per_c) * N * L + n * L
        ckpt_off = (b * dim + d)[:, None] * n_chunks * N + n[None, :]

        x = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
        for t in range(L):
            u_t = tl.load(u_ptr + row + t, mask=d_mask, other=0.0).to(ACC)
            dt = tl.load(delta_ptr + row + t, mask=d_mask, other=0.0).to(ACC)
            if HAS_BIAS:
                dt = dt + bias
            if SOFTPLUS:
                dt = _softplus(dt)
            B_t = tl.load(B_ptr + b_row + t, mask=n_mask, other=0.0).to(ACC)
            C_t = tl.load(C_ptr + c_row + t, mask=n_mask, other=0.0).to(ACC)
            x = tl.exp(dt[:, None] * A) * x + (dt * u_t)[:, None] * B_t[None, :]
            y = tl.sum(x * C_t[None, :], axis=1)
            if HAS_D:
                y = y + Dv * u_t
            if HAS_Z:
                z_t = tl.load(z_ptr + row + t, mask=d_mask, other=0.0).to(ACC)
                y = y * z_t / (1.0 + tl.exp(-z_t))
            tl.store(out_ptr + row + t, y, mask=d_mask)
            # checkpoint k is the state after the last step of chunk k (the last one is the final state)
            if ((t + 1) % CHUNK == 0) | (t == L - 1):
                tl.store(ckpt_ptr + ckpt_off + (t // CHUNK) * N, x, mask=mask2)

    @triton.jit
    def _scan_bwd_kernel(
        gout_ptr,
        glast_ptr,
        u_ptr,
        delta_ptr,
        A_ptr,
        B_ptr,
        C_ptr,
        D_ptr,
        z_ptr,
        bias_ptr,
        ckpt_ptr,
        scratch_ptr,
        du_ptr,
        ddelta_ptr,
        dz_ptr,
        dA_ptr,
        dD_ptr,
        dbias_ptr,
        dB_ptr,
        dC_ptr,
        dim,
        L,
        N,
        n_chunks,
        per_group,
        blocks_per_group,
        groups_per_b,
        groups_per_c,
        n_b_groups,
        n_c_groups,
        n_blocks,
        CHUNK: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_N: tl.constexpr,
        HAS_D: tl.constexpr,
        HAS_Z: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        SOFTPLUS: tl.constexpr,
        ACC: tl.constexpr,
    ):
        blk = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        g = blk // blocks_per_group
        local = (blk % blocks_per_group) * BLOCK_D + tl.arange(0, BLOCK_D)
        d_mask = local < per_group
        d = g * per_group + local
        n = tl.arange(0, BLOCK_N)
        n_mask = n < N
        mask2 = d_mask[:, None] & n_mask[None, :]

        A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=mask2, other=0.0).to(ACC)
        if HAS_D:
            Dv = tl.load(D_ptr + d, mask=d_mask, other=0.0).to(ACC)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(ACC)
        row = (b * dim + d) * L
        b_row = (b * n_b_groups + g // groups_per_b) * N * L + n * L
        c_row = (b * n_c_groups + g // groups_per_c) * N * L + n * L
        ckpt_off = (b * dim + d)[:, None] * n_chunks * N + n[None, :]
        # this program's private scratch: CHUNK + 1 states of (BLOCK_D, BLOCK_N), slot i + 1 holds x_{t0 + i}
        tile = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + n[None, :]
        scratch = scratch_ptr + (b * n_blocks + blk) * ((CHUNK + 1) * BLOCK_D * BLOCK_N) + tile
        # dB and dC partials of this block: rows (batch, block, N, L)
        part_row = (b * n_blocks + blk) * N * L + n * L

        # h carries exp(delta_{t+1} A) * dx_{t+1}; the gradient of the last state enters as dx_{L+1}'s share
        h = tl.load(glast_ptr + (b * dim + d)[:, None] * N + n[None, :], mask=mask2, other=0.0).to(ACC)
        dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
        dD_acc = tl.zeros((BLOCK_D,), dtype=ACC)
        dbias_acc = tl.zeros((BLOCK_D,), dtype=ACC)
        for kk in range(n_chunks):
            k = n_chunks - 1 - kk
            t0 = k * CHUNK
            steps = tl.minimum(t0 + CHUNK, L) - t0
            # recompute the chunk's states x_{t0} .. x_{t0+steps-1} from the previous chunk's final state
            # (a tensor comparison: the interpreter runs this loop in Python, where k > 0 would be a bool)
            not_first = tl.full((BLOCK_D, BLOCK_N), k, tl.int32) > 0
            x = tl.load(ckpt_ptr + ckpt_off + (k - 1) * N, mask=mask2 & not_first, other=0.0).to(ACC)
            tl.store(scratch, x)
            for i in range(steps):
                t = t0 + i
                u_t = tl.load(u_ptr + row + t, mask=d_mask, other=0.0).to(ACC)
                dt = tl.load(delta_ptr + row + t, mask=d_mask, other=0.0).to(ACC)
                if HAS_BIAS:
                    dt = dt + bias
                if SOFTPLUS:
                    dt = _softplus(dt)
                B_t = tl.load(B_ptr + b_row + t, mask=n_mask, other=0.0).to(ACC)
                x = tl.exp(dt[:, None] * A) * x + (dt * u_t)[:, None] * B_t[None, :]
                tl.store(scratch + (i + 1) * (BLOCK_D * BLOCK_N), x)
            # the reverse pass reads states other threads may have written
            tl.debug_barrier()
            for j in range(steps):
                i = steps - 1 - j
                t = t0 + i
                x = tl.load(scratch + (i + 1) * (BLOCK_D * BLOCK_N))
                # the saved x_{t-1}, not x_t - dt B u: that difference would cancel to rounding noise
                x_prev = tl.load(scratch + i * (BLOCK_D * BLOCK_N))
                u_t = tl.load(u_ptr + row + t, mask=d_mask, other=0.0).to(ACC)
                raw = tl.load(delta_ptr + row + t, mask=d_mask, other=0.0).to(ACC)
                if HAS_BIAS:
                    raw = raw + bias
                dt = raw
                if SOFTPLUS:
                    dt = _softplus(raw)
                B_t = tl.load(B_ptr + b_row + t, mask=n_mask, other=0.0).to(ACC)
                C_t = tl.load(C_ptr + c_row + t, mask=n_mask, other=0.0).to(ACC)
                g_t = tl.load(gout_ptr + row + t, mask=d_mask, other=0.0).to(ACC)
                if HAS_Z:
                    z_t = tl.load(z_ptr + row + t, mask=d_mask, other=0.0).to(ACC)
                    sig = 1.0 / (1.0 + tl.exp(-z_t))
                    pre = tl.sum(x * C_t[None, :], axis=1)
                    if HAS_D:
                        pre = pre + Dv * u_t
                    # d silu(z)/dz = sig * (1 + z * (1 - sig))
                    dz = g_t * pre * sig * (1.0 + z_t * (1.0 - sig))
                    tl.store(dz_ptr + row + t, dz, mask=d_mask)
                    dy = g_t * z_t * sig
                else:
                    dy = g_t
                h = h + dy[:, None] * C_t[None, :]  # h is now dx_t
                bu = B_t[None, :] * u_t[:, None]
                decay = tl.exp(dt[:, None] * A)
                ax_prev = decay * x_prev
                du = tl.sum(h * B_t[None, :], axis=1) * dt
                if HAS_D:
                    du = du + dy * Dv
                    dD_acc += dy * u_t
                tl.store(du_ptr + row + t, du, mask=d_mask)
                hx = h * ax_prev
                ddt = tl.sum(hx * A + h * bu, axis=1)
                if SOFTPLUS:
                    # torch's softplus backward: sigmoid below the threshold, 1 above
                    ddt = tl.where(raw > SOFTPLUS_THRESHOLD, ddt, ddt / (1.0 + tl.exp(-raw)))
                tl.store(ddelta_ptr + row + t, ddt, mask=d_mask)
                if HAS_BIAS:
                    dbias_acc += ddt
                dA_acc += hx * dt[:, None]
                # masked channels hold zeros in h, x and u, so they add nothing to the group sums
                tl.store(dB_ptr + part_row + t, tl.sum(h * (dt * u_t)[:, None], axis=0), mask=n_mask)
                tl.store(dC_ptr + part_row + t, tl.sum(x * dy[:, None], axis=0), mask=n_mask)
                h = h * decay
            # the next chunk's recompute overwrites the scratch this pass has just read
            tl.debug_barrier()
        tl.store(dA_ptr + (b * dim + d)[:, None] * N + n[None, :], dA_acc, mask=mask2)
        if HAS_D:
            tl.store(dD_ptr + b * dim + d, dD_acc, mask=d_mask)
        if HAS_BIAS:
            tl.store(dbias_ptr + b * dim + d, dbias_acc, mask=d_mask)


def is_available(device: torch.device | str) -> bool:
    """True when the kernels can run on this device: CUDA with triton, or CPU under TRITON_INTERPRET=1."""
    if triton is None:
        return False
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available()
    # triton.jit reads TRITON_INTERPRET when the kernels are defined, so setting it later does not help
    return device.type == "cpu" and isinstance(_scan_fwd_kernel, InterpretedFunction)


def _layout(dim: int, B: Tensor, C: Tensor, block_d: int | None) -> dict:
    """Channel blocking: blocks never straddle a B or C group, so channel reductions stay inside a program."""
    gb = B.shape[1] if B.dim() == 4 else 1
    gc = C.shape[1] if C.dim() == 4 else 1
    groups = math.lcm(gb, gc)
    per_group = dim // groups
    block = block_d or min(MAX_BLOCK_D, triton.next_power_of_2(per_group))
    if block & (block - 1):
        raise ValueError(f"block_d must be a power of two, got {block}")
    blocks_per_group = triton.cdiv(per_group, block)
    return {
        "groups": groups,
        "gb": gb,
        "gc": gc,
        "per_group": per_group,
        "block": block,
        "blocks_per_group": blocks_per_group,
        "n_blocks": groups * blocks_per_group,
    }


def _acc_dtype(*tensors: Tensor | None) -> tuple[torch.dtype, "tl.dtype"]:
    """float32 accumulation (as mamba_ssm) unless an input is float64."""
    f64 = any(t is not None and t.dtype == torch.float64 for t in tensors)
    return (torch.float64, tl.float64) if f64 else (torch.float32, tl.float32)


def _contig(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


def _num_warps(block: int, block_n: int) -> int:
    # about 4 state values per thread; at least one warp
    return max(1, min(8, block * block_n // 128))


def triton_scan_forward(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    *,
    chunk: int = CHUNK,
    block_d: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Return (out in u's dtype, last state (batch, dim, N), checkpoints (batch, dim, ceil(L/chunk), N))."""
    batch, dim, length = u.shape
    state = A.shape[1]
    lay = _layout(dim, B, C, block_d)
    acc_torch, acc_tl = _acc_dtype(u, delta, A, B, C, D, z, delta_bias)
    u, delta, A, B, C, D, z, delta_bias = map(_contig, (u, delta, A, B, C, D, z, delta_bias))
    n_chunks = triton.cdiv(length, chunk)
    out = torch.empty_like(u)
    ckpt = torch.empty(batch, dim, n_chunks, state, device=u.device, dtype=acc_torch)
    block_n = triton.next_power_of_2(state)
    # absent optionals get u as a never-read placeholder pointer (their loads sit behind constexpr flags)
    _scan_fwd_kernel[(lay["n_blocks"], batch)](
        u,
        delta,
        A,
        B,
        C,
        u if D is None else D,
        u if z is None else z,
        u if delta_bias is None else delta_bias,
        out,
        ckpt,
        dim,
        length,
        state,
        n_chunks,
        lay["per_group"],
        lay["blocks_per_group"],
        lay["groups"] // lay["gb"],
        lay["groups"] // lay["gc"],
        lay["gb"],
        lay["gc"],
        CHUNK=chunk,
        BLOCK_D=lay["block"],
        BLOCK_N=block_n,
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus),
        ACC=acc_tl,
        num_warps=_num_warps(lay["block"], block_n),
    )
    # a copy, not a view: a custom op may not return outputs that alias each other
    return out, ckpt[:, :, -1].clone(), ckpt


def triton_scan_backward(
    grad_out: Tensor,
    grad_last_state: Tensor | None,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    checkpoints: Tensor,
    *,
    chunk: int = CHUNK,
    block_d: int | None = None,
) -> tuple[Tensor | None, ...]:
    """Return (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), each in its input's dtype, None for absent inputs."""
    batch, dim, length = u.shape
    state = A.shape[1]
    lay = _layout(dim, B, C, block_d)
    acc_torch, acc_tl = _acc_dtype(u, delta, A, B, C, D, z, delta_bias)
    n_chunks = triton.cdiv(length, chunk)
    if checkpoints.shape != (batch, dim, n_chunks, state):
        raise ValueError(f"checkpoints of shape {tuple(checkpoints.shape)} do not match chunk {chunk}")
    b_shape, c_shape = B.shape, C.shape
    u, delta, A, B, C, D, z, delta_bias = map(_contig, (u, delta, A, B, C, D, z, delta_bias))
    grad_out = grad_out.contiguous()
    if grad_last_state is None:
        grad_last_state = torch.zeros(batch, dim, state, device=u.device, dtype=acc_torch)
    grad_last_state = grad_last_state.contiguous()
    checkpoints = checkpoints.contiguous()
    block, block_n, n_blocks = lay["block"], triton.next_power_of_2(state), lay["n_blocks"]
    dev = u.device

    du = torch.empty_like(u)
    ddelta = torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    # per-(batch, channel) and per-(batch, block) partials in the accumulation dtype, summed below
    dA_part = torch.empty(batch, dim, state, device=dev, dtype=acc_torch)
    dD_part = torch.empty(batch, dim, device=dev, dtype=acc_torch) if D is not None else None
    dbias_part = torch.empty(batch, dim, device=dev, dtype=acc_torch) if delta_bias is not None else None
    dB_part = torch.empty(batch, n_blocks, state, length, device=dev, dtype=acc_torch)
    dC_part = torch.empty(batch, n_blocks, state, length, device=dev, dtype=acc_torch)
    scratch = torch.empty(batch * n_blocks * (chunk + 1) * block * block_n, device=dev, dtype=acc_torch)

    _scan_bwd_kernel[(n_blocks, batch)](
        grad_out,
        grad_last_state,
        u,
        delta,
        A,
        B,
        C,
        u if D is None else D,
        u if z is None else z,
        u if delta_bias is None else delta_bias,
        checkpoints,
        scratch,
        du,
        ddelta,
        du if dz is None else dz,
        dA_part,
        dA_part if dD_part is None else dD_part,
        dA_part if dbias_part is None else dbias_part,
        dB_part,
        dC_part,
        dim,
        length,
        state,
        n_chunks,
        lay["per_group"],
        lay["blocks_per_group"],
        lay["groups"] // lay["gb"],
        lay["groups"] // lay["gc"],
        lay["gb"],
        lay["gc"],
        n_blocks,
        CHUNK=chunk,
        BLOCK_D=block,
        BLOCK_N=block_n,
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus),
        ACC=acc_tl,
        num_warps=_num_warps(block, block_n),
    )
    dA = dA_part.sum(0).to(A.dtype)
    # blocks are ordered by refined group, and each B (C) group is a contiguous run of refined groups
    dB = dB_part.view(batch, lay["gb"], -1, state, length).sum(2).to(B.dtype).view(b_shape)
    dC = dC_part.view(batch, lay["gc"], -1, state, length).sum(2).to(C.dtype).view(c_shape)
    dD = dD_part.sum(0).to(D.dtype) if D is not None else None
    ddelta_bias = dbias_part.sum(0).to(delta_bias.dtype) if delta_bias is not None else None
    return du, ddelta, dA, dB, dC, dD, dz, ddelta_bias

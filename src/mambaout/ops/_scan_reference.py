"""The per-step selective scan: slow and obviously correct, the oracle for the other backends.

It always computes in float64 (the issue's oracle), whatever the input dtype, and hands back the output in u's dtype
and the last state in the dtype the other backends use (float32, or float64 for float64 inputs).
"""

import torch
from torch import Tensor

from ._scan_common import compute_dtype, epilogue, grouped_bc, prepare_delta


def per_step_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """(out, last state), both in ``dtype``, one step at a time with a single (batch, dim, N) state."""
    batch, dim, length = u.shape
    dt = prepare_delta(delta, delta_bias, delta_softplus, dtype)
    uc, Ac = u.to(dtype), A.to(dtype)
    B, C = grouped_bc(B.to(dtype), C.to(dtype))
    per_group = dim // B.shape[1]
    x = u.new_zeros(batch, dim, A.shape[1], dtype=dtype)
    ys = []
    for t in range(length):
        # (batch, G, N) -> (batch, dim, N): channel d reads group d // per_group
        b_t = B[..., t].repeat_interleave(per_group, dim=1)
        c_t = C[..., t].repeat_interleave(per_group, dim=1)
        dt_t = dt[:, :, t, None]
        x = torch.exp(dt_t * Ac) * x + dt_t * b_t * uc[:, :, t, None]
        ys.append((x * c_t).sum(-1))
    D, z = (None if t is None else t.to(dtype) for t in (D, z))
    return epilogue(torch.stack(ys, dim=-1), uc, D, z), x


def selective_scan_reference(
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
    """Return (out in u's dtype, last state (batch, dim, N) in the compute dtype), computed in float64."""
    out, state = per_step_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, torch.float64)
    return out.to(u.dtype), state.to(compute_dtype(u, delta, A, B, C, D, z, delta_bias))

"""The per-step selective scan: slow and obviously correct, the oracle for the other backends."""

import torch
from torch import Tensor

from ._scan_common import compute_dtype, epilogue, grouped_bc, prepare_delta


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
    """Return (out in u's dtype, last state (batch, dim, N) in the compute dtype), one step at a time."""
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
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
    out = epilogue(torch.stack(ys, dim=-1), u, D, z)
    return out.to(u.dtype), x

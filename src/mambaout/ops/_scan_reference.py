"""The per-step selective scan: slow and obviously correct, the oracle for the other backends.

It computes in float64 (the oracle) whatever the input dtype, and hands back the output in u's dtype and the last
state in the dtype the other backends use (float32, or float64 for float64 inputs).
"""

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
    compute_in: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor]:
    """Return (out in u's dtype, last state (batch, dim, N) in the compute dtype), one step at a time with a single
    (batch, dim, N) state in ``compute_in`` (the benchmark also times it in float32)."""
    batch, dim, length = u.shape
    dt = prepare_delta(delta, delta_bias, delta_softplus, compute_in)
    uc, Ac = u.to(compute_in), A.to(compute_in)
    Bg, Cg = grouped_bc(B.to(compute_in), C.to(compute_in))
    per_group = dim // Bg.shape[1]
    x = u.new_zeros(batch, dim, A.shape[1], dtype=compute_in)
    ys = []
    for t in range(length):
        # (batch, G, N) -> (batch, dim, N): channel d reads group d // per_group
        b_t = Bg[..., t].repeat_interleave(per_group, dim=1)
        c_t = Cg[..., t].repeat_interleave(per_group, dim=1)
        dt_t = dt[:, :, t, None]
        x = torch.exp(dt_t * Ac) * x + dt_t * b_t * uc[:, :, t, None]
        ys.append((x * c_t).sum(-1))
    Dc, zc = (None if t is None else t.to(compute_in) for t in (D, z))
    out = epilogue(torch.stack(ys, dim=-1), uc, Dc, zc)
    return out.to(u.dtype), x.to(compute_dtype(u, delta, A, B, C, D, z, delta_bias))

"""Input checks and layout helpers shared by the selective-scan backends."""

import math

import torch
from torch import Tensor


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float32 for half/bfloat16 inputs (mamba_ssm accumulates in float32); float64 stays float64."""
    dtype = torch.float32
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def validate(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
) -> None:
    """Raise ValueError naming the offending argument when shapes do not follow mamba_ssm's conventions."""
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if length < 1:
        raise ValueError(f"u must have a sequence length of at least 1, got shape {tuple(u.shape)}")
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim, N) = ({dim}, N), got shape {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("A must be real: complex selective scans are not supported")
    state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3:
            ok = t.shape == (batch, state, length)
        elif t.dim() == 4:
            groups = t.shape[1]
            ok = t.shape == (batch, groups, state, length) and groups > 0 and dim % groups == 0
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"{name} must be (batch, N, L) = ({batch}, {state}, {length}) or (batch, G, N, L) with dim {dim} "
                f"divisible by G, got shape {tuple(t.shape)}"
            )
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (dim,):
            raise ValueError(f"{name} must be (dim,) = ({dim},), got shape {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    for name, t in (
        ("u", u),
        ("delta", delta),
        ("A", A),
        ("B", B),
        ("C", C),
        ("D", D),
        ("z", z),
        ("delta_bias", delta_bias),
    ):
        if t is not None and not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def grouped_bc(B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """B and C as (batch, G, N, L) with one common group count (mamba_ssm lets them differ)."""
    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    groups = math.lcm(B.shape[1], C.shape[1])
    # channel d uses group d // (dim // G): refining G by an integer factor keeps that mapping
    B = B.repeat_interleave(groups // B.shape[1], dim=1) if B.shape[1] != groups else B
    C = C.repeat_interleave(groups // C.shape[1], dim=1) if C.shape[1] != groups else C
    return B, C


def prepare_delta(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool, dtype: torch.dtype) -> Tensor:
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = torch.nn.functional.softplus(delta)
    return delta


def epilogue(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """out = (y + D * u) * silu(z), in y's (compute) dtype."""
    if D is not None:
        y = y + D.to(y.dtype)[:, None] * u.to(y.dtype)
    if z is not None:
        y = y * torch.nn.functional.silu(z.to(y.dtype))
    return y

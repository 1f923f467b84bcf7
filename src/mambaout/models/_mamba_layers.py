"""The Mamba pieces every visual Mamba family shares: one scan direction of a Mamba mixer, the causal conv it runs
first, the dtype rule for its SSM parameters, and Mamba's initialisation of A, D and the dt projection."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.selective_scan import selective_scan


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """float32 for half/bfloat16 (mamba_ssm keeps A, D and the dt bias in float32); float64 stays float64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def causal_conv1d(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """Depthwise causal conv over (B, C, L): `conv` pads kernel - 1 on both sides; keeping the first L outputs makes
    output t depend on inputs t - kernel + 1 .. t only (what causal_conv1d_fn computes)."""
    return conv(x)[..., : x.shape[-1]]


def mamba_direction(
    x: torch.Tensor,
    z: torch.Tensor | None,
    conv: nn.Conv1d,
    x_proj: nn.Linear,
    dt_proj: nn.Linear,
    A_log: torch.Tensor,
    D: torch.Tensor,
) -> torch.Tensor:
    """One scan direction of a Mamba mixer on (B, d_inner, L): causal conv + SiLU, input-dependent dt/B/C, the
    selective scan with its D skip, gated by SiLU(z) (mamba_inner_fn without its output projection)."""
    dt_rank = dt_proj.in_features
    d_state = (x_proj.out_features - dt_rank) // 2
    x = F.silu(causal_conv1d(x, conv))
    dt, B, C = x_proj(x.transpose(1, 2)).split([dt_rank, d_state, d_state], dim=-1)
    # dt_proj's bias goes into the scan as delta_bias (softplus(dt + bias)), as mamba_inner_fn passes it
    dt = F.linear(dt, dt_proj.weight).transpose(1, 2)
    return selective_scan(
        x,
        dt,
        -torch.exp(at_least_fp32(A_log)),
        B.transpose(1, 2),
        C.transpose(1, 2),
        at_least_fp32(D),
        z,
        delta_bias=at_least_fp32(dt_proj.bias),
        delta_softplus=True,
    )


@torch.no_grad()
def init_s4d_real_(A_log: torch.Tensor) -> None:
    """S4D-real: A = -(1..N) along the last (state) dimension, stored as log(1..N)."""
    states = torch.arange(1, A_log.shape[-1] + 1, dtype=torch.float32, device=A_log.device)
    A_log.copy_(torch.log(states).expand_as(A_log))


@torch.no_grad()
def init_dt_projection_(
    weight: torch.Tensor, bias: torch.Tensor, dt_min: float, dt_max: float, dt_init_floor: float, scale: float = 1.0
) -> None:
    """Mamba's dt projection: weight ~ U(+-scale / sqrt(dt_rank)) (dt_rank: its last dimension), and a bias whose
    softplus is a log-uniform dt in [dt_min, dt_max] (at least dt_init_floor). The weight is drawn first."""
    std = weight.shape[-1] ** -0.5 * scale
    nn.init.uniform_(weight, -std, std)
    dt = torch.exp(torch.rand_like(bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

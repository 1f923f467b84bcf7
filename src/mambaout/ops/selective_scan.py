"""Selective scan (S6) with mamba_ssm's ``selective_scan_fn`` semantics, as a torch custom op.

The default path goes through ``torch.ops.mambaout.selective_scan`` so that ``FlopCounterMode`` counts the scan with
the Mamba authors' formula and ``torch.compile`` sees one opaque op; its backward is a second opaque op that
recomputes the chunked forward under autograd.
"""

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from ._scan_chunked import selective_scan_chunked
from ._scan_common import compute_dtype, validate
from ._scan_reference import selective_scan_reference

BACKENDS = ("auto", "chunked", "reference")


@torch.library.custom_op("mambaout::selective_scan", mutates_args=())
def _scan_op(
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
) -> tuple[Tensor, Tensor]:
    return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)


@_scan_op.register_fake
def _scan_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size):
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    return u.new_empty(u.shape), u.new_empty((u.shape[0], u.shape[1], A.shape[1]), dtype=dtype)


@torch.library.custom_op("mambaout::selective_scan_backward", mutates_args=())
def _scan_backward_op(
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
) -> list[Tensor]:
    """Gradients for (u, delta, A, B, C, D, z, delta_bias); an absent optional input gets an empty tensor."""
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    slots = [i for i, t in enumerate(inputs) if t is not None]

    def forward(*present: Tensor) -> tuple[Tensor, Tensor]:
        args = list(inputs)
        for i, t in zip(slots, present):
            args[i] = t
        return selective_scan_chunked(*args, delta_softplus, chunk_size)

    # torch.func.vjp rather than torch.autograd.grad: a custom op's kernel runs with the autograd keys excluded,
    # which functorch's transforms re-enable for their own level
    _, vjp = torch.func.vjp(forward, *[inputs[i] for i in slots])
    grads = dict(zip(slots, vjp((grad_out, grad_state))))
    return [grads[i] if i in grads else u.new_empty(0) for i in range(len(inputs))]


@_scan_backward_op.register_fake
def _scan_backward_fake(grad_out, grad_state, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size):
    return [torch.empty_like(t) if t is not None else u.new_empty(0) for t in (u, delta, A, B, C, D, z, delta_bias)]


def _setup_context(ctx, inputs, output):
    *tensors, delta_softplus, chunk_size = inputs
    ctx.present = [t is not None for t in tensors]
    ctx.save_for_backward(*[t for t in tensors if t is not None])
    ctx.delta_softplus = delta_softplus
    ctx.chunk_size = chunk_size


def _backward(ctx, grad_out, grad_state):
    saved = iter(ctx.saved_tensors)
    tensors = [next(saved) if p else None for p in ctx.present]
    u, A = tensors[0], tensors[2]
    # autograd may hand None for an output that did not reach the loss
    if grad_out is None:
        grad_out = torch.zeros_like(u)
    if grad_state is None:
        dtype = compute_dtype(*tensors)
        grad_state = u.new_zeros((u.shape[0], u.shape[1], A.shape[1]), dtype=dtype)
    grads = _scan_backward_op(grad_out, grad_state, *tensors, ctx.delta_softplus, ctx.chunk_size)
    return (*[g if p else None for g, p in zip(grads, ctx.present)], None, None)


_scan_op.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.mambaout.selective_scan)
def _scan_flops(u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape=None, z_shape=None, *args, **kwargs) -> int:
    """2 x the official VMamba counter's MACs (9 B L D N, + B D L for the D skip, + B D L for the z gate).

    FlopCounterMode counts FLOPs and the project's report halves them into MACs, hence the factor 2.
    """
    batch, dim, length = u_shape
    state = A_shape[1]
    macs = 9 * batch * length * dim * state
    if D_shape is not None:
        macs += batch * dim * length
    if z_shape is not None:
        macs += batch * dim * length
    return 2 * macs


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: str = "auto",
    chunk_size: int = 16,
) -> Tensor | tuple[Tensor, Tensor]:
    """mamba_ssm's ``selective_scan_fn``: out (u's dtype), plus the last state (batch, dim, N) if asked."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    validate(u, delta, A, B, C, D, z, delta_bias)
    if backend == "reference":
        out, state = selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    else:  # "auto" and "chunked": the chunked form through the custom op
        out, state = torch.ops.mambaout.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)
    return (out, state) if return_last_state else out

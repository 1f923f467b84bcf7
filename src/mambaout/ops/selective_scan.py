"""Selective scan (S6) with mamba_ssm's ``selective_scan_fn`` semantics, as a torch custom op.

The default path goes through ``torch.ops.mambaout.selective_scan`` so that ``FlopCounterMode`` counts the scan with
the Mamba authors' formula and ``torch.compile`` sees one opaque op; its backward is a second opaque op.

Backends: ``triton`` (CUDA default: Triton kernels, see ``_scan_triton``), ``numba`` (CPU default: fused kernels,
forward and a recomputing reverse scan, see ``_scan_numba``),
``chunked`` (portable pure PyTorch; its backward recomputes one chunk at a time under autograd), ``reference``
(per-step loop, the float64 oracle, plain autograd, not the custom op). ``auto`` picks ``triton`` for CUDA tensors,
``numba`` for CPU tensors when numba is importable, and ``chunked`` otherwise.
"""

import contextlib
import functools
import warnings
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from ._scan_chunked import selective_scan_chunked, selective_scan_chunked_backward
from ._scan_common import compute_dtype, validate
from ._scan_reference import selective_scan_reference

BACKENDS = ("auto", "chunked", "numba", "triton", "reference")
# The backend of calls that name none; `scan_backend(...)` sets it for a block of code (e.g. a whole model).
_context_backend: ContextVar[str] = ContextVar("mambaout_scan_backend", default="auto")


@contextlib.contextmanager
def scan_backend(name: str | None) -> Iterator[None]:
    """Run every `selective_scan` call that names no backend with `name` inside the block (None: unchanged)."""
    if name is None:
        yield
        return
    if name not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {name!r}: choose one of {', '.join(BACKENDS)}")
    token = _context_backend.set(name)
    try:
        yield
    finally:
        _context_backend.reset(token)


@functools.cache
def _triton_module():
    """The Triton backend module, or None when triton is not importable."""
    try:
        from . import _scan_triton
    except ImportError:
        return None
    return _scan_triton if _scan_triton.triton is not None else None


_NUMBA: dict[str, object] = {}  # a plain dict, not functools.cache: torch.compile traces through it without warning


def _numba_module():
    """The numba backend module, or None when numba is not importable (the backend then falls back to chunked)."""
    if "module" not in _NUMBA:
        try:
            from . import _scan_numba
        except ImportError:
            _scan_numba = None
        _NUMBA["module"] = _scan_numba
    return _NUMBA["module"]


def _triton_ready(u: Tensor) -> bool:
    return _triton_module() is not None and _triton_module().is_available(u.device)


def _resolve(backend: str, u: Tensor) -> str:
    """The kernel the custom op runs: "triton" (CUDA default), "numba" (CPU default) or "chunked" (anywhere)."""
    if backend == "chunked":
        return backend
    if backend == "triton":
        if not _triton_ready(u):
            raise ValueError(
                f"the triton selective-scan backend needs CUDA tensors and triton (or TRITON_INTERPRET=1 on CPU), "
                f"got device {u.device}"
            )
        return backend
    if backend == "auto" and u.device.type == "cuda" and _triton_ready(u):
        return "triton"
    on_cpu = u.device.type == "cpu"
    if backend == "numba":
        if not on_cpu:
            raise ValueError(f"the numba selective-scan backend runs on CPU tensors only, got device {u.device}")
        if _numba_module() is None:
            warnings.warn(
                "selective_scan backend 'numba' requested but numba is not importable (pip install numba): "
                "falling back to the slower 'chunked' backend",
                RuntimeWarning,
                stacklevel=3,
            )
            return "chunked"
        return backend
    return "numba" if on_cpu and _numba_module() is not None else "chunked"


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
    chunk_size: int | None,
    implementation: str = "chunked",
) -> tuple[Tensor, Tensor]:
    if implementation == "numba":
        out, state = _numba_module().selective_scan_numba(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    elif implementation == "triton":
        out, state, _ = _triton_module().triton_scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    else:
        out, state = selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)
    # contiguous, as the fake below says: compiled graphs rely on the fake's strides
    return out.contiguous(), state.contiguous()


@_scan_op.register_fake
def _scan_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size, implementation="chunked"):
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
    chunk_size: int | None,
    implementation: str = "chunked",
) -> list[Tensor]:
    """Gradients for (u, delta, A, B, C, D, z, delta_bias); an absent optional input gets an empty tensor."""
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    if implementation == "numba":
        grads = _numba_module().selective_scan_numba_backward(grad_out, grad_state, *inputs, delta_softplus)
    elif implementation == "triton":
        # The state checkpoints are recomputed rather than kept from the forward: one more forward pass,
        # no extra op output to carry through autograd.
        triton = _triton_module()
        _, _, checkpoints = triton.triton_scan_forward(*inputs, delta_softplus)
        grads = triton.triton_scan_backward(grad_out, grad_state, *inputs, delta_softplus, checkpoints)
    else:
        grads = selective_scan_chunked_backward(grad_out, grad_state, *inputs, delta_softplus, chunk_size)
    return [u.new_empty(0) if g is None else g.contiguous() for g in grads]


@_scan_backward_op.register_fake
def _scan_backward_fake(
    grad_out, grad_state, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size, implementation="chunked"
):
    # the op makes every gradient contiguous
    return [t.new_empty(t.shape) if t is not None else u.new_empty(0) for t in (u, delta, A, B, C, D, z, delta_bias)]


def _setup_context(ctx, inputs, output):
    *tensors, delta_softplus, chunk_size, implementation = inputs
    ctx.present = [t is not None for t in tensors]
    ctx.save_for_backward(*[t for t in tensors if t is not None])
    ctx.delta_softplus = delta_softplus
    ctx.chunk_size = chunk_size
    ctx.implementation = implementation


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
    grads = _scan_backward_op(grad_out, grad_state, *tensors, ctx.delta_softplus, ctx.chunk_size, ctx.implementation)
    return (*[g if p else None for g, p in zip(grads, ctx.present)], None, None, None)


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
    backend: str | None = None,
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """mamba_ssm's ``selective_scan_fn``: out (u's dtype), plus the last state (batch, dim, N) if asked.

    ``backend=None`` takes the one set by `scan_backend(...)`, else "auto". ``chunk_size`` (steps per chunk) only
    affects ``chunked``; None sizes the chunk's temporaries to the L2 cache (8 to 32 steps).
    """
    backend = backend or _context_backend.get()
    if backend not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    validate(u, delta, A, B, C, D, z, delta_bias)
    if backend == "reference":
        out, state = selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    else:
        # not named "kernel": inductor's fallback for custom ops takes a keyword of that name
        implementation = _resolve(backend, u)
        out, state = torch.ops.mambaout.selective_scan(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size, implementation
        )
    return (out, state) if return_last_state else out

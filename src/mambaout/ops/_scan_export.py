"""The selective scan in ONNX: a translation of ``mambaout::selective_scan`` for the dynamo exporter.

What is parallel over time and has no state dimension (softplus(delta + bias), delta * u, the D skip, the z gate)
is plain tensor ops. The recurrence is one ONNX ``Scan`` over the time axis, and its body also forms the per-step
(batch, dim, N) terms exp(delta_t * A) and delta_t * u_t * B_t: materialising them for every step at once, as
(L, batch, dim, N) tensors, made VMamba-T (N = 16) need 15 GB at batch 16; per step they stay in cache. The graph
stays the same size whatever the sequence length. Computed in float32, like the op.

Channels are laid out as (G, dim // G) groups, where G is the number of B/C groups (VMamba's K directions; 1 for
ungrouped B/C), so that a step's B and C broadcast over their group's channels instead of being copied per channel.
"""

from __future__ import annotations

from typing import Any

import onnxscript
from onnxscript import FLOAT, graph, script
from onnxscript import opset18 as op

DOMAIN = "mambaout"
# torch's softplus is the identity above this (beta = 1); ONNX's Softplus has no threshold
SOFTPLUS_THRESHOLD = 20.0


@script(onnxscript.values.Opset(DOMAIN, 1), default_opset=op)
def scan_recurrence(
    h0: FLOAT[...], A: FLOAT[...], delta: FLOAT[...], delta_u: FLOAT[...], B: FLOAT[...], C: FLOAT[...]
) -> tuple[FLOAT[...], FLOAT[...]]:
    """h_t = exp(delta_t * A) * h_{t-1} + delta_u_t * B_t, y_t = sum_N h_t * C_t.

    h0 (batch, G, D, N); A (G, D, N); time-major scan inputs: delta and delta_u (L, batch, G, D, 1), B and C
    (L, batch, G, 1, N). Returns the last state and y (L, batch, G, D).
    """

    @graph()
    def step(
        h: FLOAT[...], A_: FLOAT[...], delta_t: FLOAT[...], delta_u_t: FLOAT[...], B_t: FLOAT[...], C_t: FLOAT[...]
    ):
        h_next = op.Add(op.Mul(op.Exp(op.Mul(delta_t, A_)), h), op.Mul(delta_u_t, B_t))
        y_t = op.ReduceSum(op.Mul(h_next, C_t), op.Constant(value_ints=[-1]), keepdims=0)
        return h_next, op.Identity(A_), y_t  # A rides along as a state: the body sees only its own inputs

    h_last, _, ys = op.Scan(h0, A, delta, delta_u, B, C, body=step, num_scan_inputs=4)
    return h_last, ys


def _static_dims(tensor: Any) -> list[int]:
    """Every dimension of a weight-like tensor (A, grouped B/C): the graph is built for these sizes."""
    dims = [] if tensor.shape is None else list(tensor.shape)
    if not dims or not all(isinstance(d, int) for d in dims[1:]):
        raise ValueError(f"the selective scan's {tensor.name} needs a static shape to export, got {tensor.shape}")
    return dims


def _groups(B: Any) -> int:
    """B/C are (batch, N, L) (one group) or (batch, G, N, L)."""
    return _static_dims(B)[1] if len(B.shape) == 4 else 1


def _time_major_channels(x: Any, groups: int, dim: int) -> Any:
    """(batch, dim, L) -> (L, batch, G, dim // G, 1)."""
    x = op.Transpose(x, perm=[2, 0, 1])
    return op.Reshape(x, op.Constant(value_ints=[0, 0, groups, dim // groups, 1]))


def _time_major_bc(x: Any, groups: int, state: int) -> Any:
    """B or C, (batch, N, L) or (batch, G, N, L) -> (L, batch, G, 1, N)."""
    x = op.Transpose(x, perm=[2, 0, 1] if len(x.shape) == 3 else [3, 0, 1, 2])
    return op.Reshape(x, op.Constant(value_ints=[0, 0, groups, 1, state]))


def selective_scan_onnx(
    u: Any,
    delta: Any,
    A: Any,
    B: Any,
    C: Any,
    D: Any = None,
    z: Any = None,
    delta_bias: Any = None,
    delta_softplus: bool = False,
    chunk_size: int | None = None,
    implementation: str = "chunked",
) -> tuple[Any, Any]:
    """The ONNX graph of ``torch.ops.mambaout.selective_scan``: (out (batch, dim, L), last state (batch, dim, N))."""
    dim, state = _static_dims(A)
    groups = _groups(B)
    if dim % groups:
        raise ValueError(f"the selective scan's {dim} channels do not split into {groups} B/C groups")
    dt = op.Cast(delta, to=onnxscript.ir.DataType.FLOAT)
    if delta_bias is not None:
        dt = op.Add(dt, op.Unsqueeze(delta_bias, op.Constant(value_ints=[1])))
    if delta_softplus:
        dt = op.Where(op.Greater(dt, op.Constant(value_float=SOFTPLUS_THRESHOLD)), dt, op.Softplus(dt))
    grouped_A = op.Reshape(A, op.Constant(value_ints=[groups, dim // groups, state]))
    batch = op.Shape(u, start=0, end=1)
    h0_shape = op.Concat(batch, op.Constant(value_ints=[groups, dim // groups, state]), axis=0)
    zero = onnxscript.ir.tensor([0.0], dtype=onnxscript.ir.DataType.FLOAT)
    h0 = op.ConstantOfShape(h0_shape, value=zero)
    h_last, ys = scan_recurrence(
        h0,
        grouped_A,
        _time_major_channels(dt, groups, dim),
        _time_major_channels(op.Mul(dt, u), groups, dim),
        _time_major_bc(B, groups, state),
        _time_major_bc(C, groups, state),
    )
    y = op.Transpose(op.Reshape(ys, op.Constant(value_ints=[0, 0, dim])), perm=[1, 2, 0])  # (batch, dim, L)
    if D is not None:
        y = op.Add(y, op.Mul(op.Unsqueeze(D, op.Constant(value_ints=[1])), u))
    if z is not None:
        y = op.Mul(y, op.Mul(z, op.Sigmoid(z)))
    return y, op.Reshape(h_last, op.Constant(value_ints=[0, dim, state]))


def translation_table() -> dict:
    """The `custom_translation_table` entry that `torch.onnx.export(..., dynamo=True)` needs for the scan."""
    import torch

    from . import selective_scan  # noqa: F401  (registers the op)

    return {torch.ops.mambaout.selective_scan.default: selective_scan_onnx}

"""The selective scan in ONNX: a translation of ``mambaout::selective_scan`` for the dynamo exporter.

Everything that is parallel over time (the discretisation exp(delta * A), delta * B * u, the D skip and the z gate)
is plain tensor ops; the recurrence h_t = dA_t * h_{t-1} + dBu_t, y_t = <h_t, C_t> is one ONNX ``Scan`` over the
time axis, so the graph stays the same size whatever the sequence length. Computed in float32, like the op.
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
def scan_recurrence(h0: FLOAT[...], dA: FLOAT[...], dBu: FLOAT[...], C: FLOAT[...]) -> tuple[FLOAT[...], FLOAT[...]]:
    """Time-major (L, batch, dim, N) inputs -> the last state (batch, dim, N) and y (L, batch, dim)."""

    @graph()
    def step(h: FLOAT[...], dA_t: FLOAT[...], dBu_t: FLOAT[...], C_t: FLOAT[...]):
        h_next = op.Add(op.Mul(dA_t, h), dBu_t)
        y_t = op.ReduceSum(op.Mul(h_next, C_t), op.Constant(value_ints=[-1]), keepdims=0)
        return h_next, y_t

    h_last, ys = op.Scan(h0, dA, dBu, C, body=step, num_scan_inputs=3)
    return h_last, ys


def _static_dims(tensor: Any) -> list[int]:
    """Every dimension of a weight-like tensor (A, grouped B/C): the graph is built for these sizes."""
    dims = [] if tensor.shape is None else list(tensor.shape)
    if not dims or not all(isinstance(d, int) for d in dims[1:]):
        raise ValueError(f"the selective scan's {tensor.name} needs a static shape to export, got {tensor.shape}")
    return dims


def _per_channel(x: Any, groups: int, dim: int, state: int) -> Any:
    """(L, batch, G, N) -> (L, batch, dim, N) where channel d reads group d // (dim // G); G = 1 stays broadcast."""
    if groups == 1:
        return x
    x = op.Unsqueeze(x, op.Constant(value_ints=[3]))  # (L, batch, G, 1, N)
    x = op.Expand(x, op.Constant(value_ints=[1, 1, 1, dim // groups, 1]))
    return op.Reshape(x, op.Constant(value_ints=[0, 0, dim, state]))


def _time_major_bc(x: Any, dim: int, state: int) -> Any:
    """B or C, (batch, N, L) or (batch, G, N, L) -> (L, batch, dim or 1, N)."""
    dims = _static_dims(x) if len(x.shape) == 4 else None
    groups = 1 if dims is None else dims[1]
    if dims is None:
        x = op.Unsqueeze(x, op.Constant(value_ints=[1]))
    return _per_channel(op.Transpose(x, perm=[3, 0, 1, 2]), groups, dim, state)


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
    dt = op.Cast(delta, to=onnxscript.ir.DataType.FLOAT)
    if delta_bias is not None:
        dt = op.Add(dt, op.Unsqueeze(delta_bias, op.Constant(value_ints=[1])))
    if delta_softplus:
        dt = op.Where(op.Greater(dt, op.Constant(value_float=SOFTPLUS_THRESHOLD)), dt, op.Softplus(dt))
    to_time_major = [2, 0, 1]  # (batch, dim, L) -> (L, batch, dim)
    dt_t = op.Unsqueeze(op.Transpose(dt, perm=to_time_major), op.Constant(value_ints=[3]))  # (L, batch, dim, 1)
    u_t = op.Unsqueeze(op.Transpose(u, perm=to_time_major), op.Constant(value_ints=[3]))
    dA = op.Exp(op.Mul(dt_t, A))  # (L, batch, dim, N)
    dBu = op.Mul(op.Mul(dt_t, u_t), _time_major_bc(B, dim, state))
    Cs = _time_major_bc(C, dim, state)
    zero = onnxscript.ir.tensor([0.0], dtype=onnxscript.ir.DataType.FLOAT)
    h0 = op.ConstantOfShape(op.Shape(dA, start=1), value=zero)
    h_last, ys = scan_recurrence(h0, dA, dBu, Cs)
    y = op.Transpose(ys, perm=[1, 2, 0])  # (batch, dim, L)
    if D is not None:
        y = op.Add(y, op.Mul(op.Unsqueeze(D, op.Constant(value_ints=[1])), u))
    if z is not None:
        y = op.Mul(y, op.Mul(z, op.Sigmoid(z)))
    return y, h_last


def translation_table() -> dict:
    """The `custom_translation_table` entry that `torch.onnx.export(..., dynamo=True)` needs for the scan."""
    import torch

    from . import selective_scan  # noqa: F401  (registers the op)

    return {torch.ops.mambaout.selective_scan.default: selective_scan_onnx}

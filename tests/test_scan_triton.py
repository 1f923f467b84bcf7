"""The Triton selective-scan kernels against the float64 per-step oracle, run by triton's CPU interpreter.

The interpreter needs TRITON_INTERPRET=1 before triton is imported, so the kernels run in one subprocess that
reports errors as JSON; the rest of the test session keeps its ordinary triton.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from mambaout.ops._scan_triton import is_available, triton_scan_backward

# error = max |triton - reference| / max |reference|, per output and per gradient
FP32_FWD_TOL = 1e-5
FP32_BWD_TOL = 1e-4
# outputs and input gradients are rounded to the input dtype (bf16 keeps 8 bits: 2^-8 = 3.9e-3 relative)
LOW_PRECISION_TOL = {"bfloat16": 1e-2, "float16": 2e-3}
FP64_TOL = 1e-12

# name: (batch, dim, N, L, groups of B, groups of C, D, z, delta_bias, softplus, dtype, chunk, block_d)
CASES = {
    "L1_plain": (2, 4, 4, 1, 0, 0, False, False, False, False, "float32", 8, None),
    "L17_g2_all_optionals": (2, 4, 4, 17, 2, 2, True, True, True, True, "float32", 8, None),
    "L20_g1_3d_D_softplus": (1, 4, 4, 20, 0, 1, True, False, False, True, "float32", 8, None),
    "mixed_groups_bias_z": (1, 4, 4, 12, 1, 2, False, True, True, False, "float32", 8, None),
    "masked_block_and_N": (1, 6, 3, 11, 2, 2, True, True, True, True, "float32", 4, 2),
    "default_chunk_L67": (1, 2, 4, 67, 0, 0, True, True, True, True, "float32", 64, None),
    "softplus_extremes": (1, 4, 4, 9, 0, 0, False, False, True, True, "float32", 4, None),
    "no_grad_last_state": (1, 4, 2, 10, 0, 0, True, False, False, False, "float32", 4, None),
    "bf16": (1, 4, 4, 12, 2, 2, True, True, True, True, "bfloat16", 8, None),
    "fp16": (1, 4, 4, 17, 0, 0, True, True, True, True, "float16", 8, None),
    "fp64": (1, 4, 4, 17, 2, 2, True, True, True, True, "float64", 8, None),
}

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    assert os.environ["TRITON_INTERPRET"] == "1"
    import torch
    from mambaout.ops._scan_reference import selective_scan_reference
    from mambaout.ops._scan_triton import is_available, triton_scan_backward, triton_scan_forward

    def err(a, r):
        return ((a.double() - r).abs().max() / r.abs().max().clamp_min(1e-30)).item()

    results = {"is_available_cpu": is_available("cpu")}
    for name, cfg in json.loads(sys.argv[1]).items():
        batch, dim, n, length, gb, gc, has_d, has_z, has_bias, softplus, dtype, chunk, block_d = cfg
        dtype = getattr(torch, dtype)
        param = torch.float64 if dtype == torch.float64 else torch.float32  # A, D, bias stay fp32 as in Mamba
        g = torch.Generator().manual_seed(len(name))
        rnd = lambda *s: torch.randn(*s, generator=g)
        bc = lambda groups: rnd(batch, n, length) if groups == 0 else rnd(batch, groups, n, length)
        spread = 15.0 if name == "softplus_extremes" else 1.0  # reach both softplus branches
        u = rnd(batch, dim, length).to(dtype)
        delta = rnd(batch, dim, length) * spread if softplus else torch.rand(batch, dim, length, generator=g)
        delta = delta.to(dtype)
        A = (-torch.rand(dim, n, generator=g) - 0.1).to(param)
        B, C = bc(gb).to(dtype), bc(gc).to(dtype)
        D = rnd(dim).to(param) if has_d else None
        z = rnd(batch, dim, length).to(dtype) if has_z else None
        bias = (rnd(dim) * 0.5).to(param) if has_bias else None
        inputs = (u, delta, A, B, C, D, z, bias)

        out, last, ckpt = triton_scan_forward(*inputs, softplus, chunk=chunk, block_d=block_d)
        ref_in = [None if t is None else t.double().requires_grad_() for t in inputs]
        ref_out, ref_last = selective_scan_reference(*ref_in, softplus)
        grad_out = rnd(*out.shape).to(dtype)
        grad_last = None if name == "no_grad_last_state" else rnd(*last.shape)
        loss = (ref_out * grad_out.double()).sum()
        if grad_last is not None:
            loss = loss + (ref_last * grad_last.double()).sum()
        ref_grads = torch.autograd.grad(loss, [t for t in ref_in if t is not None])
        grads = triton_scan_backward(grad_out, grad_last, *inputs, softplus, ckpt, chunk=chunk, block_d=block_d)

        res = {"out": err(out, ref_out), "last_state": err(last, ref_last)}
        res["dtypes_ok"] = out.dtype == dtype and all(
            gr is None if t is None else gr.dtype == t.dtype and gr.shape == t.shape for gr, t in zip(grads, inputs)
        )
        present = [(k, gr) for k, gr, t in zip("u delta A B C D z delta_bias".split(), grads, inputs) if t is not None]
        res.update({"d" + k: err(gr, r) for (k, gr), r in zip(present, ref_grads)})
        results[name] = res
    print(json.dumps(results))
    """
)

# No GPU is needed to compile: lowering both kernels to sm_90 cubin catches what the interpreter does not check
# (constexpr handling, dtype casts, loop lowering, barriers).
COMPILE_SCRIPT = textwrap.dedent(
    """
    import triton, triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from mambaout.ops._scan_triton import _scan_bwd_kernel, _scan_fwd_kernel

    # pointers to tensors in the input dtype; parameters, partials and checkpoints are fp32
    data_ptrs = {
        "u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr", "gout_ptr", "du_ptr", "ddelta_ptr", "dz_ptr"
    }
    for data, optionals in (("bf16", True), ("fp32", False)):
        for fn in (_scan_fwd_kernel, _scan_bwd_kernel):
            consts = dict(CHUNK=64, BLOCK_D=32, BLOCK_N=16, HAS_D=optionals, HAS_Z=optionals,
                          HAS_BIAS=optionals, SOFTPLUS=optionals, ACC=tl.float32)
            sig = {
                a: "constexpr" if a in consts else ("*" + (data if a in data_ptrs else "fp32")) if a.endswith("_ptr")
                else "i32"
                for a in fn.arg_names
            }
            kernel = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32),
                                    options={"num_warps": 4})
            assert kernel.asm["cubin"], fn
    print("compiled")
    """
)


@pytest.fixture(scope="module")
def interpreted() -> dict:
    """Run every case once under TRITON_INTERPRET=1 and return the errors the subprocess reports."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(CASES)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"the interpreted scan failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_triton_installed() -> None:
    import triton  # noqa: F401  (a missing triton must fail here, not skip)


def test_kernels_compile_for_sm90() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "compiled" in proc.stdout, f"compiling for sm_90 failed:\n{proc.stderr[-4000:]}"


def test_is_available(interpreted: dict) -> None:
    assert interpreted["is_available_cpu"] is True
    assert is_available("cpu") == (os.environ.get("TRITON_INTERPRET") == "1")


@pytest.mark.parametrize("name", CASES)
def test_forward_and_backward_match_float64_reference(interpreted: dict, name: str) -> None:
    res = dict(interpreted[name])
    assert res.pop("dtypes_ok"), "outputs or gradients have the wrong dtype or shape"
    dtype = CASES[name][10]
    if dtype == "float32":
        tols = {k: FP32_FWD_TOL if k in ("out", "last_state") else FP32_BWD_TOL for k in res}
    elif dtype == "float64":
        tols = dict.fromkeys(res, FP64_TOL)
    else:
        low = LOW_PRECISION_TOL[dtype]
        # the last state and the parameter gradients (A, D, bias stay fp32) are not rounded to the input dtype
        tols = {k: FP32_BWD_TOL if k in ("dA", "dD", "ddelta_bias") else low for k in res}
        tols["last_state"] = FP32_FWD_TOL
    bad = {k: (v, tols[k]) for k, v in res.items() if not v <= tols[k]}
    assert not bad, f"errors over tolerance (error, tolerance): {bad}"


def test_backward_rejects_mismatched_checkpoints() -> None:
    u = torch.zeros(1, 2, 10)
    A = torch.zeros(2, 4)
    B = torch.zeros(1, 4, 10)
    ckpt = torch.zeros(1, 2, 3, 4)  # chunk 64 gives 1 chunk for L = 10
    with pytest.raises(ValueError, match="checkpoints"):
        triton_scan_backward(u, None, u, u, A, B, B, None, None, None, False, ckpt)


PUBLIC_OP_SCRIPT = r"""
import json, torch
from mambaout.ops import scan_backend, selective_scan

torch.manual_seed(0)
b, d, n, length, groups = 2, 4, 3, 21, 2
args = dict(
    u=torch.randn(b, d, length, dtype=torch.float64), delta=torch.rand(b, d, length, dtype=torch.float64),
    A=-torch.rand(d, n, dtype=torch.float64), B=torch.randn(b, groups, n, length, dtype=torch.float64),
    C=torch.randn(b, groups, n, length, dtype=torch.float64), D=torch.randn(d, dtype=torch.float64),
    z=torch.randn(b, d, length, dtype=torch.float64), delta_bias=torch.randn(d, dtype=torch.float64),
)
errors = {}
for backend in ("triton", "reference"):
    leaves = {k: v.clone().requires_grad_() for k, v in args.items()}
    with scan_backend(backend):
        out = selective_scan(**leaves, delta_softplus=True)
    out.square().sum().backward()
    errors[backend] = [out.detach()] + [leaves[k].grad for k in args]
rel = [float((a - r).abs().max() / r.abs().max()) for a, r in zip(errors["triton"], errors["reference"])]
print(json.dumps(rel))
"""


def test_public_op_runs_the_triton_backend_with_autograd() -> None:
    """`scan_backend("triton")` routes through the custom op, forward and backward (interpreter, float64)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", PUBLIC_OP_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(errors) == 9  # out and the gradients of the eight inputs
    assert max(errors) < 1e-10, errors

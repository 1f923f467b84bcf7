"""The selective scan: chunked and numba backends vs the float64 per-step oracle, gradients, custom-op registration."""

import importlib
import importlib.util

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mambaout.ops import scan_backend, selective_scan
from mambaout.ops._scan_chunked import _chunk, default_chunk_size

scan_module = importlib.import_module("mambaout.ops.selective_scan")  # the package exports the function by that name

HAS_NUMBA = importlib.util.find_spec("numba") is not None
needs_numba = pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
# every backend that runs through the custom op; numba kernels compile once and are cached on disk by numba
FAST_BACKENDS = ["chunked", pytest.param("numba", marks=needs_numba)]


pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(batch, dim, state, length, groups=None, dtype=torch.float32, dt_scale=0.5, extras=True):
    """Random scan inputs; groups=None gives 3-D B/C, an int gives 4-D (batch, G, N, L)."""
    bc_shape = (batch, state, length) if groups is None else (batch, groups, state, length)
    args = {
        "u": torch.randn(batch, dim, length),
        "delta": torch.rand(batch, dim, length) * dt_scale,
        "A": -torch.rand(dim, state) * 4 - 0.1,
        "B": torch.randn(bc_shape),
        "C": torch.randn(bc_shape),
    }
    if extras:
        args |= {"D": torch.randn(dim), "z": torch.randn(batch, dim, length), "delta_bias": torch.randn(dim) * 0.1}
    return {k: v.to(dtype) for k, v in args.items()}


def _oracle(args, **kwargs):
    """The per-step loop in float64 on the same (already rounded) inputs."""
    return selective_scan(**{k: v.double() for k, v in args.items()}, backend="reference", **kwargs)


def _rel_err(actual, expected):
    return ((actual.double() - expected).norm() / expected.norm().clamp_min(1e-30)).item()


CASES = [
    # (batch, dim, N, L, groups, extras, softplus)
    (2, 8, 4, 1, None, True, True),  # L = 1
    (2, 8, 4, 37, None, True, True),  # L not a multiple of the chunk
    (2, 8, 4, 32, None, False, False),  # L a multiple, bare scan
    (2, 8, 4, 37, 1, True, False),  # 4-D B/C with one group
    (2, 8, 4, 37, 2, False, True),
    (1, 8, 16, 48, 4, True, True),
]


@pytest.mark.parametrize(("batch", "dim", "state", "length", "groups", "extras", "softplus"), CASES)
@pytest.mark.parametrize("backend", [*FAST_BACKENDS, "auto"])
def test_float32_matches_float64_oracle(batch, dim, state, length, groups, extras, softplus, backend):
    args = _inputs(batch, dim, state, length, groups, extras=extras)
    out, last = selective_scan(**args, delta_softplus=softplus, return_last_state=True, backend=backend)
    ref_out, ref_last = _oracle(args, delta_softplus=softplus, return_last_state=True)
    assert out.dtype == torch.float32 and out.shape == (batch, dim, length)
    assert last.shape == (batch, dim, state)
    # float32 rounding over a handful of terms: a norm-relative 1e-5 is ~100 ulps
    assert _rel_err(out, ref_out) < 1e-5
    assert _rel_err(last, ref_last) < 1e-5


def test_only_out_is_returned_without_return_last_state():
    args = _inputs(1, 4, 2, 5)
    out = selective_scan(**args)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 4, 5)


def test_b_and_c_may_use_different_group_counts():
    args = _inputs(2, 8, 4, 20, groups=2)
    args["C"] = torch.randn(2, 4, 4, 20)
    out = selective_scan(**args, delta_softplus=True, chunk_size=8)
    assert _rel_err(out, _oracle(args, delta_softplus=True)) < 1e-5


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 64])
def test_chunk_size_does_not_change_the_result(chunk_size):
    args = _inputs(2, 8, 4, 37, groups=2)
    out = selective_scan(**args, delta_softplus=True, chunk_size=chunk_size, backend="chunked")
    assert _rel_err(out, _oracle(args, delta_softplus=True)) < 1e-5


def test_a_chunk_state_does_not_hold_on_to_the_chunk_temporaries():
    # the backward keeps the state entering every chunk: were each a view of its chunk's (b, G, T, dg, N) states,
    # all of them would stay alive (~1.2 GB at the VMamba-T stage-1 shape)
    batch, groups, steps, per_group, state = 2, 2, 8, 4, 3
    y, last = _chunk(
        torch.rand(batch, groups, steps, per_group),
        torch.randn(batch, groups, steps, per_group),
        -torch.rand(groups, per_group, state),
        torch.randn(batch, groups, steps, state),
        torch.randn(batch, groups, steps, state),
        torch.zeros(batch, groups, per_group, state),
    )
    assert y.shape == (batch, groups, steps, per_group)
    assert last.shape == (batch, groups, per_group, state)
    assert last.untyped_storage().nbytes() == last.numel() * last.element_size()


def test_default_chunk_keeps_temporaries_near_the_l2_cache():
    assert default_chunk_size(8, 768, 16) == 8  # VMamba-T stage 1 and Vim-Ti: 8 x 768 x 8 x 16 = 786K elements
    assert default_chunk_size(8, 768, 1) == 32  # VMamba2's N = 1: capped at 32 steps
    assert default_chunk_size(1, 8, 4) == 32
    assert default_chunk_size(64, 1536, 16) == 8  # never below 8 steps


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_accumulate_in_float32(dtype, backend):
    args = _inputs(2, 16, 8, 40, groups=2, dtype=dtype)
    out, last = selective_scan(**args, delta_softplus=True, return_last_state=True, backend=backend)
    assert out.dtype == dtype
    assert last.dtype == torch.float32  # mamba_ssm keeps the state in float32
    # the only error left is rounding the float32 result to 8 (bf16) or 11 (fp16) mantissa bits
    tolerance = 2e-2 if dtype == torch.bfloat16 else 2e-3
    assert _rel_err(out, _oracle(args, delta_softplus=True)) < tolerance


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_float64_stays_float64(backend):
    args = _inputs(1, 4, 4, 19, dtype=torch.float64)
    out, last = selective_scan(**args, delta_softplus=True, return_last_state=True, backend=backend)
    assert out.dtype == last.dtype == torch.float64
    assert _rel_err(out, _oracle(args, delta_softplus=True)) < 1e-12


def test_reference_computes_in_float64_whatever_the_input_dtype():
    args = _inputs(2, 8, 4, 23, groups=2, extras=True)
    out, last = selective_scan(**args, delta_softplus=True, return_last_state=True, backend="reference")
    out64, last64 = selective_scan(
        **{k: v.double() for k, v in args.items()}, delta_softplus=True, return_last_state=True, backend="reference"
    )
    assert out.dtype == last.dtype == torch.float32
    # the float32 inputs are exact in float64, so only the final rounding differs: bit for bit
    torch.testing.assert_close(out, out64.float(), rtol=0, atol=0)
    torch.testing.assert_close(last, last64.float(), rtol=0, atol=0)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dt_scale", [50.0, 1.0, 1e-4])
def test_extreme_dt_stays_finite_and_exact(dt_scale, backend):
    # dt up to 50 with A up to -4.1: per-step log-decay down to -200, a chunk's down to -3000, so the factorised
    # exp(-cumsum) form would overflow (dt 1: only some chunks need the guard); tiny dt keeps exp(dt * A) within an
    # ulp of 1 for the whole sequence. numba: exp of arguments below -87.3 flushes to 0
    args = _inputs(2, 8, 8, 53, groups=2, dt_scale=dt_scale, extras=False)
    out, last = selective_scan(**args, return_last_state=True, backend=backend)
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    ref_out, ref_last = _oracle(args, return_last_state=True)
    assert _rel_err(out, ref_out) < 1e-5
    assert _rel_err(last, ref_last) < 1e-5


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_long_sequence_stays_finite_and_exact(backend):
    args = _inputs(1, 4, 4, 12544, dt_scale=0.1, extras=False)
    out, last = selective_scan(**args, delta_softplus=True, return_last_state=True, backend=backend)
    assert torch.isfinite(out).all()
    ref_out, ref_last = _oracle(args, delta_softplus=True, return_last_state=True)
    # errors do not grow with L: each chunk's state is exactly decayed, not re-normalised
    assert _rel_err(out, ref_out) < 1e-5
    assert _rel_err(last, ref_last) < 1e-5


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_gradcheck_through_the_custom_op(backend):
    args = {k: v.double().requires_grad_() for k, v in _inputs(2, 4, 3, 7, groups=2).items()}
    names = list(args)

    def scan(*tensors):
        kwargs = dict(zip(names, tensors))
        return selective_scan(**kwargs, delta_softplus=True, return_last_state=True, chunk_size=3, backend=backend)

    assert torch.autograd.gradcheck(scan, tuple(args.values()))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize(("state", "extras", "c_groups"), [(4, True, 2), (4, False, 2), (16, True, 1), (16, True, 4)])
def test_float32_gradients_match_float64_oracle(state, extras, c_groups, backend):
    # N = 16 runs numba's specialised kernel; C with its own group count exercises the group refinement's gradient
    args = _inputs(2, 8, state, 37, groups=2, extras=extras)
    args["C"] = torch.randn(2, c_groups, state, 37)
    weight_out, weight_last = torch.randn(2, 8, 37), torch.randn(2, 8, state)

    def grads(tensors, backend):
        tensors = {k: v.detach().requires_grad_() for k, v in tensors.items()}
        out, last = selective_scan(**tensors, delta_softplus=True, return_last_state=True, backend=backend)
        loss = (out * weight_out.to(out.dtype)).sum() + (last * weight_last.to(last.dtype)).sum()
        return dict(zip(tensors, torch.autograd.grad(loss, list(tensors.values()))))

    got = grads(args, backend)
    expected = grads({k: v.double() for k, v in args.items()}, "reference")
    for name in args:
        assert got[name].dtype == torch.float32
        # float32 backward sums more terms (over L for A, D, delta_bias): allow 1e-4 norm-relative
        assert _rel_err(got[name], expected[name]) < 1e-4, name


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_gradients_flow_for_bfloat16_inputs(backend):
    args = {k: v.requires_grad_() for k, v in _inputs(1, 8, 4, 20, dtype=torch.bfloat16).items()}
    selective_scan(**args, delta_softplus=True, backend=backend).float().square().sum().backward()
    for name, t in args.items():
        assert t.grad is not None and t.grad.dtype == torch.bfloat16 and torch.isfinite(t.grad).all(), name


@pytest.mark.parametrize(("with_d", "with_z"), [(False, False), (True, False), (False, True), (True, True)])
def test_flop_counter_counts_the_vmamba_formula(with_d, with_z):
    batch, dim, state, length = 2, 8, 4, 19
    args = _inputs(batch, dim, state, length, groups=2)
    if not with_d:
        del args["D"]
    if not with_z:
        del args["z"]
    with FlopCounterMode(display=False) as counter:
        selective_scan(**args, delta_softplus=True)
    macs = 9 * batch * length * dim * state + (with_d + with_z) * batch * dim * length
    # FlopCounterMode counts FLOPs = 2 x MACs, and nothing inside the op is counted a second time
    assert counter.get_total_flops() == 2 * macs


@pytest.mark.parametrize("kernel", FAST_BACKENDS)
@pytest.mark.parametrize("extras", [True, False])
def test_opcheck_passes(extras, kernel):
    args = _inputs(2, 4, 3, 9, groups=2, extras=extras)
    args = {k: v.requires_grad_() for k, v in args.items()}
    op_args = (
        *(args[k] for k in ("u", "delta", "A", "B", "C")),
        *(args.get(k) for k in ("D", "z", "delta_bias")),
        True,
        4,
        kernel,
    )
    torch.library.opcheck(torch.ops.mambaout.selective_scan.default, op_args)


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ValueError, match="auto, chunked, numba, triton, reference"):
        selective_scan(**_inputs(1, 4, 2, 5), backend="cuda")


@pytest.mark.parametrize(
    ("name", "bad", "message"),
    [
        ("u", torch.randn(4, 5), "u must be"),
        ("delta", torch.randn(1, 4, 6), "delta must"),
        ("A", torch.randn(3, 2), "A must be"),
        ("B", torch.randn(1, 3, 5), "B must be"),
        ("B", torch.randn(1, 3, 2, 5), "B must be"),  # dim 4 not divisible by 3 groups
        ("C", torch.randn(1, 2, 4), "C must be"),
        ("D", torch.randn(3), "D must be"),
        ("z", torch.randn(1, 4, 4), "z must"),
        ("delta_bias", torch.randn(4, 1), "delta_bias must be"),
    ],
)
def test_bad_shapes_name_the_argument(name, bad, message):
    args = _inputs(1, 4, 2, 5)
    args[name] = bad
    with pytest.raises(ValueError, match=message):
        selective_scan(**args)


def test_bad_chunk_size_is_rejected():
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan(**_inputs(1, 4, 2, 5), chunk_size=0)


@needs_numba
def test_cpu_default_is_the_numba_kernel(monkeypatch):
    calls = []
    numba_scan = scan_module._numba_module().selective_scan_numba
    monkeypatch.setattr(
        scan_module._numba_module(), "selective_scan_numba", lambda *a: calls.append(1) or numba_scan(*a)
    )
    args = _inputs(1, 4, 2, 5)
    assert torch.equal(selective_scan(**args), selective_scan(**args, backend="numba"))
    assert len(calls) == 2


def test_without_numba_auto_falls_back_to_chunked_and_numba_warns(monkeypatch):
    monkeypatch.setattr(scan_module, "_numba_module", lambda: None)
    args = _inputs(1, 4, 2, 5)
    expected = selective_scan(**args, backend="chunked")
    assert torch.equal(selective_scan(**args), expected)
    with pytest.warns(RuntimeWarning, match="pip install numba"):
        assert torch.equal(selective_scan(**args, backend="numba"), expected)


def test_numba_rejects_non_cpu_tensors():
    args = {k: v.to("meta") for k, v in _inputs(1, 4, 2, 5).items()}
    with pytest.raises(ValueError, match="CPU tensors only"):
        selective_scan(**args, backend="numba")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_gradients_with_large_dt_match_float64_oracle(backend):
    # dt up to 20: most chunks take the chunked backend's per-step guard, and numba's decays underflow to 0
    args = _inputs(1, 8, 4, 37, groups=2, dt_scale=20.0)
    weight = torch.randn(1, 8, 37)

    def grads(tensors, backend):
        tensors = {k: v.detach().requires_grad_() for k, v in tensors.items()}
        out = selective_scan(**tensors, backend=backend)
        return dict(zip(tensors, torch.autograd.grad((out * weight.to(out.dtype)).sum(), list(tensors.values()))))

    got = grads(args, backend)
    expected = grads({k: v.double() for k, v in args.items()}, "reference")
    for name in args:
        assert torch.isfinite(got[name]).all(), name
        assert _rel_err(got[name], expected[name]) < 1e-4, name


@pytest.mark.parametrize("chunk_log_decay", [28.0, 45.0])
def test_chunked_gradients_stay_accurate_on_both_sides_of_the_guard(chunk_log_decay):
    # an 8-step chunk's log-decay just inside the overflow guard (closed form) and past it (per-step recurrence);
    # with the guard at 60, a log-decay of 45 took the closed form and A's gradient was off by 1.7e-4
    args = _inputs(1, 8, 4, 24, groups=2)
    args["delta"] = torch.full_like(args["delta"], chunk_log_decay / 8)
    args["A"] = -0.9 - 0.1 * torch.rand(8, 4)
    weight = torch.randn(1, 8, 24)

    def grads(tensors, backend):
        tensors = {k: v.detach().requires_grad_() for k, v in tensors.items()}
        out = selective_scan(**tensors, backend=backend, chunk_size=8)
        return dict(zip(tensors, torch.autograd.grad((out * weight.to(out.dtype)).sum(), list(tensors.values()))))

    got = grads(args, "chunked")
    expected = grads({k: v.double() for k, v in args.items()}, "reference")
    for name in args:
        assert torch.isfinite(got[name]).all(), name
        assert _rel_err(got[name], expected[name]) < 5e-5, name


def test_scan_backend_context_sets_the_default_and_is_restored():
    args = _inputs(1, 4, 2, 9)
    expected = selective_scan(**args, backend="reference")
    with scan_backend("reference"):
        inside = selective_scan(**args)
        with pytest.raises(ValueError, match="unknown selective-scan backend"), scan_backend("gpu"):
            pass
    torch.testing.assert_close(inside, expected, rtol=0, atol=0)  # the reference loop ran, bit for bit
    with pytest.raises(ValueError, match="needs CUDA tensors"), scan_backend("triton"):
        selective_scan(**args)


@needs_numba
@pytest.mark.parametrize(("dim", "groups", "length"), [(200, 2, 37), (136, 1, 50), (24, 3, 16)])
def test_numba_channel_blocks_and_step_tiles_match_oracle(dim, groups, length):
    # numba scans up to 64 channels of a group side by side in tiles of 16 steps: groups of 100 and 136 channels
    # split into blocks of 56 + 44 and 48 + 48 + 40 lanes, 8-channel groups leave padding lanes, L 37 and 50 end in a
    # partial tile
    args = _inputs(2, dim, 16, length, groups)
    out, last = selective_scan(**args, delta_softplus=True, return_last_state=True, backend="numba")
    ref_out, ref_last = _oracle(args, delta_softplus=True, return_last_state=True)
    assert _rel_err(out, ref_out) < 1e-5
    assert _rel_err(last, ref_last) < 1e-5


@needs_numba
def test_numba_fused_softplus_and_gate_over_a_wide_range():
    # the fused float32 softplus (a polynomial log1p, torch's threshold of 20) and silu gate, far into both tails
    args = _inputs(1, 16, 4, 64, extras=True)
    args["delta"] = torch.linspace(-30, 30, 16 * 64).reshape(1, 16, 64)
    args["z"] = torch.linspace(-100, 100, 16 * 64).reshape(1, 16, 64)
    args["A"] = -torch.rand(16, 4) * 0.01  # small decays: dt up to 30 does not flush every state to zero
    out = selective_scan(**args, delta_softplus=True, backend="numba")
    ref = _oracle(args, delta_softplus=True)
    assert torch.isfinite(out).all()
    assert _rel_err(out, ref) < 1e-5


@needs_numba
def test_numba_bare_scan_of_bfloat16_inputs():
    # without D, z and delta_bias the numba kernel gets stand-in arrays for them, in the compute dtype
    args = _inputs(2, 16, 8, 40, groups=2, dtype=torch.bfloat16, extras=False)
    out, last = selective_scan(**args, return_last_state=True, backend="numba")
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    assert _rel_err(out, _oracle(args)) < 2e-2  # rounding the float32 result to bfloat16's 8 mantissa bits
    assert _rel_err(last, _oracle(args, return_last_state=True)[1]) < 1e-5


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_compiled_forward_and_backward_equal_eager_on_transposed_views(backend):
    # Linear outputs seen as (batch, dim, L) are not contiguous: the op's fake must describe the real outputs'
    # strides, and inductor lowers the op (and its backward op) as fallback kernels
    batch, dim, state, length = 2, 8, 4, 9
    u, delta, z = (torch.randn(batch, length, dim).transpose(1, 2).requires_grad_() for _ in range(3))
    fixed = {k: v for k, v in _inputs(batch, dim, state, length).items() if k in ("A", "B", "C", "D", "delta_bias")}

    def loss(u, delta, z):
        out = selective_scan(u, delta, z=z, delta_softplus=True, backend=backend, **fixed)
        return (out * torch.linspace(-1, 1, length)).sum()

    eager = torch.autograd.grad(loss(u, delta, z), (u, delta, z))
    compiled = torch.autograd.grad(torch.compile(loss, fullgraph=True)(u, delta, z), (u, delta, z))
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)

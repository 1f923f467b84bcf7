"""The selective scan: chunked backend vs the float64 per-step oracle, gradients, custom-op registration."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mambaout.ops import selective_scan


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # small shapes: one thread avoids oversubscription noise on 2-core CI machines
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
@pytest.mark.parametrize("backend", ["chunked", "auto"])
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
    out = selective_scan(**args, delta_softplus=True, chunk_size=chunk_size)
    assert _rel_err(out, _oracle(args, delta_softplus=True)) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_accumulate_in_float32(dtype):
    args = _inputs(2, 16, 8, 40, groups=2, dtype=dtype)
    out, last = selective_scan(**args, delta_softplus=True, return_last_state=True)
    assert out.dtype == dtype
    assert last.dtype == torch.float32  # mamba_ssm keeps the state in float32
    # the only error left is rounding the float32 result to 8 (bf16) or 11 (fp16) mantissa bits
    tolerance = 2e-2 if dtype == torch.bfloat16 else 2e-3
    assert _rel_err(out, _oracle(args, delta_softplus=True)) < tolerance


def test_float64_stays_float64():
    args = _inputs(1, 4, 4, 19, dtype=torch.float64)
    out, last = selective_scan(**args, delta_softplus=True, return_last_state=True)
    assert out.dtype == last.dtype == torch.float64
    assert _rel_err(out, _oracle(args, delta_softplus=True)) < 1e-12


@pytest.mark.parametrize("dt_scale", [50.0, 1e-4])
def test_extreme_dt_stays_finite_and_exact(dt_scale):
    # dt up to 50 with A up to -4.1: per-step log-decay down to -200, a chunk's down to -3000, so the factorised
    # exp(-cumsum) form would overflow; tiny dt keeps exp(dt * A) within an ulp of 1 for the whole sequence
    args = _inputs(2, 8, 8, 53, groups=2, dt_scale=dt_scale, extras=False)
    out, last = selective_scan(**args, return_last_state=True)
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    ref_out, ref_last = _oracle(args, return_last_state=True)
    assert _rel_err(out, ref_out) < 1e-5
    assert _rel_err(last, ref_last) < 1e-5


def test_long_sequence_stays_finite_and_exact():
    args = _inputs(1, 4, 4, 12544, dt_scale=0.1, extras=False)
    out, last = selective_scan(**args, delta_softplus=True, return_last_state=True)
    assert torch.isfinite(out).all()
    ref_out, ref_last = _oracle(args, delta_softplus=True, return_last_state=True)
    # errors do not grow with L: each chunk's state is exactly decayed, not re-normalised
    assert _rel_err(out, ref_out) < 1e-5
    assert _rel_err(last, ref_last) < 1e-5


def test_gradcheck_through_the_custom_op():
    args = {k: v.double().requires_grad_() for k, v in _inputs(2, 4, 3, 7, groups=2).items()}
    names = list(args)

    def scan(*tensors):
        return selective_scan(**dict(zip(names, tensors)), delta_softplus=True, return_last_state=True, chunk_size=3)

    assert torch.autograd.gradcheck(scan, tuple(args.values()))


@pytest.mark.parametrize("extras", [True, False])
def test_float32_gradients_match_float64_oracle(extras):
    args = _inputs(2, 8, 4, 37, groups=2, extras=extras)
    weight_out, weight_last = torch.randn(2, 8, 37), torch.randn(2, 8, 4)

    def grads(tensors, backend):
        tensors = {k: v.detach().requires_grad_() for k, v in tensors.items()}
        out, last = selective_scan(**tensors, delta_softplus=True, return_last_state=True, backend=backend)
        loss = (out * weight_out.to(out.dtype)).sum() + (last * weight_last.to(last.dtype)).sum()
        return dict(zip(tensors, torch.autograd.grad(loss, list(tensors.values()))))

    got = grads(args, "chunked")
    expected = grads({k: v.double() for k, v in args.items()}, "reference")
    for name in args:
        assert got[name].dtype == torch.float32
        # float32 backward sums more terms (over L for A, D, delta_bias): allow 1e-4 norm-relative
        assert _rel_err(got[name], expected[name]) < 1e-4, name


def test_gradients_flow_for_bfloat16_inputs():
    args = {k: v.requires_grad_() for k, v in _inputs(1, 8, 4, 20, dtype=torch.bfloat16).items()}
    selective_scan(**args, delta_softplus=True).float().square().sum().backward()
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


@pytest.mark.parametrize("extras", [True, False])
def test_opcheck_passes(extras):
    args = _inputs(2, 4, 3, 9, groups=2, extras=extras)
    args = {k: v.requires_grad_() for k, v in args.items()}
    op_args = (
        *(args[k] for k in ("u", "delta", "A", "B", "C")),
        *(args.get(k) for k in ("D", "z", "delta_bias")),
        True,
        4,
    )
    torch.library.opcheck(torch.ops.mambaout.selective_scan.default, op_args)


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ValueError, match="auto, chunked, reference"):
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

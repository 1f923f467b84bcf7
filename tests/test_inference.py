"""The fast inference path: exact norm folding, bf16 autocast, channels-last and compilation against fp32 eager."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

import mambaout
from mambaout.engine import inference
from mambaout.engine.inference import (
    FoldError,
    InferenceModel,
    cpu_supports_bf16,
    example_input,
    fold_layer_norms,
    is_conv_network,
    prepare_for_inference,
    resolve_precision,
)
from mambaout.models.mambaout import GatedCNNBlock, SplitProjectionBlock
from mambaout.ops import scan_backend, selective_scan
from mambaout.tasks.classification.predict import predict_files

# name, create_model overrides, probe size, norms whose affine is folded (every norm a Linear alone reads)
FAMILIES = [
    ("mambaout_test", {}, (64, 64), 6),  # 5 block norms + the head's input norm
    ("vmamba_test", {}, (64, 64), 8),  # v0: block norm1s + patch-merging norms (out_norm feeds the z gate)
    ("vmamba2_test", {}, (64, 64), 15),  # v2: norm1, norm2 and out_norm of each of the 5 blocks
    ("vim_test", {}, (32, 32), 0),  # RMSNorm only: nothing to fold
    ("deit_tiny", dict(depth=2, embed_dim=48, num_heads=2), (32, 32), 4),  # norm1 -> qkv, norm2 -> fc1
]
IDS = [f[0] for f in FAMILIES]
# bf16 keeps 8 bits of mantissa: logits of these small random models stay within a few percent of their scale
BF16_RTOL = 5e-2
EXACT_RTOL = 1e-5


def _model(name, overrides, num_classes=10):
    model = mambaout.create_model(name, num_classes=num_classes, **overrides).eval()
    with torch.no_grad():  # non-trivial norm affines (and biases), so that folding them changes weights
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(0.3 * torch.randn_like(param))
    return model


def _relative_error(got, expected):
    return float((got - expected).abs().max() / expected.abs().max())


def test_cpu_bf16_detection_agrees_with_the_kernel_flags():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo to compare with")
    flags = set(cpuinfo.read_text().split())
    assert cpu_supports_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_supports_bf16() else "fp32")


def test_explicit_precision_is_kept_and_bad_names_are_refused():
    assert [resolve_precision(p) for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
    assert resolve_precision("auto", "meta") == "fp32"
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16, not 'int8'"):
        prepare_for_inference(nn.Linear(2, 2), precision="int8")
    with pytest.raises(ValueError, match="channels_last must be True, False or 'auto'"):
        prepare_for_inference(nn.Linear(2, 2), channels_last="yes")


@pytest.mark.parametrize(("name", "overrides", "size", "expected_folds"), FAMILIES, ids=IDS)
def test_folded_norms_give_the_same_logits_and_leave_the_model_alone(name, overrides, size, expected_folds):
    model = _model(name, overrides)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, *size)
    with torch.no_grad(), scan_backend("chunked"):
        folded, names = fold_layer_norms(model, example_input(model, size))
        expected, got = model(x), folded(x)
    assert len(names) == expected_folds
    modules = dict(folded.named_modules())
    assert all(modules[n].weight is None and modules[n].bias is None for n in names)
    assert _relative_error(got, expected) <= EXACT_RTOL
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_fold_matches_the_closed_form():
    norm, linear = nn.LayerNorm(5), nn.Linear(5, 3, bias=False)
    model = nn.Sequential(norm, linear).eval()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.normal_()
    folded, names = fold_layer_norms(model, torch.randn(4, 5))
    assert names == ["0"]
    w, gamma, beta = linear.weight.detach(), norm.weight.detach(), norm.bias.detach()
    torch.testing.assert_close(folded[1].weight, w * gamma, rtol=1e-6, atol=0)
    torch.testing.assert_close(folded[1].bias, w @ beta, rtol=1e-6, atol=1e-7)  # created: the Linear had none


class _NormReadTwice(nn.Module):
    """The norm's output feeds a Linear AND a residual: folding would change the residual."""

    def __init__(self):
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(6), nn.Linear(6, 6)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 2.0)
            self.norm.bias.normal_()

    def forward(self, x):
        h = self.norm(x)
        return self.fc(h) + h


class _NormReadBehindTheProbe(_NormReadTwice):
    """A read the data-flow probe cannot see (through Python lists): the check after folding must catch it."""

    def forward(self, x):
        h = self.norm(x)
        return self.fc(h) + torch.tensor(h.tolist())


def test_a_norm_read_by_more_than_its_linear_is_not_folded():
    model = _NormReadTwice().eval()
    folded, names = fold_layer_norms(model, torch.randn(3, 6))
    assert names == []
    x = torch.randn(3, 6)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=0, atol=0)


def test_a_fold_that_changes_the_output_is_refused():
    model = _NormReadBehindTheProbe().eval()
    with pytest.raises(FoldError, match="folding 1 norms changed the output"):
        fold_layer_norms(model, torch.randn(3, 6))
    with pytest.warns(RuntimeWarning, match="norm folding skipped: folding 1 norms changed the output"):
        fast = prepare_for_inference(model, fold_norms=True, sample=torch.randn(3, 6))
    x = torch.randn(3, 6)
    assert fast.folded_norms == []
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize(("name", "overrides", "size", "expected_folds"), FAMILIES, ids=IDS)
def test_bf16_autocast_and_channels_last_agree_with_fp32(name, overrides, size, expected_folds):
    """The default scan backend (numba on CPU) runs here: under autocast its inputs arrive in bf16."""
    model = _model(name, overrides)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = model(x)
    cl = prepare_for_inference(model, precision="fp32", channels_last=True, fold_norms=True, input_size=size)
    got = cl(x)
    assert _relative_error(got, expected) <= EXACT_RTOL
    assert cl.channels_last and len(cl.folded_norms) == expected_folds
    fast = prepare_for_inference(model, precision="bf16", fold_norms=True, input_size=size)
    got = fast(x)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert not torch.equal(got, expected)  # bf16 really ran
    assert _relative_error(got, expected) <= BF16_RTOL


def test_fast_preset_picks_the_hardware_precision_and_channels_last_for_conv_networks(monkeypatch):
    monkeypatch.setattr(inference, "_compile", lambda model: None)  # compilation has its own test
    conv, tokens = mambaout.create_model("mambaout_test"), mambaout.create_model("vim_test")
    assert is_conv_network(conv) and not is_conv_network(tokens)
    fast = prepare_for_inference(conv, fast=True, input_size=(32, 32))
    assert fast.precision == resolve_precision("auto") and fast.channels_last
    assert fast.num_classes == conv.num_classes and fast.pretrained_cfg == conv.pretrained_cfg  # passed through
    assert fast.micro_batch == inference.CPU_MICRO_BATCH
    token_fast = prepare_for_inference(tokens, fast=True, input_size=(32, 32))
    assert not token_fast.channels_last and token_fast.micro_batch is None
    plain = prepare_for_inference(conv)
    assert (plain.precision, plain.channels_last, plain.compiled, plain.folded_norms) == ("fp32", False, None, [])
    assert plain.micro_batch is None
    assert plain.split_blocks == 0 and fast.split_blocks == sum(isinstance(m, GatedCNNBlock) for m in conv.modules())


def test_micro_batches_give_the_logits_of_the_whole_batch(monkeypatch):
    model = _model("mambaout_test", {})
    x = torch.randn(7, 3, 32, 32)
    whole = prepare_for_inference(model, fold_norms=True, input_size=(32, 32))
    calls = []
    chunked = prepare_for_inference(model, fold_norms=True, micro_batch=3, input_size=(32, 32))
    chunked.model.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    got = chunked(x)
    assert calls == [3, 3, 1]
    # same kernels on fewer rows: matmuls may block differently, so fp32 rounding, not bitwise
    assert _relative_error(got, whole(x)) <= EXACT_RTOL
    with pytest.raises(ValueError, match="micro_batch must be a whole number of images"):
        prepare_for_inference(model, micro_batch=-1)


def test_bf16_is_not_used_when_torch_kernels_are_capped_below_avx512():
    # an AVX2-only CPU (AMD EPYC Zen 2/3) as torch sees one: bf16 would be emulated there, 15x slower than fp32
    code = "from mambaout.engine.inference import resolve_precision as r; print(r('auto'))"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "fp32"


def test_split_projections_give_the_same_logits_and_leave_the_model_alone():
    model = _model("mambaout_test", {})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    # splitting goes with folding (predict's default) unless asked otherwise
    split = prepare_for_inference(model, fold_norms=True, input_size=(32, 32))
    unsplit = prepare_for_inference(model, fold_norms=True, split_projections=False, input_size=(32, 32))
    assert unsplit.split_blocks == 0
    blocks = [m for m in split.model.modules() if isinstance(m, GatedCNNBlock)]
    assert split.split_blocks == len(blocks) == sum(isinstance(m, GatedCNNBlock) for m in model.modules())
    assert all(type(b) is SplitProjectionBlock for b in blocks)
    # each block's norm now feeds two Linears, and is still folded into both
    assert len(split.folded_norms) == len(unsplit.folded_norms)
    with torch.no_grad():
        assert _relative_error(split(x), model(x)) <= EXACT_RTOL
        assert _relative_error(unsplit(x), model(x)) <= EXACT_RTOL
    assert all(type(m) is not SplitProjectionBlock for m in model.modules())
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_compiled_fast_path_agrees_with_eager():
    model = _model("mambaout_test", dict(depths=(1,), dims=(8,)))  # one block: few kernels to compile
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    fast = prepare_for_inference(model, fast=True, input_size=(32, 32))
    assert fast.compiled is not None and len(fast.folded_norms) == 2  # the block's norm and the head's
    assert fast.split_blocks == 1
    got = fast(x)
    assert fast.compiled is not None  # no fallback to eager
    tolerance = BF16_RTOL if fast.precision == "bf16" else 1e-4  # fp32: inductor reorders sums
    assert _relative_error(got, expected) <= tolerance


class _ScanBlock(nn.Module):
    """Projections into the selective-scan custom op: under autocast its inputs arrive in bf16."""

    def __init__(self, dim=8, state=4):
        super().__init__()
        self.proj = nn.Linear(dim, 3 * dim + 2 * state)
        self.A_log = nn.Parameter(torch.rand(dim, state).log())
        self.dim, self.state = dim, state

    def forward(self, x):
        u, delta, z, B, C = self.proj(x).transpose(1, 2).split([self.dim] * 3 + [self.state] * 2, dim=1)
        return selective_scan(u, delta, -self.A_log.float().exp(), B, C, z=z, delta_softplus=True)


def test_selective_scan_op_compiles_under_bf16_autocast():
    block = _ScanBlock().eval()
    x = torch.randn(2, 16, 8)
    with torch.no_grad(), scan_backend("reference"):
        expected = block(x)
    fast = prepare_for_inference(block, precision="bf16", compile=True)
    got = fast(x)
    assert fast.compiled is not None and got.dtype == torch.float32
    assert not torch.equal(got, expected)  # bf16 really ran
    assert _relative_error(got, expected) <= BF16_RTOL


def _failing_backend(graph, example_inputs):
    raise RuntimeError("the compiler gave up")


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    monkeypatch.setattr(inference, "_compile", lambda model: torch.compile(model, backend=_failing_backend))
    model = _model("mambaout_test", {})
    x = torch.randn(2, 3, 32, 32)
    wrapped = prepare_for_inference(model, compile=True)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*the compiler gave up.*running the model eagerly"):
        got = wrapped(x)
    assert wrapped.compiled is None
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), rtol=0, atol=0)


def test_predict_runs_through_the_inference_path(tmp_path):
    model = _model("mambaout_test", {}, num_classes=4)
    paths = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.fromarray(torch.randint(0, 256, (40, 50, 3), dtype=torch.uint8).numpy()).save(path)
        paths.append(path)
    exact, _ = predict_files(model, paths, topk=4, batch_size=2)
    fast, _ = predict_files(model, paths, topk=4, batch_size=2, precision="bf16")
    prepared = prepare_for_inference(model, precision="bf16", channels_last="auto", fold_norms=True)
    again, _ = predict_files(prepared, paths, topk=4, batch_size=2)
    assert isinstance(prepared, InferenceModel) and [p.top for p in again] == [p.top for p in fast]
    for a, b in zip(exact, fast):
        assert a.path == b.path
        assert [g.probability for g in b.top] == pytest.approx([g.probability for g in a.top], abs=2e-2)

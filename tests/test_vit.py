"""DeiT in timm's layout, its causal-attention variant, and the MambaOut paper's Equation 6."""

import math

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import mambaout
from conftest import reference
from mambaout.analysis.flops import EXTRA_FORMULAS, model_flops
from mambaout.analysis.transformer_flops import transformer_block_flops
from mambaout.models.vit import Attention

DEIT = {
    "deit_tiny": "deit_tiny_patch16_224",
    "deit_small": "deit_small_patch16_224",
    "deit_base": "deit_base_patch16_224",
}


def _meta_model(name, **kwargs):
    with torch.device("meta"):
        return mambaout.create_model(name, **kwargs)


@pytest.mark.parametrize("name", DEIT)
def test_state_dict_and_param_count_equal_the_reference_listing(name):
    ref = reference("official_state_dicts.json")["models"][DEIT[name]]
    for variant in (name, f"{name}_causal"):  # the causal ablation shares the layout exactly
        state = _meta_model(variant).state_dict()
        assert [[k, list(v.shape)] for k, v in state.items()] == [[k, shape] for k, shape, _ in ref["keys"]]
        assert sum(v.numel() for v in state.values()) == ref["params_total"]


@pytest.fixture(scope="module")
def timm_deit_tiny():
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224", dynamic_img_size=True).eval()


@pytest.mark.parametrize("size", [(224, 224), (160, 160), (96, 64)])
def test_outputs_equal_timms_deit_with_its_weights(timm_deit_tiny, size):
    ours = mambaout.create_model("deit_tiny").eval()
    ours.load_state_dict(timm_deit_tiny.state_dict(), strict=True)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), timm_deit_tiny.forward_features(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(ours(x), timm_deit_tiny(x), rtol=0, atol=1e-5)
        ours_blocks = ours.forward_intermediates(x, indices=[3, 11], intermediates_only=True)
        timm_blocks = timm_deit_tiny.forward_intermediates(x, indices=[3, 11], intermediates_only=True)
    for a, b in zip(ours_blocks, timm_blocks, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_a_release_file_loads_through_the_identity_converter(tmp_path, timm_deit_tiny):
    # DeiT's .pth files hold {'model': state_dict} in timm's layout.
    path = tmp_path / "deit_tiny_patch16_224.pth"
    torch.save({"model": timm_deit_tiny.state_dict(), "epoch": 299}, path)
    ours = mambaout.create_model("deit_tiny", checkpoint=path).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), timm_deit_tiny(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", DEIT)
def test_pretrained_cfg_points_at_timms_deit_release(name):
    ours = _meta_model(name)
    timm_cfg = timm.models.get_pretrained_cfg(f"{DEIT[name]}.fb_in1k")
    assert ours.pretrained_cfg["url"] == timm_cfg.url
    assert ours.pretrained_cfg["crop_pct"] == 0.875  # DeiT's own evaluation (timm says 0.9), see official_notes.md
    assert ours.pretrained_cfg["first_conv"] == "patch_embed.proj" and ours.pretrained_cfg["classifier"] == "head"
    assert _meta_model(f"{name}_causal").pretrained_cfg["url"] == ""  # nobody released causal weights


@pytest.mark.parametrize("name", DEIT)
def test_macs_at_224_are_fvcores_count_plus_the_attention_matmuls(name):
    # fvcore has no handle for scaled_dot_product_attention and drops it ("macs_G_with_sdpa_uncounted"); the reference
    # "macs_G" was counted with timm's fused attention off, so Q·Kᵀ and A·V appear as matmuls. torch's
    # FlopCounterMode has a formula for the SDPA ops (on CPU tensors: _scaled_dot_product_flash_attention_for_cpu,
    # on meta: the math path's bmm), two batched matmuls = 2·L²·D MACs per block -- the full square even when
    # causal. So our count is fvcore's SDPA-less count plus those matmuls, i.e. the reference's full count.
    ref = reference("official_complexity.json")["models"][DEIT[name]]
    dim, depth, tokens = {"deit_tiny": 192, "deit_small": 384, "deit_base": 768}[name], 12, 1 + 14 * 14
    attention_matmuls = depth * 2 * tokens**2 * dim
    for variant in (name, f"{name}_causal"):
        report = model_flops(variant)
        macs = report.macs
        assert macs / 1e9 == pytest.approx(ref["macs_G_with_sdpa_uncounted"] + attention_matmuls / 1e9, abs=2e-4)
        assert macs / 1e9 == pytest.approx(ref["macs_G"], abs=2e-4)
        assert report.params == ref["params"]


def test_causal_attention_is_a_triangular_mask_over_itself_and_earlier_tokens():
    attn = Attention(dim=32, num_heads=4, causal=True).eval()
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        out = attn(x)
        # oracle: explicit softmax attention with position j visible from i iff j <= i
        q, k, v = attn.qkv(x).reshape(2, 7, 3, 4, 8).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) / math.sqrt(8)
        scores = scores.masked_fill(~torch.ones(7, 7, dtype=torch.bool).tril(), float("-inf"))
        expected = attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 7, 32))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def _change_patches_from(x, first, grid_w, patch=16):
    """A copy of x with every patch at raster index >= first replaced by new noise."""
    x = x.clone()
    for j in range(first, (x.shape[-2] // patch) * grid_w):
        r, c = divmod(j, grid_w)
        x[..., r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] = torch.randn(x.shape[0], 3, patch, patch)
    return x


def test_causal_token_t_ignores_later_tokens_and_the_visible_model_does_not():
    causal = mambaout.create_model("deit_tiny_causal").eval()
    visible = mambaout.create_model("deit_tiny").eval()
    visible.load_state_dict(causal.state_dict(), strict=True)  # same weights, only the mask differs
    x = torch.randn(2, 3, 64, 96)  # a 4 x 6 grid: 24 patches, 25 tokens with the class token
    first = 10  # patches 10.. change, i.e. tokens 11.. (token 0 is the class token)
    y = _change_patches_from(x, first, grid_w=6)
    with torch.no_grad():
        a, b = causal.forward_features(x), causal.forward_features(y)
        torch.testing.assert_close(a[:, : first + 1], b[:, : first + 1], rtol=0, atol=1e-6)
        assert (a[:, first + 1 :] - b[:, first + 1 :]).abs().amax(-1).min() > 1e-3
        a, b = visible.forward_features(x), visible.forward_features(y)
        assert (a[:, : first + 1] - b[:, : first + 1]).abs().amax(-1).min() > 1e-3


def test_causal_model_pools_the_mean_of_patch_tokens_and_deit_the_class_token():
    x = torch.randn(2, 3, 64, 64)
    for name, pooled in (("deit_tiny_causal", lambda f: f[:, 1:].mean(1)), ("deit_tiny", lambda f: f[:, 0])):
        model = mambaout.create_model(name).eval()
        with torch.no_grad():
            features = model.forward_features(x)
            torch.testing.assert_close(model.forward_head(features, pre_logits=True), pooled(features))
            torch.testing.assert_close(model(x), model.head(pooled(features)))
    assert all(block.attn.causal for block in mambaout.create_model("deit_tiny_causal").blocks)
    assert mambaout.create_model("deit_tiny", causal=True).global_pool == "avg"


@pytest.mark.parametrize("size", [(100, 96), (96, 72), (15, 16)])
def test_input_size_not_divisible_by_the_patch_size_is_a_clear_error(size):
    model = mambaout.create_model("deit_tiny")
    h, w = size
    with pytest.raises(ValueError, match=rf"{h}x{w}.*patch size 16"):
        model(torch.randn(1, 3, h, w))


def test_non_square_input_resizes_the_position_embedding():
    model = mambaout.create_model("deit_tiny", num_classes=7).eval()
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        assert model(x).shape == (2, 7)
        assert model.forward_features(x).shape == (2, 1 + 6 * 4, 192)
        blocks = model.forward_intermediates(x, intermediates_only=True)
        tokens = model.forward_intermediates(x, indices=1, output_fmt="NLC", intermediates_only=True)
    assert len(blocks) == 12 and all(b.shape == (2, 192, 6, 4) for b in blocks)
    assert torch.equal(tokens[0], blocks[-1].flatten(2).transpose(1, 2))


def test_model_api_details():
    model = mambaout.create_model("deit_small", drop_path_rate=0.1)
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}
    assert [info["module"] for info in model.feature_info] == [f"blocks.{i}" for i in range(12)]
    assert {info["reduction"] for info in model.feature_info} == {16}
    rates = [b.drop_path.drop_prob for b in model.blocks if hasattr(b.drop_path, "drop_prob")]
    assert len(rates) == 11 and rates[-1] == pytest.approx(0.1) and rates == sorted(rates)
    with pytest.raises(ValueError, match="global_pool"):
        mambaout.create_model("deit_tiny", global_pool="max")


def test_equation_6_crossover_and_values():
    assert transformer_block_flops(384, 196).crossover_tokens == 2304
    assert transformer_block_flops(768, 196).crossover_tokens == 4608
    # hand-computed: D=64, L=10, r=4 -> linear 24·64²·10 = 983040, quadratic 4·64·10² = 25600
    small = transformer_block_flops(64, 10)
    assert (small.linear, small.quadratic, small.total) == (983_040, 25_600, 1_008_640)
    # r=2: (8 + 4·2)·D²·L = 16·64²·10 and the crossover moves to (2 + r)·D = 256
    r2 = transformer_block_flops(64, 10, mlp_ratio=2)
    assert r2.linear == 16 * 64**2 * 10 and r2.crossover_tokens == 256
    at_crossover = transformer_block_flops(384, 2304)
    assert at_crossover.linear == at_crossover.quadratic
    with pytest.raises(ValueError):
        transformer_block_flops(0, 196)


def test_equation_6_terms_match_the_flops_counted_in_a_deit_small_block():
    block = mambaout.create_model("deit_small").blocks[0].eval()
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS)  # as `mambaout flops` counts
    with counter, torch.no_grad():
        block(torch.randn(1, 196, 384))
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    eq6 = transformer_block_flops(384, 196)
    assert counts["aten.addmm"] == eq6.linear  # qkv, proj, fc1, fc2
    attention = {op: n for op, n in counts.items() if "scaled_dot_product" in op}
    assert len(attention) == 1 and sum(attention.values()) == eq6.quadratic  # SDPA's two matmuls


def test_equation_6_conclusion_differs_between_imagenet_and_dense_resolutions():
    short, long = transformer_block_flops(384, 196).format(), transformer_block_flops(384, 4096).format()
    assert "L=196" in short and "dominated by its linear layers" in short
    assert "L=4096" in long and "quadratic term dominates" in long
    assert short.splitlines()[-1] != long.splitlines()[-1]

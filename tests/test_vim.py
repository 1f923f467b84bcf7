"""Vision Mamba (Vim): official layout and sizes, the bidirectional mixer against an explicit oracle, the middle
class token, and MACs."""

import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

import mambaout
from conftest import reference
from mambaout.analysis.flops import model_flops
from mambaout.models._mamba_layers import causal_conv1d
from mambaout.models._positions import resample_mid_cls_pos_embed
from mambaout.models.vim import BiMambaMixer
from mambaout.ops.selective_scan import selective_scan
from mambaout.registry import weights_location

VIM = {
    "vim_tiny": "vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
    "vim_small": "vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
    "vim_base": "vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2",
}
PARAMS = {"vim_tiny": 7148008, "vim_small": 25796584, "vim_base": 97598440}


def _meta_model(name, **kwargs):
    with torch.device("meta"):
        return mambaout.create_model(name, **kwargs)


@pytest.mark.parametrize("name", VIM)
def test_param_count_and_official_listing_convert_exactly_to_our_keys(name):
    ref = reference("official_state_dicts.json")["models"][VIM[name]]
    official = {key: torch.empty(shape, device="meta") for key, shape, _ in ref["keys"]}
    converted = mambaout.get_model_spec(name).converter(official)
    ours = _meta_model(name).state_dict()
    assert [(k, tuple(v.shape)) for k, v in converted.items()] == [(k, tuple(v.shape)) for k, v in ours.items()]
    assert sum(v.numel() for v in ours.values()) == ref["params_total"] == PARAMS[name]
    assert mambaout.get_model_spec(name).converter(ours) is ours  # our own layout passes through


def _official_state_dict(model):
    """Our weights under the official names (layers.I.*, norm_f.*)."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("blocks."):
            key = "layers." + key[len("blocks.") :]
        elif key.startswith("norm."):
            key = "norm_f." + key[len("norm.") :]
        out[key] = value
    return out


def test_an_official_layout_checkpoint_loads_with_identical_logits(tmp_path):
    model = mambaout.create_model("vim_test", num_classes=7).eval()
    path = tmp_path / "vim_t_midclstok.pth"
    torch.save({"model": _official_state_dict(model), "epoch": 299}, path)
    loaded = mambaout.create_model("vim_test", checkpoint=path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.num_classes == 7


def test_macs_at_224_are_fvcores_ssm_less_count_plus_the_scan_formula_once_per_direction():
    # fvcore counts in_proj/dt_proj (matmul), x_proj/out_proj/head (linear), conv1d and the patch conv exactly as
    # FlopCounterMode does; neither counts RMSNorm (decomposed into square/mean/rsqrt, and not a LayerNorm op, so
    # our fvcore-style LayerNorm formula does not apply). Our scan op counts the VMamba formula 9BLDN + BDL (D skip)
    # + BDL (z gate) per call, and the mixer calls it once per direction: the reference's macs_G_with_ssm_formula.
    ref = reference("official_complexity.json")["models"][VIM["vim_tiny"]]
    report = model_flops("vim_tiny")
    dim, state, tokens, depth = 2 * 192, 16, 197, 24
    scan = depth * 2 * (9 * tokens * dim * state + 2 * dim * tokens)
    assert report.params == ref["params"]
    assert report.macs / 1e9 == pytest.approx(ref["macs_G_ssm_excluded"] + scan / 1e9, abs=2e-4)
    assert report.macs / 1e9 == pytest.approx(ref["macs_G_with_ssm_formula"], abs=2e-4)


def _perturbed_mixer(dim=16, d_state=4):
    mixer = BiMambaMixer(dim, d_state=d_state, num_layers=2).double()
    with torch.no_grad():  # move everything off its init so that no term hides behind a 0 or a 1
        for p in mixer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return mixer


def _conv_loop(x, weight, bias):
    """Depthwise causal conv written out: y[t] = bias + sum_k w[k] * x[t - K + 1 + k] (zero before the start)."""
    kernel, length = weight.shape[-1], x.shape[-1]
    y = bias[None, :, None].expand(x.shape[0], -1, length).clone()
    for t in range(length):
        for k in range(kernel):
            s = t - kernel + 1 + k
            if s >= 0:
                y[:, :, t] += weight[:, 0, k] * x[:, :, s]
    return y


def _oracle(mixer, hidden, backward=True):
    """Bimamba v2 from its definition, in float64 with the per-step reference scan."""
    p = dict(mixer.named_parameters())
    rank, state = mixer.dt_rank, mixer.d_state

    def direction(x, z, conv, x_proj, dt_proj, A_log, D):
        x = F.silu(_conv_loop(x, p[f"{conv}.weight"], p[f"{conv}.bias"]))
        dt, B, C = (x.transpose(1, 2) @ p[f"{x_proj}.weight"].T).split([rank, state, state], dim=-1)
        dt = (dt @ p[f"{dt_proj}.weight"].T).transpose(1, 2)
        return selective_scan(
            x,
            dt,
            -torch.exp(p[A_log]),
            B.transpose(1, 2),
            C.transpose(1, 2),
            p[D],
            z,
            delta_bias=p[f"{dt_proj}.bias"],
            delta_softplus=True,
            backend="reference",
        )

    x, z = (hidden @ p["in_proj.weight"].T).transpose(1, 2).chunk(2, dim=1)
    out = direction(x, z, "conv1d", "x_proj", "dt_proj", "A_log", "D")
    if backward:
        out = out + direction(x.flip(-1), z.flip(-1), "conv1d_b", "x_proj_b", "dt_proj_b", "A_b_log", "D_b").flip(-1)
    return (out / 2).transpose(1, 2) @ p["out_proj.weight"].T


def test_bidirectional_mixer_equals_forward_plus_flipped_backward_scan_halved():
    mixer = _perturbed_mixer()
    hidden = torch.randn(2, 11, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(mixer(hidden), _oracle(mixer, hidden), rtol=1e-9, atol=1e-11)
        # the float32 model path (chunked scan) agrees with the float64 oracle
        mixer32 = BiMambaMixer(16, d_state=4, num_layers=2)
        mixer32.load_state_dict({k: v.float() for k, v in mixer.state_dict().items()})
        torch.testing.assert_close(mixer32(hidden.float()).double(), _oracle(mixer, hidden), rtol=1e-4, atol=1e-5)


def test_both_directions_matter():
    mixer = _perturbed_mixer()
    hidden = torch.randn(2, 11, 16, dtype=torch.float64)
    with torch.no_grad():
        full = mixer(hidden)
        mixer.conv1d_b.weight.zero_()  # the backward branch now sees silu(0) = 0 everywhere: it contributes nothing
        mixer.conv1d_b.bias.zero_()
        forward_only = mixer(hidden)
    assert (full - forward_only).abs().max() > 1e-3
    torch.testing.assert_close(forward_only, _oracle(mixer, hidden, backward=False), rtol=1e-9, atol=1e-11)
    # and the first output token depends on the last input token (it would not with a forward scan alone)
    hidden = hidden.clone().requires_grad_(True)
    _perturbed_mixer()(hidden)[:, 0].sum().backward()
    assert hidden.grad[:, -1].abs().sum() > 0


def test_causal_conv1d_equals_the_explicit_loop():
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3).double()
    x = torch.randn(2, 6, 9, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(causal_conv1d(x, conv), _conv_loop(x, conv.weight, conv.bias))


def test_blocks_regroup_the_official_fused_add_norm_recurrence_exactly():
    # official: residual = hidden (first) or residual + hidden; hidden = mixer(norm(residual)); at the end
    # norm_f(residual + hidden), and the read-out is the middle token.
    model = mambaout.create_model("vim_test").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        hidden, _ = model._embed(x)
        residual = None
        for block in model.blocks:
            residual = hidden if residual is None else residual + hidden
            hidden = block.mixer(block.norm(residual))
        official = model.norm(residual + hidden)
        torch.testing.assert_close(model.forward_features(x), official, rtol=1e-6, atol=1e-6)
        num_patches = (64 // 16) ** 2
        torch.testing.assert_close(model.forward_head(official, pre_logits=True), official[:, num_patches // 2])


def test_class_token_is_inserted_in_the_middle_of_the_sequence():
    model = mambaout.create_model("vim_test").eval()
    with torch.no_grad():
        model.pos_embed.zero_()
        tokens, grid = model._embed(torch.randn(1, 3, 48, 80))  # 3x5 grid: 15 patches, class token at 7
    assert grid == (3, 5) and tokens.shape[1] == 16
    torch.testing.assert_close(tokens[0, 7], model.cls_token[0, 0])
    assert model.patch_tokens(tokens).shape == (1, 15, 32)


def test_mid_class_token_position_embedding_resampling_keeps_the_class_row_and_resamples_patches():
    old, new, dim = (14, 14), (6, 9), 8
    pos_embed = torch.randn(1, 1 + 196, dim)
    cls_row = pos_embed[:, 98]
    patches = torch.cat((pos_embed[:, :98], pos_embed[:, 99:]), dim=1)
    out = resample_mid_cls_pos_embed(pos_embed, new, old)
    assert out.shape == (1, 1 + 54, dim)
    torch.testing.assert_close(out[:, 27], cls_row, rtol=0, atol=0)
    expected = resample_abs_pos_embed(patches, new_size=new, old_size=old, num_prefix_tokens=0)
    torch.testing.assert_close(torch.cat((out[:, :27], out[:, 28:]), dim=1), expected, rtol=0, atol=0)
    assert resample_mid_cls_pos_embed(pos_embed, old, old) is pos_embed
    # treating row 0 as the class token (the DeiT convention of Vim's --finetune) would give something else
    deit_style = resample_abs_pos_embed(pos_embed, new_size=new, old_size=old, num_prefix_tokens=1)
    assert not torch.allclose(deit_style[:, 0], out[:, 27])


@pytest.mark.parametrize("size", [(64, 64), (96, 96), (48, 80)])
def test_any_input_size_divisible_by_16(size):
    model = mambaout.create_model("vim_test", num_classes=3).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        out = model(x)
        maps = model.forward_intermediates(x, intermediates_only=True)
    assert out.shape == (1, 3) and torch.isfinite(out).all()
    assert all(m.shape == (1, 32, size[0] // 16, size[1] // 16) for m in maps)
    with pytest.raises(ValueError, match="divisible by the patch size"):
        model(torch.randn(1, 3, 64, 70))


def test_intermediates_are_the_patch_tokens_without_the_middle_class_token():
    model = mambaout.create_model("vim_test").eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        features = model.forward_features(x)
        normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)[-1]
    patches = torch.cat((features[:, :18], features[:, 19:]), dim=1)  # 36 patches: class token at 18
    assert torch.equal(normed, patches.transpose(1, 2).reshape(normed.shape))
    assert torch.equal(model.patch_tokens(features), patches)


def test_no_weight_decay_and_pretrained_cfg():
    model = _meta_model("vim_tiny")
    names = dict(model.named_parameters())
    # Vim's own list (vim/models_mamba.py), of the names the model has: A_log is not in it, and timm's optimizer
    # never reads mamba's _no_weight_decay marks, so the official run decays A_log (test_weight_decay checks the set)
    assert model.no_weight_decay() == {"pos_embed", "cls_token"} and "pos_embed" in names
    cfg = model.pretrained_cfg
    # the official release file, through the Hub's cache
    assert weights_location(cfg) == "hf-hub:hustvl/Vim-tiny-midclstok/vim_t_midclstok_76p1acc.pth"
    assert cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"  # Vim's evaluation code, not its _cfg()
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert cfg["first_conv"] == "patch_embed.proj" and cfg["classifier"] == "head"


def test_drop_path_rates_follow_the_official_schedule():
    model = _meta_model("vim_tiny", drop_path_rate=0.1)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in model.blocks]
    # block i's mixer output is dropped at linspace(0, rate, depth)[i]: official inter_dpr[i + 1], and the full rate
    # for the last block's output (VisionMamba.drop_path before norm_f)
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1) and rates == sorted(rates)

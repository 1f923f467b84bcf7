"""LocalMamba (LocalVim, LocalVMamba) and Vim's "+" models: official sizes and layouts, the windowed scans as exact
permutations, the mixers and the whole LocalVim recurrence against loops written from the official equations."""

import math

import pytest
import torch
import torch.nn.functional as F

import mambaout
from conftest import reference
from mambaout.analysis.flops import model_flops
from mambaout.models._mamba_layers import mamba_direction
from mambaout.models.local_mamba import (
    MultiScan,
    MultiScanMamba,
    local_reverse,
    local_scan,
    parse_direction,
    scan_indices,
)
from mambaout.models.vmamba import LAYOUTS, SS2D
from mambaout.ops import scan_backend
from mambaout.registry import get_model_spec, weights_location

OFFICIAL = {  # ours: (official name, family)
    "local_vim_tiny": ("local_vim_tiny", "local_vim"),
    "local_vim_tiny_middle_cls_token": ("local_vim_tiny_middle_cls_token", "local_vim"),
    "local_vim_small": ("local_vim_small", "local_vim"),
    "local_vmamba_tiny": ("local_vssm_tiny", "local_vmamba"),
    "local_vmamba_small": ("local_vssm_small", "local_vmamba"),
}
PARAMS = {
    "local_vim_tiny": 7994152,
    "local_vim_tiny_middle_cls_token": 7994536,
    "local_vim_small": 27783784,
    "local_vmamba_tiny": 25527160,
    "local_vmamba_small": 49748536,
}


def _meta_model(name, **kwargs):
    with torch.device("meta"):
        return mambaout.create_model(name, **kwargs)


@pytest.mark.parametrize("name", OFFICIAL)
def test_param_count_and_official_listing_convert_exactly_to_our_keys(name):
    official_name, _ = OFFICIAL[name]
    convert = mambaout.get_model_spec(name).converter
    ref = reference("official_state_dicts.json")["models"][official_name]
    official = {key: torch.empty(shape, device="meta") for key, shape, _ in ref["keys"]}
    converted = convert(official)
    ours = _meta_model(name).state_dict()
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in ours.items()}
    params = sum(p.numel() for p in _meta_model(name).parameters())
    assert params == ref["params_total"] == PARAMS[name]
    assert convert(ours) == ours  # our own layout passes through


@pytest.mark.parametrize("name", OFFICIAL)
def test_macs_at_224_are_the_scan_formula_count(name):
    # LocalVim: fvcore's count without the SSM + per direction 9BLDN + BDL (D) + BDL (z gate): what the reference
    # calls macs_G_with_ssm_formula. LocalVMamba: its own VSSM.flops() (9BLDN + BDL on the padded length, all
    # directions in one call), which our op's formula reproduces since the padded scan runs as one grouped call.
    official_name, family = OFFICIAL[name]
    ref = reference("official_complexity.json")["models"][official_name]
    expected = ref["macs_G_with_ssm_formula"] if family == "local_vim" else ref["macs_G"]
    report = model_flops(name)
    assert report.params == ref["params"]
    assert report.macs / 1e9 == pytest.approx(expected, abs=1e-3)
    published = get_model_spec(name).published
    assert published.gmacs == pytest.approx(ref["published"][0]["macs_G"])
    if family == "local_vim":
        # LocalVim's published FLOPs come from its hand formula, which counts conv1d / x_proj / dt_proj once per
        # layer instead of once per direction and the scan as 5DLN: less than what the model computes
        assert ref["macs_G_official_method"] < report.macs / 1e9 - 0.5


# ---------------------------------------------------------------------------------------------------------------------
# Scan orders


def _order_loop(direction, height, width):
    """The official traversal written out: raster index per step, None for a padding token."""
    kind, size, flip = parse_direction(direction)
    if kind == "h":
        order = [r * width + c for r in range(height) for c in range(width)]
    elif kind == "v":
        order = [r * width + c for c in range(width) for r in range(height)]
    else:
        order = []
        for window_row in range(math.ceil(height / size)):
            for window_col in range(math.ceil(width / size)):
                for r in range(window_row * size, (window_row + 1) * size):
                    for c in range(window_col * size, (window_col + 1) * size):
                        order.append(r * width + c if r < height and c < width else None)
    return order[::-1] if flip else order


DIRECTIONS = ("h", "h_flip", "v", "v_flip", "w2", "w2_flip", "w7", "w7_flip", "w3")


@pytest.mark.parametrize("size", [(14, 14), (7, 7), (4, 4), (5, 9), (56, 56), (6, 15)])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_local_scan_is_the_official_traversal_and_reverse_is_its_exact_inverse(direction, size):
    height, width = size
    x = torch.randn(2, 3, height * width)
    scanned = local_scan(x, direction, height, width)
    expected = _order_loop(direction, height, width)
    assert scanned.shape[-1] == len(expected)
    for step, token in enumerate(expected):
        assert torch.equal(scanned[..., step], x[..., token] if token is not None else torch.zeros(2, 3))
    assert torch.equal(local_reverse(scanned, direction, height, width), x)  # round trip: identity, bit for bit
    order, _inverse = scan_indices(direction, height, width)
    real = order[order < height * width]
    assert torch.equal(real.sort().values, torch.arange(height * width))  # every token exactly once


def test_windows_that_do_not_divide_the_map_pad_inside_the_window_order():
    # w2 on 5x5: 3x3 windows of 2x2, padded to 36 steps; the padding sits inside windows, not at the end
    order, _ = scan_indices("w2", 5, 5)
    assert order.numel() == 36
    assert order[:8].tolist() == [0, 1, 5, 6, 2, 3, 7, 8]
    assert order[8:12].tolist() == [4, 25, 9, 25]  # window (0, 2): column 4, then padding
    assert scan_indices("w7", 14, 14)[0].numel() == 196


def test_unknown_direction_is_refused():
    for bad in ("x", "w0", "h2", "wflip", "v_flipped"):
        with pytest.raises(ValueError, match="scan direction"):
            parse_direction(bad)


# ---------------------------------------------------------------------------------------------------------------------
# Oracles written from the official equations (float64, per-step loops)


def _scan_loop(u, delta, A, B, C, D, z, delta_bias):
    """mamba's selective_scan_ref: h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, y_t = C_t h_t + D u_t, y *= silu(z)."""
    delta = F.softplus(delta + delta_bias[:, None])
    batch, dim, length = u.shape
    h = torch.zeros(batch, dim, A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) + D[:, None] * u
    return y if z is None else y * F.silu(z)


def _causal_conv_loop(x, weight, bias):
    kernel, length = weight.shape[-1], x.shape[-1]
    y = bias[None, :, None].expand(x.shape[0], -1, length).clone()
    for t in range(length):
        for k in range(kernel):
            if t - kernel + 1 + k >= 0:
                y[:, :, t] += weight[:, 0, k] * x[:, :, t - kernel + 1 + k]
    return y


def _gather(tokens, order):
    """(B, C, L) -> (B, C, len(order)) following an official traversal (zeros for padding)."""
    zero = torch.zeros_like(tokens[..., 0])
    return torch.stack([tokens[..., t] if t is not None else zero for t in order], dim=-1)


def _scatter(seq, order, length):
    out = torch.zeros(*seq.shape[:-1], length, dtype=seq.dtype)
    for step, t in enumerate(order):
        if t is not None:
            out[..., t] = seq[..., step]
    return out


def _biattn(p, prefix, x):
    """(B, L, C): x * sigmoid(W2 gelu(W1 mean_L LN(x) + b1) + b2)."""
    normed = F.layer_norm(x, x.shape[-1:], p[f"{prefix}norm.weight"], p[f"{prefix}norm.bias"], 1e-5)
    hidden = F.gelu(
        normed.mean(1, keepdim=True) @ p[f"{prefix}global_reduce.weight"].T + p[f"{prefix}global_reduce.bias"]
    )
    return x * torch.sigmoid(hidden @ p[f"{prefix}channel_select.weight"].T + p[f"{prefix}channel_select.bias"])


def _local_vim_mixer_oracle(mixer, hidden, grid):
    """MultiMamba.forward: in_proj, (cls out), per direction permute x and z, (cls in the middle), causal conv + SiLU,
    x_proj / dt_proj, z-gated scan, (cls out), reverse, (cls back), BiAttn; sum; out_proj."""
    p = dict(mixer.named_parameters())
    height, width = grid
    rank, state = mixer.dt_rank, mixer.d_state
    xz = (hidden @ p["in_proj.weight"].T).transpose(1, 2)
    if mixer.mid_cls_token:
        index = (xz.shape[-1] - 1) // 2
        cls = xz[..., index : index + 1]
        xz = torch.cat((xz[..., :index], xz[..., index + 1 :]), dim=-1)
    total = 0
    for i, direction in enumerate(mixer.directions):
        order = _order_loop(direction, height, width)
        seq = _gather(xz, order)
        if mixer.mid_cls_token:
            seq = torch.cat((seq[..., :index], cls, seq[..., index:]), dim=-1)
        x, z = seq.chunk(2, dim=1)
        x = F.silu(_causal_conv_loop(x, p[f"conv1d_{i}.weight"], p[f"conv1d_{i}.bias"]))
        dt, B, C = (x.transpose(1, 2) @ p[f"x_proj_{i}.weight"].T).split([rank, state, state], dim=-1)
        dt = (dt @ p[f"dt_proj_{i}.weight"].T).transpose(1, 2)
        A = -torch.exp(p[f"A_log_{i}"])
        y = _scan_loop(x, dt, A, B.transpose(1, 2), C.transpose(1, 2), p[f"D_{i}"], z, p[f"dt_proj_{i}.bias"])
        if mixer.mid_cls_token:
            y_cls = y[..., index : index + 1]
            y = torch.cat((y[..., :index], y[..., index + 1 :]), dim=-1)
        y = _scatter(y, order, height * width)
        if mixer.mid_cls_token:
            y = torch.cat((y[..., :index], y_cls, y[..., index:]), dim=-1)
        total = total + _biattn(p, "attn.", y.transpose(1, 2))
    return total @ p["out_proj.weight"].T


def _perturbed(model):
    with torch.no_grad():  # move everything off its init so that no term hides behind a 0 or a 1
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


@pytest.mark.parametrize("name", ["local_vim_test", "local_vim_mid_cls_test"])
def test_local_vim_mixer_equals_the_official_equations(name):
    model = _perturbed(mambaout.create_model(name).double().eval())
    grid = (4, 4)
    tokens = 16 + model.num_prefix_tokens
    for block in model.blocks:
        hidden = torch.randn(2, tokens, 32, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(
                block.mixer(hidden, grid), _local_vim_mixer_oracle(block.mixer, hidden, grid), rtol=1e-9, atol=1e-10
            )


def _per_direction_mixer(mixer, hidden, grid):
    """The mixer as a loop over its directions (its algorithm before the grouped scan): permute, Vim's
    `mamba_direction` with direction i's own modules, reverse, BiAttn, sum; the class token cut out before the
    permutation and put in at the middle of each direction's sequence."""
    height, width = grid
    xz = mixer.in_proj(hidden).transpose(1, 2)
    if mixer.mid_cls_token:
        index = (xz.shape[-1] - 1) // 2
        cls = xz[..., index : index + 1]
        xz = torch.cat((xz[..., :index], xz[..., index + 1 :]), dim=-1)
    out = 0
    for i, direction in enumerate(mixer.directions):
        seq = local_scan(xz, direction, height, width)
        if mixer.mid_cls_token:
            seq = torch.cat((seq[..., :index], cls, seq[..., index:]), dim=-1)
        x, z = seq.chunk(2, dim=1)
        y = mamba_direction(x, z, *mixer.direction(i))
        if mixer.mid_cls_token:
            y_cls = y[..., index : index + 1]
            y = torch.cat((y[..., :index], y[..., index + 1 :]), dim=-1)
        y = local_reverse(y, direction, height, width)
        if mixer.mid_cls_token:
            y = torch.cat((y[..., :index], y_cls, y[..., index:]), dim=-1)
        out = out + mixer.attn(y.transpose(1, 2))
    return mixer.out_proj(out)


@pytest.mark.parametrize("backend", ["reference", "chunked", "numba"])
@pytest.mark.parametrize("mid_cls_token", [False, True], ids=["no_cls", "mid_cls"])
def test_local_vim_grouped_mixer_has_the_per_direction_loops_outputs_and_gradients(mid_cls_token, backend):
    # 3x5: h / v_flip scan 15 steps, w3_flip 18 and w2 24 (padding inside the windows), so the grouped call pads
    # three of the four directions at their end; the class token sits at step 7 of each. float64, rel 1e-10
    grid = (3, 5)
    mixer = MultiScanMamba(16, ("h", "v_flip", "w2", "w3_flip"), d_state=4, mid_cls_token=mid_cls_token)
    mixer = _perturbed(mixer.double())
    hidden = torch.randn(2, 15 + mid_cls_token, 16, dtype=torch.float64, requires_grad=True)
    inputs = [hidden, *mixer.parameters()]
    with scan_backend(backend):
        grouped, expected = mixer(hidden, grid), _per_direction_mixer(mixer, hidden, grid)
        torch.testing.assert_close(grouped, expected, rtol=1e-10, atol=1e-12)
        cotangent = torch.randn_like(grouped)
        grads = torch.autograd.grad((grouped * cotangent).sum(), inputs)
        expected_grads = torch.autograd.grad((expected * cotangent).sum(), inputs)
    names = ["hidden", *(name for name, _ in mixer.named_parameters())]
    for name, grad, expected_grad in zip(names, grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


def _rope_tables(dim, grid, pretrain=14):
    """EVA's VisionRotaryEmbeddingFast written out: channel j < C/2 turns with the row, the rest with the column,
    pair (2m, 2m+1) of each half at frequency 10000^(-2m / (C/2)), positions scaled by pretrain / grid."""
    half = dim // 2
    cos = torch.empty(grid[0] * grid[1], dim, dtype=torch.float64)
    sin = torch.empty_like(cos)
    for r in range(grid[0]):
        for c in range(grid[1]):
            for j in range(dim):
                position = r * pretrain / grid[0] if j < half else c * pretrain / grid[1]
                angle = position / 10000 ** ((j % half) // 2 * 2 / half)
                cos[r * grid[1] + c, j], sin[r * grid[1] + c, j] = math.cos(angle), math.sin(angle)
    return cos, sin


def _rotate(x, cos, sin):
    out = x * cos
    out[..., 0::2] -= x[..., 1::2] * sin[..., 0::2]
    out[..., 1::2] += x[..., 0::2] * sin[..., 1::2]
    return out


@pytest.mark.parametrize("name", ["local_vim_test", "local_vim_mid_cls_test"])
def test_local_vim_logits_follow_the_official_fused_add_norm_recurrence_with_rope_on_hidden_and_residual(name):
    torch.manual_seed(0)
    model = _perturbed(mambaout.create_model(name, num_classes=5).double().eval())
    image = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    grid = (4, 4)
    with torch.no_grad():
        patches = F.conv2d(image, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=16)
        x = patches.flatten(2).transpose(1, 2)
        if model.num_prefix_tokens:
            x = torch.cat((x[:, :8], model.cls_token.expand(2, -1, -1), x[:, 8:]), dim=1)
        hidden, residual = x + model.pos_embed, None
        if model.rope is not None:
            cos, sin = _rope_tables(32, grid)
            # the tables are float32 buffers (as in the official state_dict): equal to the formula to float32 rounding
            torch.testing.assert_close(model.rope.freqs_cos, cos, rtol=0, atol=1e-6)
            torch.testing.assert_close(model.rope.freqs_sin, sin, rtol=0, atol=1e-6)
            cos, sin = model.rope.freqs_cos, model.rope.freqs_sin
        for block in model.blocks:
            if model.rope is not None:
                hidden = _rotate(hidden, cos, sin)
                residual = None if residual is None else _rotate(residual, cos, sin)
            residual = hidden if residual is None else residual + hidden
            normed = residual * torch.rsqrt(residual.pow(2).mean(-1, keepdim=True) + 1e-5) * block.norm.weight
            hidden = _local_vim_mixer_oracle(block.mixer, normed, grid)
        final = residual + hidden
        final = final * torch.rsqrt(final.pow(2).mean(-1, keepdim=True) + 1e-5) * model.norm.weight
        pooled = final[:, 8] if model.num_prefix_tokens else final.mean(1)
        expected = pooled @ model.head.weight.T + model.head.bias
        torch.testing.assert_close(model(image), expected, rtol=1e-9, atol=1e-10)


def test_local_vmamba_ss2d_equals_per_direction_scans_of_their_own_length():
    # 5x5: h / v scan 25 steps, w2 36 and w7 49 (padding inside the windows); the model pads every direction to 49
    # for one grouped scan, which must not change anything a causal scan computes
    torch.manual_seed(0)
    directions = ("h", "v_flip", "w2", "w7_flip")
    dim, inner, state = 8, 16, 4
    ss2d = SS2D(
        dim,
        LAYOUTS["NHWC"],
        ssm_ratio=2.0,
        d_state=state,
        dt_rank=None,
        conv_kernel=3,
        conv_bias=True,
        gate=True,
        multi_scan=MultiScan(directions, inner),
    )
    ss2d = _perturbed(ss2d.double().eval())
    x = torch.randn(2, 5, 5, dim, dtype=torch.float64)
    p = dict(ss2d.named_parameters())
    with torch.no_grad():
        xs, z = (x @ p["in_proj.weight"].T).chunk(2, dim=-1)
        xs = F.silu(F.conv2d(xs.permute(0, 3, 1, 2), p["conv.weight"], p["conv.bias"], padding=1, groups=inner))
        tokens = xs.flatten(2)
        total = 0
        for k, direction in enumerate(directions):
            order = _order_loop(direction, 5, 5)
            u = _gather(tokens, order)
            dt, B, C = torch.einsum("bdl,cd->bcl", u, p["x_proj_weight"][k]).split([ss2d.dt_rank, state, state], 1)
            dt = torch.einsum("brl,dr->bdl", dt, p["dt_proj_weight"][k])
            rows = slice(k * inner, (k + 1) * inner)
            A = -torch.exp(p["A_log"][rows])
            y = _scan_loop(u, dt, A, B, C, p["D"][rows], None, p["dt_proj_bias"][k])
            total = total + _biattn(p, "multi_scan.attn.", _scatter(y, order, 25).transpose(1, 2))
        y = F.layer_norm(total, (inner,), p["out_norm.weight"], p["out_norm.bias"], 1e-5).view(2, 5, 5, inner)
        expected = (y * F.silu(z)) @ p["out_proj.weight"].T
        torch.testing.assert_close(ss2d(x), expected, rtol=1e-9, atol=1e-10)


def test_local_vmamba_batched_scan_and_merge_have_the_per_direction_outputs_and_gradients():
    # MultiScan's one gather in and one index_select out against a loop of local_scan / local_reverse (end-padded to
    # the longest direction, BiAttn per direction, summed), float64; the ops only move numbers, so rel 1e-12
    directions = ("h", "v_flip", "w2", "w3_flip")
    multi_scan = _perturbed(MultiScan(directions, 8).double())
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64, requires_grad=True)
    ys = torch.randn(2, 4, 8, 24, dtype=torch.float64, requires_grad=True)  # w2 on 3x5: 24 steps, the longest
    scanned, merged = multi_scan.scan(x), multi_scan.merge(ys, 3, 5)
    sequences = [local_scan(x.flatten(2), d, 3, 5) for d in directions]
    expected_scanned = torch.stack([F.pad(s, (0, 24 - s.shape[-1])) for s in sequences], dim=1)
    expected_merged = (
        sum(multi_scan.attn(local_reverse(ys[:, k], d, 3, 5).transpose(1, 2)) for k, d in enumerate(directions))
        .transpose(1, 2)
        .reshape(2, 8, 3, 5)
    )
    torch.testing.assert_close(scanned, expected_scanned, rtol=0, atol=0)
    torch.testing.assert_close(merged, expected_merged, rtol=1e-12, atol=1e-14)
    inputs = [x, ys, *multi_scan.parameters()]
    cotangents = torch.randn_like(scanned), torch.randn_like(merged)
    grads = torch.autograd.grad((scanned * cotangents[0]).sum() + (merged * cotangents[1]).sum(), inputs)
    expected = (expected_scanned * cotangents[0]).sum() + (expected_merged * cotangents[1]).sum()
    for grad, expected_grad in zip(grads, torch.autograd.grad(expected, inputs), strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------------------------------
# Official checkpoints, models, registry


def _official_local_vim(state_dict):
    out = {}
    for key, value in state_dict.items():
        key = key.replace("blocks.", "layers.", 1) if key.startswith("blocks.") else key
        out["norm_f." + key[len("norm.") :] if key.startswith("norm.") else key] = value
    return out


def _official_local_vmamba(state_dict, depths):
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if key.startswith("stem."):
            key = {"conv": "patch_embed.0", "norm": "patch_embed.2"}[parts[1]] + "." + parts[2]
        elif parts[:1] == ["stages"] and parts[2] == "downsample":
            key = f"layers.{int(parts[1]) - 1}.downsample." + ".".join(parts[3:])
        elif parts[:1] == ["stages"]:
            rest = ".".join(parts[5:])
            names = {"norm1": "norm", "mixer": "op"}
            if parts[4] == "mixer":
                rest = {"dt_proj_weight": "dt_projs_weight", "dt_proj_bias": "dt_projs_bias", "A_log": "A_logs"}.get(
                    rest, {"D": "Ds"}.get(rest, rest)
                )
                rest = rest.replace("conv.", "conv2d.", 1) if rest.startswith("conv.") else rest
            key = f"layers.{parts[1]}.blocks.{parts[3]}.{names[parts[4]]}.{rest}"
        else:
            key = key.replace("head.fc.", "classifier.head.").replace("head.norm.", "classifier.norm.")
        out[key] = value
    return out


@pytest.mark.parametrize("name", ["local_vim_test", "local_vim_mid_cls_test", "local_vmamba_test"])
def test_an_official_release_checkpoint_loads_strictly_with_identical_logits(tmp_path, name):
    model = mambaout.create_model(name, num_classes=7).eval()
    state_dict = model.state_dict()
    if name.startswith("local_vmamba"):
        official = _official_local_vmamba(state_dict, (1, 1, 2, 1))
        assert any(".op.multi_scan.attn." in k for k in official) and not any(k.startswith("stages.") for k in official)
    else:
        official = _official_local_vim(state_dict)
        assert "norm_f.weight" in official
    path = tmp_path / f"{name}.ckpt"
    torch.save({"state_dict": official}, path)  # tools/convert_ckpt.py's layout
    loaded = mambaout.create_model(name, checkpoint=path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("name", ["local_vim_test", "local_vim_mid_cls_test", "local_vmamba_test"])
def test_non_square_inputs_and_other_sizes(name):
    model = mambaout.create_model(name, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 3)
        features = model.forward_intermediates(torch.randn(1, 3, 96, 64), intermediates_only=True)
    stride = 16 if name.startswith("local_vim") else 32
    assert features[-1].shape[-2:] == (96 // stride, 64 // stride)


def test_local_vim_without_class_token_refuses_token_pooling_and_pools_all_tokens():
    with pytest.raises(ValueError, match="global_pool"):
        mambaout.create_model("local_vim_test", global_pool="token")
    model = mambaout.create_model("local_vim_test").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = model.forward_features(x)
        assert tokens.shape == (2, 16, 32)
        torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), tokens.mean(1))
    assert model.no_weight_decay() == {"pos_embed"}  # LocalVim's list of the names it has (no cls token here)


def test_registry_entries_and_release_files():
    tiny = get_model_spec("local_vim_tiny")
    assert tiny.published.top1 == 76.2 and tiny.published.gmacs == 1.5
    assert tiny.pretrained_cfg["url"].endswith("/v1.0.0/local_vim_tiny.ckpt")
    assert get_model_spec("local_vim_tiny_middle_cls_token").published.top1 == 77.8
    assert get_model_spec("local_vmamba_small").pretrained_cfg["url"].endswith("/local_vssm_small.ckpt")
    assert get_model_spec("local_vmamba_tiny").pretrained_cfg["url"] == ""  # 'retraining...': no file released
    for name in OFFICIAL:
        cfg = get_model_spec(name).pretrained_cfg
        assert (cfg["crop_pct"], cfg["interpolation"]) == (0.875, "bicubic")


# ---------------------------------------------------------------------------------------------------------------------
# Vim's "+" models (fine-tuned at patch stride 8)


def test_vim_plus_models_use_overlapping_patches_at_stride_8():
    for name, base, dim in (("vim_tiny_plus", "vim_tiny", 192), ("vim_small_plus", "vim_small", 384)):
        plus, plain = _meta_model(name), _meta_model(base)
        assert plus.grid_size == (27, 27) and plus.pos_embed.shape == (1, 730, dim)
        assert plus.patch_embed.proj.stride == (8, 8) and plus.patch_embed.proj.kernel_size == (16, 16)
        extra = (730 - 197) * dim  # only the position embedding grows
        assert sum(p.numel() for p in plus.parameters()) == sum(p.numel() for p in plain.parameters()) + extra
    assert weights_location(get_model_spec("vim_tiny_plus").pretrained_cfg).endswith("vim_t_midclstok_ft_78p3acc.pth")
    assert get_model_spec("vim_small_plus").published.top1 == 81.6


def test_stride_8_vim_runs_and_its_intermediates_are_on_the_27x27_like_grid():
    model = mambaout.create_model("vim_test", patch_stride=8).eval()  # 64 px: (64 - 16) / 8 + 1 = 7 per side
    assert model.grid_size == (7, 7) and model.feature_info[0]["reduction"] == 8
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
        (features,) = model.forward_intermediates(torch.randn(1, 3, 64, 64), indices=1, intermediates_only=True)
    assert features.shape == (1, 32, 7, 7)

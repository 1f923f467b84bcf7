"""PlainMamba: official sizes and layout, the zig-zag scan orders, and the mixer and whole model against loops written
from the official equations (u permuted, dt / B / C in raster order, direction-aware B, dt_proj's bias twice)."""

import itertools

import pytest
import torch
import torch.nn.functional as F

import mambaout
from conftest import reference
from mambaout.analysis.flops import model_flops
from mambaout.models.plain_mamba import zigzag_orders
from mambaout.registry import get_model_spec, weights_location

PARAMS = {"plainmamba_l1": 7551656, "plainmamba_l2": 26145832, "plainmamba_l3": 50956456}


def _meta_model(name, **kwargs):
    with torch.device("meta"):
        return mambaout.create_model(name, **kwargs)


@pytest.mark.parametrize("name", PARAMS)
def test_param_count_and_official_listing_convert_exactly_to_our_keys(name):
    ref = reference("official_state_dicts.json")["models"][name]
    official = {key: torch.empty(shape, device="meta") for key, shape, _ in ref["keys"]}
    converted = mambaout.get_model_spec(name).converter(official)
    model = _meta_model(name)
    ours = model.state_dict()
    assert [(k, tuple(v.shape)) for k, v in converted.items()] == [(k, tuple(v.shape)) for k, v in ours.items()]
    assert sum(p.numel() for p in model.parameters()) == ref["params_total"] == PARAMS[name]
    assert mambaout.get_model_spec(name).converter(ours) is ours


@pytest.mark.parametrize("name", PARAMS)
def test_macs_at_224_are_the_scan_formula_count(name):
    # fvcore's count without the SSM + PlainMamba's get_ssm_flops (4 x depth x (9LDN + DL); the z gate comes after
    # the sum of the snakes and is not part of a scan). FlopCounterMode does not count BatchNorm, which fvcore does
    # (3.3 / 4.8 MMACs in the stem), hence the tolerance.
    ref = reference("official_complexity.json")["models"][name]
    report = model_flops(name)
    assert report.params == ref["params"]
    bn = ref["macs_by_operator_G"]["batch_norm"]
    assert report.macs / 1e9 == pytest.approx(ref["macs_G_with_ssm_formula"] - bn, abs=1e-3)
    assert get_model_spec(name).published.gmacs == pytest.approx(ref["published"][1]["macs_G"])


# ---------------------------------------------------------------------------------------------------------------------
# Scan orders

MOVE_CODES = {(0, 1): 1, (0, -1): 2, (-1, 0): 3, (1, 0): 4}


def _official_snakes(height, width):
    """The four snakes as the official code walks them (start corner and first direction by parity)."""
    snakes = []
    path = []
    for i in range(height):  # rows from the top-left
        path += [(i, j) for j in (range(width) if i % 2 == 0 else range(width - 1, -1, -1))]
    snakes.append(path)
    path, left = [], height % 2 == 1  # from the bottom row: bottom-right going left if H is odd
    for i in range(height - 1, -1, -1):
        path += [(i, j) for j in (range(width - 1, -1, -1) if left else range(width))]
        left = not left
    snakes.append(path)
    path = []
    for j in range(width):  # columns from the top-left
        path += [(i, j) for i in (range(height) if j % 2 == 0 else range(height - 1, -1, -1))]
    snakes.append(path)
    path, up = [], width % 2 == 1  # from the right column: bottom-right going up if W is odd
    for j in range(width - 1, -1, -1):
        path += [(i, j) for i in (range(height - 1, -1, -1) if up else range(height))]
        up = not up
    snakes.append(path)
    return snakes


@pytest.mark.parametrize("size", [(14, 14), (4, 4), (5, 7), (6, 3), (1, 5), (7, 1)])
def test_zigzag_orders_visit_every_token_once_through_neighbours_with_the_official_starts_and_moves(size):
    height, width = size
    orders, inverses, moves = zigzag_orders(height, width)
    for k, path in enumerate(_official_snakes(height, width)):
        assert orders[k].tolist() == [i * width + j for i, j in path]
        assert sorted(orders[k].tolist()) == list(range(height * width))  # every token exactly once
        steps = [(int(t) // width, int(t) % width) for t in orders[k]]
        for (r0, c0), (r1, c1) in itertools.pairwise(steps):
            assert abs(r1 - r0) + abs(c1 - c0) == 1  # consecutive tokens are spatial neighbours
        assert moves[k].tolist() == [0] + [
            MOVE_CODES[(r1 - r0, c1 - c0)] for (r0, c0), (r1, c1) in itertools.pairwise(steps)
        ]
        assert torch.equal(orders[k][inverses[k]], torch.arange(height * width))


# ---------------------------------------------------------------------------------------------------------------------
# Oracles written from the official equations (float64, per-step loops)


def _scan_loop(u, delta, A, B, C, D, delta_bias):
    """mamba's selective_scan_ref, z=None: h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, y_t = C_t h_t + D u_t."""
    delta = F.softplus(delta + delta_bias[:, None])
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    return torch.stack(ys, dim=-1) + D[:, None] * u


def _mixer_oracle(mixer, hidden, grid):
    """PlainMamba2D.forward: only u follows each snake; dt (dt_proj with its bias, and the bias again in the scan),
    B + direction_Bs[move at step t] and C are those of raster token t; outputs un-permuted, summed, * silu(z)."""
    p = dict(mixer.named_parameters())
    height, width = grid
    rank, state, inner = mixer.dt_rank, mixer.d_state, mixer.d_inner
    x, z = (hidden @ p["in_proj.weight"].T + p["in_proj.bias"]).chunk(2, dim=-1)
    x = x.transpose(1, 2).reshape(-1, inner, height, width)
    x = F.silu(F.conv2d(x, p["conv2d.weight"], p["conv2d.bias"], padding=3, groups=inner)).flatten(2)
    dt, B, C = (x.transpose(1, 2) @ p["x_proj.weight"].T).split([rank, state, state], dim=-1)
    dt = (dt @ p["dt_proj.weight"].T + p["dt_proj.bias"]).transpose(1, 2)
    total = 0
    for path in _official_snakes(height, width):
        order = [i * width + j for i, j in path]
        moves = [0] + [MOVE_CODES[(r1 - r0, c1 - c0)] for (r0, c0), (r1, c1) in itertools.pairwise(path)]
        u = x[:, :, order]
        b = B.transpose(1, 2) + p["direction_Bs"][moves].T
        y = _scan_loop(u, dt, -torch.exp(p["A_log"]), b, C.transpose(1, 2), p["D"], p["dt_proj.bias"])
        raster = torch.zeros_like(y)
        for step, token in enumerate(order):
            raster[..., token] = y[..., step]
        total = total + raster
    return (total.transpose(1, 2) * F.silu(z)) @ p["out_proj.weight"].T + p["out_proj.bias"]


def _perturbed(model):
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def test_mixer_equals_the_official_equations_on_a_non_square_grid():
    torch.manual_seed(0)
    model = _perturbed(mambaout.create_model("plainmamba_test").double().eval())
    mixer = model.blocks[1].mixer
    hidden = torch.randn(2, 15, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(mixer(hidden, (3, 5)), _mixer_oracle(mixer, hidden, (3, 5)), rtol=1e-9, atol=1e-10)


def test_logits_equal_the_official_forward_written_out():
    torch.manual_seed(0)
    model = _perturbed(mambaout.create_model("plainmamba_test", num_classes=5).double().eval())
    image = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        x = model.patch_embed.projection(model.patch_embed.convs(model.patch_embed.stem(image)))  # 32 px: no padding
        x = x.flatten(2).transpose(1, 2) + model.pos_embed
        for i, block in enumerate(model.blocks):
            normed = F.layer_norm(x, (32,), block.norm.weight, block.norm.bias, 1e-5)
            x = x + _mixer_oracle(block.mixer, normed, (4, 4))
            if i == 0:  # L1's first layer: depthwise conv + BN + GELU after the residual, no residual around it
                x = block.dw(x.transpose(1, 2).reshape(2, 32, 4, 4)).flatten(2).transpose(1, 2)
        pooled = F.layer_norm(x, (32,), model.norm.weight, model.norm.bias, 1e-6).mean(1)
        expected = pooled @ model.head.weight.T + model.head.bias
        torch.testing.assert_close(model(image), expected, rtol=1e-9, atol=1e-10)


def test_any_input_size_pads_before_the_projection_as_mmcv_corner_padding():
    model = mambaout.create_model("plainmamba_test", num_classes=3).eval()
    image = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        assert model(image).shape == (1, 3)
        (features,) = model.forward_intermediates(image, indices=1, intermediates_only=True)
        stem = model.patch_embed.convs(model.patch_embed.stem(image))  # 25 x 35 -> padded to 32 x 40
        assert stem.shape[-2:] == (25, 35)
        expected = model.patch_embed.projection(F.pad(stem, (0, 5, 0, 7)))
        torch.testing.assert_close(model.patch_embed(image), expected.permute(0, 2, 3, 1))
    assert features.shape == (1, 32, 4, 5)  # ceil(ceil(50 / 2) / 8) x ceil(ceil(70 / 2) / 8)


def _official_layout(state_dict):
    out = {}
    for key, value in state_dict.items():
        if key.startswith("blocks."):
            index, rest = key[len("blocks.") :].split(".", 1)
            key = f"backbone.layers.{index}." + (
                "mamba." + rest[len("mixer.") :] if rest.startswith("mixer.") else rest
            )
        elif key.startswith("norm."):
            key = "backbone.ln1." + key[len("norm.") :]
        elif key.startswith("head."):
            key = "head.fc." + key[len("head.") :]
        else:
            key = "backbone." + key
        out[key] = value
    return out


def test_an_official_mmcls_checkpoint_with_ema_buffers_loads_strictly_with_identical_logits(tmp_path):
    model = mambaout.create_model("plainmamba_test", num_classes=7).eval()
    official = _official_layout(model.state_dict())
    assert "backbone.layers.0.mamba.direction_Bs" in official and "backbone.layers.0.dw.1.running_var" in official
    ema = {f"ema_{k.replace('.', '_')}": torch.zeros_like(v) for k, v in official.items() if v.is_floating_point()}
    path = tmp_path / "l1.pth"
    torch.save({"meta": {"epoch": 300, "mmcls_version": "0.25.0"}, "state_dict": {**official, **ema}}, path)
    loaded = mambaout.create_model("plainmamba_test", checkpoint=path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_registry_entries():
    for name, top1, url in (
        ("plainmamba_l1", 77.9, "l1.pth"),
        ("plainmamba_l2", 81.6, "l2.pth"),
        ("plainmamba_l3", 82.3, "l3.pth"),
    ):
        spec = get_model_spec(name)
        assert spec.published.top1 == top1
        assert weights_location(spec.pretrained_cfg) == f"hf-hub:ChenhongyiYang/PlainMamba/{url}"
    model = mambaout.create_model("plainmamba_test")
    assert {"pos_embed", "blocks.0.mixer.A_log", "blocks.1.mixer.direction_Bs"} <= model.no_weight_decay()
    with pytest.raises(ValueError, match="global_pool"):
        mambaout.create_model("plainmamba_test", global_pool="token")

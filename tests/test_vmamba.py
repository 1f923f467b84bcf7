"""VMamba: parameter counts, MACs and official key listings against the reference, the cross-scan against an oracle."""

import re

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mambaout
from conftest import reference
from mambaout.analysis.flops import model_flops
from mambaout.checkpoints.vmamba_layout import convert_vmamba
from mambaout.errors import InputSizeError
from mambaout.models.vmamba import cross_merge, cross_scan
from mambaout.ops import scan_backend
from mambaout.ops.selective_scan import selective_scan
from mambaout.registry import get_model_spec

OURS_TO_OFFICIAL = {
    "vmamba_tiny": "vmambav0_tiny_224",
    "vmamba_small": "vmambav0_small_224",
    "vmamba_base": "vmambav0_base_224",
    "vmamba2_tiny": "vmambav2v_tiny_224",
    "vmamba2_small": "vmambav2v_small_224",
    "vmamba2_base": "vmambav2v_base_224",
    "vmamba2_tiny_s2l5": "vmambav2_tiny_224",
    "vmamba2_small_s2l5": "vmambav2_small_224",
    "vmamba2_base_s2l5": "vmambav2_base_224",
}
OFFICIAL = list(OURS_TO_OFFICIAL.items())


def _meta_model(name: str):
    with torch.device("meta"):
        return mambaout.create_model(name)


def _shapes(state_dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


# our names -> the official ones (the inverse of the converter), to write checkpoints in the official layout
_SS2D_PARAMS = {"x_proj_weight": "x_proj_weight", "dt_proj_weight": "dt_projs_weight", "dt_proj_bias": "dt_projs_bias"}
_SS2D_PARAMS |= {"A_log": "A_logs", "D": "Ds"}


def to_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    two_conv_stem = "stem.conv2.weight" in state_dict
    stem = {"conv1": "0", "norm1": "2", "conv2": "5", "norm2": "7"} if two_conv_stem else {"conv": "0", "norm": "2"}
    out = {}
    for key, value in state_dict.items():
        if m := re.match(r"^stem\.(\w+)\.(.+)$", key):
            key = f"patch_embed.{stem[m[1]]}.{m[2]}"
        elif m := re.match(r"^stages\.(\d+)\.downsample\.(\w+)\.(.+)$", key):
            merging = f"stages.{m[1]}.downsample.reduction.weight" in state_dict
            name = m[2] if merging else {"conv": "1", "norm": "3"}[m[2]]
            key = f"layers.{int(m[1]) - 1}.downsample.{name}.{m[3]}"
        elif m := re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.(.+)$", key):
            rest = m[3].replace("norm1.", "norm.")
            if rest.startswith("mixer."):
                rest = rest[len("mixer.") :]
                rest = "op." + _SS2D_PARAMS.get(rest, rest.replace("conv.", "conv2d."))
            key = f"layers.{m[1]}.blocks.{m[2]}.{rest}"
        else:
            key = key.replace("head.norm.", "classifier.norm.").replace("head.fc.", "classifier.head.")
        out[key] = value
    return out


def to_legacy(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The names older v0 release files carry (the official loader renames them itself)."""
    out = {}
    for key, value in state_dict.items():
        key = key.replace("patch_embed.0.", "patch_embed.proj.").replace("patch_embed.2.", "patch_embed.norm.")
        key = re.sub(r"(blocks\.\d+)\.norm\.", r"\1.ln_1.", key)
        key = re.sub(r"(blocks\.\d+)\.op\.", r"\1.self_attention.", key)
        key = re.sub(r"^classifier\.", "", key)
        out[key] = value
    return out


def conv_shaped(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Linear2d weights stored as (out, in, 1, 1), as a Conv2d-based Linear2d writes them."""
    pattern = re.compile(r"\.(in_proj|out_proj|fc1|fc2)\.weight$")
    return {k: v[:, :, None, None] if pattern.search(k) else v for k, v in state_dict.items()}


# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ours,official", OFFICIAL)
def test_params_and_macs_equal_the_reference(ours, official):
    ref = reference("official_complexity.json")["models"][official]
    report = model_flops(ours)
    assert report.params == ref["params"]
    assert report.macs / 1e9 == pytest.approx(ref["macs_G"], abs=0.05)


class _CountScans(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.mambaout.selective_scan.default:
            self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("ours,official", [OFFICIAL[0], OFFICIAL[3], OFFICIAL[6]])
def test_one_selective_scan_per_block(ours, official):
    ref = reference("official_complexity.json")["models"][official]
    model = _meta_model(ours).eval()
    counter = _CountScans()
    with counter, torch.no_grad():
        model(torch.empty(1, 3, 224, 224, device="meta"))
    assert counter.calls == ref["selective_scan_calls"]


@pytest.mark.parametrize("ours,official", OFFICIAL)
def test_official_key_listing_converts_to_exactly_our_keys(ours, official):
    ref = reference("official_state_dicts.json")["models"][official]
    listing = {name: torch.empty(shape, device="meta") for name, shape, _ in ref["keys"]}
    ours_state = _meta_model(ours).state_dict()
    expected = _shapes(ours_state)
    assert _shapes(get_model_spec(ours).converter(listing)) == expected
    # the inverse mapping the checkpoint tests use writes exactly the official listing
    assert _shapes(to_official(ours_state)) == _shapes(listing)
    # legacy v0 names and conv-shaped Linear2d weights convert too
    assert _shapes(convert_vmamba(to_legacy(listing))) == expected
    assert _shapes(convert_vmamba(conv_shaped(listing))) == expected


@pytest.mark.parametrize(
    "name,rewrite",
    [("vmamba_test", to_legacy), ("vmamba_test", lambda sd: sd), ("vmamba2_test", conv_shaped)],
    ids=["v0-legacy-names", "v0", "v2-conv-shaped-linear2d"],
)
def test_checkpoint_in_the_official_layout_loads_and_gives_identical_logits(tmp_path, name, rewrite):
    model = mambaout.create_model(name, num_classes=7).eval()
    official = rewrite(to_official(model.state_dict()))
    path = tmp_path / "ckpt_epoch_1.pth"
    torch.save({"model": official, "model_ema": official, "epoch": 1}, path)
    loaded = mambaout.create_model(name, checkpoint=path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def _direction_orders(height: int, width: int) -> list[list[tuple[int, int]]]:
    rows = [(h, w) for h in range(height) for w in range(width)]
    cols = [(h, w) for w in range(width) for h in range(height)]
    return [rows, cols, rows[::-1], cols[::-1]]


def test_cross_scan_and_merge_follow_the_four_orders():
    height, width = 3, 5
    x = torch.randn(2, 4, height, width, dtype=torch.float64)
    xs = cross_scan(x)
    ys = torch.randn_like(xs)
    merged = cross_merge(ys, height, width)
    expected_merge = torch.zeros_like(x)
    for k, order in enumerate(_direction_orders(height, width)):
        for t, (h, w) in enumerate(order):
            assert torch.equal(xs[:, k, :, t], x[:, :, h, w])
            expected_merge[:, :, h, w] += ys[:, k, :, t]
    torch.testing.assert_close(merged, expected_merge, rtol=0, atol=1e-12)


def test_ss2d_scan_equals_four_separate_direction_scans():
    model = mambaout.create_model("vmamba_test").double()
    mixer = model.stages[1].blocks[0].mixer
    with torch.no_grad():  # make the directions' parameters differ
        for p in (mixer.dt_proj_bias, mixer.A_log, mixer.D):
            p.add_(0.1 * torch.randn_like(p))
    height, width = 4, 6
    x = torch.randn(2, mixer.dt_proj_weight.shape[1], height, width, dtype=torch.float64)
    inner, rank, state = x.shape[1], mixer.dt_rank, mixer.d_state
    expected = torch.zeros_like(x)
    with torch.no_grad():
        got = mixer.scan(x)
        for k, order in enumerate(_direction_orders(height, width)):
            seq = torch.stack([x[:, :, h, w] for h, w in order], dim=-1)  # (B, inner, L)
            dbl = torch.einsum("cd,bdl->bcl", mixer.x_proj_weight[k], seq)
            dt, B, C = dbl.split([rank, state, state], dim=1)
            y = selective_scan(
                seq,
                torch.einsum("dr,brl->bdl", mixer.dt_proj_weight[k], dt),
                -torch.exp(mixer.A_log.view(4, inner, state)[k]),
                B,
                C,
                mixer.D.view(4, inner)[k],
                delta_bias=mixer.dt_proj_bias[k],
                delta_softplus=True,
                backend="reference",
            )
            for t, (h, w) in enumerate(order):
                expected[:, :, h, w] += y[:, :, t]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["vmamba_test", "vmamba2_test"])
def test_reference_scan_backend_agrees_with_the_default(name):
    model = mambaout.create_model(name).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        default = model(x)
        with scan_backend("reference"):
            reference = model(x)
    torch.testing.assert_close(reference, default, rtol=0, atol=1e-5)


def test_input_size_must_fit_the_strides():
    v0 = mambaout.create_model("vmamba_test").eval()
    with pytest.raises(InputSizeError, match="divisible by 32, got 48x64"):
        v0(torch.randn(1, 3, 48, 64))
    with pytest.raises(ValueError, match="divisible by 32"):
        v0.forward_intermediates(torch.randn(1, 3, 64, 40))
    v2 = mambaout.create_model("vmamba2_test", num_classes=3).eval()  # stride-2 3x3 convs take any size
    with torch.no_grad():
        assert v2(torch.randn(1, 3, 33, 47)).shape == (1, 3)
        stages = v2.forward_intermediates(torch.randn(1, 3, 33, 47), intermediates_only=True)
    assert [tuple(s.shape[2:]) for s in stages] == [(9, 12), (5, 6), (3, 3), (2, 2)]


def test_no_weight_decay_lists_what_the_official_model_lists():
    # VSSM's {"pos_embed"} names no parameter of ours, and its keywords are empty: Swin's rule then exempts 1-D
    # parameters and biases only (A_logs are decayed in the official run; test_weight_decay checks the whole set)
    model = mambaout.create_model("vmamba2_test")
    assert model.no_weight_decay() == set() == model.no_weight_decay_keywords()


def test_pretrained_cfg_points_at_the_official_release():
    cfg = get_model_spec("vmamba2_tiny").pretrained_cfg
    assert cfg["url"].endswith("/releases/download/%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth")
    assert (cfg["crop_pct"], cfg["interpolation"], cfg["first_conv"]) == (0.875, "bicubic", "stem.conv1")
    assert get_model_spec("vmamba_tiny").pretrained_cfg["first_conv"] == "stem.conv"

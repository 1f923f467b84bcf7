"""MambaOut against the official implementation's facts (shared/reference) and timm's implementation."""

import pytest
import timm
import torch

import mambaout
from conftest import reference
from mambaout.analysis.flops import count_macs, model_flops
from mambaout.checkpoints.layouts import convert_mambaout

OFFICIAL = ["mambaout_femto", "mambaout_kobe", "mambaout_tiny", "mambaout_small", "mambaout_base"]
TIMM_ONLY = [
    "mambaout_small_rw",
    "mambaout_base_short_rw",
    "mambaout_base_tall_rw",
    "mambaout_base_wide_rw",
    "mambaout_base_plus_rw",
]


def _meta_model(name):
    with torch.device("meta"):
        return mambaout.create_model(name)


def _timm_meta_model(name):
    with torch.device("meta"):
        return timm.create_model(name)


@pytest.mark.parametrize("name", OFFICIAL)
def test_parameter_count_equals_official(name):
    expected = reference("official_state_dicts.json")["models"][name]["params_total"]
    assert sum(p.numel() for p in _meta_model(name).parameters()) == expected


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_key_listing_converts_to_exactly_our_keys_and_shapes(name):
    listing = reference("official_state_dicts.json")["models"][name]["keys"]
    official = {key: torch.empty(shape, device="meta") for key, shape, _ in listing}
    converted = convert_mambaout(official)
    ours = _meta_model(name).state_dict()
    assert len(converted) == len(official)  # no two official keys collapse into one
    assert sorted(converted) == sorted(ours)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in ours.items()}


@pytest.mark.parametrize("name", OFFICIAL)
def test_macs_match_official_count_and_paper(name):
    official = reference("official_complexity.json")["models"][name]
    report = model_flops(name)
    assert report.params == official["params"]
    # Counted like fvcore (the official tool), the totals agree to the last reported digit.
    assert abs(report.macs / 1e9 - official["macs_G"]) <= 1e-4
    published = mambaout.get_model_spec(name).published
    assert abs(report.macs / 1e9 - published.gmacs) <= 0.05
    assert round(report.params / 1e6, 1) == published.params_m


@pytest.mark.parametrize("name", TIMM_ONLY)
def test_timm_variants_match_timm_params_macs_and_layout(name):
    ours, theirs = _meta_model(name), _timm_meta_model(name)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in theirs.state_dict().items()
    ]
    our_report = count_macs(ours, (1, 3, 224, 224))
    their_report = count_macs(theirs, (1, 3, 224, 224))
    assert our_report.params == their_report.params
    assert our_report.macs == their_report.macs
    published = mambaout.get_model_spec(name).published
    assert abs(our_report.params / 1e6 - published.params_m) <= 0.005  # timm's table gives 2 decimals
    if published.gmacs is not None:  # model cards round to 0.1 G
        assert abs(our_report.macs / 1e9 - published.gmacs) <= 0.05


@pytest.mark.parametrize("name", ["mambaout_femto", "mambaout_small_rw", "mambaout_base_wide_rw"])
def test_outputs_equal_timm_with_the_same_weights(name):
    reference_model = timm.create_model(name).eval()
    ours = mambaout.create_model(name).eval()
    ours.load_state_dict(reference_model.state_dict(), strict=True)
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference_model(x), rtol=1e-5, atol=1e-6)
        for a, b in zip(
            ours.forward_intermediates(x, intermediates_only=True),
            reference_model.forward_intermediates(x, intermediates_only=True),
        ):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_layernorm_eps_and_exact_gelu_match_the_official_block():
    """Small deviations (eps 1e-5, tanh GELU) shift femto's logits by ~2e-4: pin the exact choices."""
    model = mambaout.create_model("mambaout_femto")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.eps == 1e-6 for m in norms)
    gelus = [m for m in model.modules() if isinstance(m, torch.nn.GELU)]
    assert gelus and all(m.approximate == "none" for m in gelus)


@pytest.mark.parametrize("name", OFFICIAL)
def test_preprocessing_matches_official(name):
    official = reference("official_state_dicts.json")["models"][name]["preprocessing"]
    cfg = mambaout.get_model_spec(name).pretrained_cfg
    assert tuple(cfg["input_size"]) == tuple(official["input_size"])
    assert cfg["crop_pct"] == official["crop_pct"]
    assert cfg["interpolation"] == official["interpolation"]
    assert tuple(cfg["mean"]) == tuple(official["mean"]) and tuple(cfg["std"]) == tuple(official["std"])
    # downloaded from timm's Hub copy of the release (timm/<name>.in1k), which names the release as its origin
    assert cfg["origin_url"] == official["weights_url"] and cfg["hf_hub_id"] == f"timm/{name}.in1k"

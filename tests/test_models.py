"""Properties every registered model must have (parametrized over the registry)."""

import pytest
import torch

import mambaout

ALL_MODELS = mambaout.list_models()


def _input(model, batch=2, size=64):
    return torch.randn(batch, model.pretrained_cfg["input_size"][0], size, size)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward_gradients_and_gradient_checkpointing(name):
    """Every parameter gets a finite, nonzero gradient; checkpointing changes neither output nor gradients.

    64x64 is the smallest input for which every stage of every family sees more than one token (at 32x32 the
    last VMamba stage is 1x1, and a length-1 scan rightly gives A no gradient).
    """
    model = mambaout.create_model(name, num_classes=5)
    x = _input(model, size=64)
    out = model(x)
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad[:5]}"
    zero_grad = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero_grad, f"parameters with an all-zero gradient: {zero_grad[:5]}"

    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    checkpointed = model(x)
    checkpointed.square().mean().backward()
    torch.testing.assert_close(checkpointed, out, rtol=0, atol=0)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-5, atol=1e-7, msg=n)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_intermediates_agree_with_features_and_feature_info(name):
    model = mambaout.create_model(name).eval()
    x = _input(model, size=64)
    with torch.no_grad():
        features = model.forward_features(x)
        final, stages = model.forward_intermediates(x)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert torch.equal(final, features)
    assert len(stages) == len(model.feature_info)
    # overlapping patches (Vim "+": 16x16 at stride 8) give (64 - 16) // 8 + 1 = 7 tokens a side, not 64 // 8
    overlap = getattr(model, "patch_size", 0) - getattr(model, "patch_stride", getattr(model, "patch_size", 0))
    for feat, info in zip(stages, model.feature_info):
        side = (64 - overlap) // info["reduction"]
        assert feat.shape[1] == info["num_chs"]
        assert feat.shape[2:] == (side, side)
    if model.output_fmt == "NHWC":
        # the last stage's NCHW output is forward_features' NHWC output
        assert torch.equal(stages[-1], features.permute(0, 3, 1, 2))
    else:
        # token models: features are (B, extra + H*W, C) after the final norm (the class token first for DeiT, in
        # the middle for Vim), block outputs are unnormalised
        assert model.output_fmt == "NLC"
        with torch.no_grad():
            normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)[-1]
        patches = model.patch_tokens(features)
        assert torch.equal(normed, patches.transpose(1, 2).reshape(normed.shape))
    assert [t.shape for t in last_two] == [t.shape for t in stages[-2:]]
    assert all(torch.equal(a, b) for a, b in zip(last_two, stages[-2:]))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_timm_api(name):
    model = mambaout.create_model(name)
    cfg = model.pretrained_cfg
    for key in (
        "url",
        "input_size",
        "crop_pct",
        "interpolation",
        "mean",
        "std",
        "num_classes",
        "first_conv",
        "classifier",
    ):
        assert key in cfg, key
    modules = dict(model.named_modules())
    assert cfg["first_conv"] in modules and cfg["classifier"] in modules
    assert model.get_classifier() is modules[cfg["classifier"]]
    assert isinstance(model.no_weight_decay(), set)
    x = _input(model, size=32)
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size)
        model.reset_classifier(11)
        assert model(x).shape == (2, 11)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.head_hidden_size)


@pytest.mark.parametrize("size", [(1, 1), (33, 47), (64, 100), (224, 160)])
def test_any_input_size_the_strided_convs_accept(size):
    model = mambaout.create_model("mambaout_test", num_classes=4).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
        stages = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
    assert out.shape == (1, 4)
    h, w = size
    for feat in stages:  # each stride-2 conv (k3, p1) maps n -> ceil(n / 2)
        h, w = -(-h // 2), -(-w // 2)
        if feat is stages[0]:
            h, w = -(-h // 2), -(-w // 2)
        assert feat.shape[2:] == (h, w)


def test_drop_path_rate_is_applied_linearly_over_blocks():
    model = mambaout.create_model("mambaout_femto", drop_path_rate=0.3)
    rates = [b.drop_path.drop_prob for s in model.stages for b in s.blocks if hasattr(b.drop_path, "drop_prob")]
    depth = sum(len(s.blocks) for s in model.stages)
    assert len(rates) == depth - 1  # the first block has rate 0 -> Identity
    assert rates[-1] == pytest.approx(0.3)
    assert rates == sorted(rates)


def test_unknown_model_names_the_closest():
    with pytest.raises(KeyError, match="mambaout_tiny"):
        mambaout.create_model("mambaout_tinny")


def test_misspelled_option_is_an_error_not_ignored():
    with pytest.raises(TypeError, match="mambaout_test"):
        mambaout.create_model("mambaout_test", drop_pth_rate=0.1)


def test_list_models_pattern():
    assert mambaout.list_models("mambaout_base*") == [
        "mambaout_base",
        "mambaout_base_plus_rw",
        "mambaout_base_short_rw",
        "mambaout_base_tall_rw",
        "mambaout_base_wide_rw",
    ]
    assert mambaout.list_models("nothing*") == []

"""timm's feature-extraction and classifier API (what timm's own tests/test_models.py checks), for every family.

`create_model(..., features_only=True)` against the model's own `forward_intermediates`; `global_pool`,
`reset_classifier(num_classes, global_pool)` and `pool_size` as timm's test_model_default_cfgs(_non_std) use them.
Registry-wide tests run on every `*_test` variant, so a new family is covered as soon as it registers one.
"""

from __future__ import annotations

import math

import pytest
import torch
from timm.models._features import FeatureInfo

import mambaout
from mambaout.factory import is_plain

TEST_MODELS = mambaout.list_models("*_test")
SIZES = [(64, 96), (96, 64)]  # non-square, and multiples of what every family's raw model takes (32)


pytestmark = pytest.mark.usefixtures("one_thread")


def _twins(name: str, **kwargs) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A classification model and a features_only model holding the same weights (seeded alike)."""
    torch.manual_seed(0)
    model = mambaout.create_model(name).eval()
    torch.manual_seed(0)
    features = mambaout.create_model(name, features_only=True, **kwargs).eval()
    return model, features


def test_test_variants_cover_every_family():
    families = {mambaout.get_model_spec(name).family for name in mambaout.list_models()}
    assert {mambaout.get_model_spec(name).family for name in TEST_MODELS} == families


@pytest.mark.parametrize("name", TEST_MODELS)
def test_features_only_gives_feature_info_maps_equal_to_intermediates(name):
    model, features = _twins(name)
    info = features.feature_info
    assert isinstance(info, FeatureInfo)
    channels, reductions, modules = info.channels(), info.reduction(), info.module_name()
    expected = mambaout.factory.default_out_indices(model)
    assert len(channels) == len(reductions) == len(modules) == len(expected) >= 2
    assert channels == [model.feature_info[i]["num_chs"] for i in expected]
    assert reductions == [model.feature_info[i]["reduction"] for i in expected]
    assert modules == [model.feature_info[i]["module"] for i in expected]
    submodules = dict(features.model.named_modules())
    assert all(module in submodules for module in modules)
    if not is_plain(model):
        assert reductions == [4, 8, 16, 32]
    for height, width in SIZES:
        x = torch.randn(2, 3, height, width)
        with torch.no_grad():
            maps = features(x)
            oracle = model.forward_intermediates(x, indices=list(expected), intermediates_only=True)
        assert isinstance(maps, list) and len(maps) == len(channels)
        for feature, reference, c, r in zip(maps, oracle, channels, reductions):
            assert feature.shape == (2, c, math.ceil(height / r), math.ceil(width / r))
            assert torch.equal(feature, reference)


@pytest.mark.parametrize("name", TEST_MODELS)
def test_features_only_drops_the_head_and_every_parameter_gets_a_gradient(name):
    features = mambaout.create_model(name, features_only=True, out_indices=(0, 1))
    assert not any(".head." in f".{key}" for key in features.state_dict())
    assert "num_classes" not in features.pretrained_cfg and "classifier" not in features.pretrained_cfg
    assert features.pretrained_cfg["input_size"] == mambaout.get_model_spec(name).pretrained_cfg["input_size"]
    assert features.feature_info.reduction() == [features.model.feature_info[i]["reduction"] for i in (0, 1)]
    maps = features(torch.randn(2, 3, 64, 96))
    sum(m.square().mean() for m in maps).backward()
    missing = [n for n, p in features.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing[:5]}"


@pytest.mark.parametrize("name", ["mambaout_test", "vim_test"])
def test_features_only_out_indices_as_timm_takes_them(name):
    """A list picks feature_info entries; an int n takes the last n (timm's feature_take_indices)."""
    model, picked = _twins(name, out_indices=[1])
    _, last_two = _twins(name, out_indices=2)
    count = len(model.feature_info)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        oracle = model.forward_intermediates(x, intermediates_only=True)
        assert torch.equal(picked(x)[0], oracle[1])
        assert all(torch.equal(a, b) for a, b in zip(last_two(x), oracle[-2:]))
    assert last_two.feature_info.module_name() == [model.feature_info[i]["module"] for i in (count - 2, count - 1)]


def test_plain_default_takes_four_evenly_spaced_blocks():
    with torch.device("meta"):
        features = mambaout.create_model("vim_small", features_only=True)
    assert features.feature_info.module_name() == ["blocks.5", "blocks.11", "blocks.17", "blocks.23"]
    assert features.feature_info.reduction() == [16] * 4


def test_features_only_loads_weights_into_the_extractor(tmp_path):
    model = mambaout.create_model("mambaout_test", num_classes=7).eval()
    path = tmp_path / "weights.pth"
    torch.save({"model": model.state_dict()}, path)
    features = mambaout.create_model("mambaout_test", features_only=True, checkpoint=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        oracle = model.forward_intermediates(x, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(features(x), oracle))


@pytest.mark.parametrize("name", [n for n in TEST_MODELS if not is_plain(mambaout.create_model(n))])
def test_features_only_builds_as_smp_tu_encoders_ask(name):
    """segmentation_models_pytorch's `tu-` encoder: a meta-device probe read for output_fmt and reductions (4, 8,
    16, 32 = "transformer style"), then the real extractor with in_chans and out_indices=(0, 1, 2, 3)."""
    with torch.device("meta"):
        probe = mambaout.create_model(name, features_only=True)
    assert probe.output_fmt != "NHWC" and probe.feature_info.reduction() == [4, 8, 16, 32]
    encoder = mambaout.create_model(name, in_chans=1, features_only=True, pretrained=False, out_indices=(0, 1, 2, 3))
    maps = encoder(torch.randn(1, 1, 64, 64))
    assert [m.shape[1] for m in maps] == encoder.feature_info.channels()
    assert [64 // m.shape[-1] for m in maps] == [4, 8, 16, 32]


def test_out_indices_need_features_only_and_the_getter_is_the_extractor():
    with pytest.raises(ValueError, match="features_only"):
        mambaout.create_model("mambaout_test", out_indices=(0, 1))
    getter = mambaout.create_model("mambaout_test", features_only=True, feature_cls="getter")
    assert getter.feature_info.reduction() == [4, 8, 16, 32]
    with pytest.raises(ValueError, match="feature_cls"):
        mambaout.create_model("mambaout_test", features_only=True, feature_cls="hook")


# --- timm's classifier API: pool_size, reset_classifier(num_classes, global_pool), global_pool='' --------------


def _is_map_model(model) -> bool:
    return model.output_fmt in ("NHWC", "NCHW")


def _spatial(t: torch.Tensor, fmt: str) -> tuple[int, int]:
    return tuple(t.shape[1:3]) if fmt == "NHWC" else tuple(t.shape[2:4])


# one full-size model per family (each family's registration code fills every variant's cfg alike), and the tests
ONE_PER_FAMILY = {mambaout.get_model_spec(n).family: n for n in mambaout.list_models() if n not in TEST_MODELS}


@pytest.mark.parametrize("name", sorted(set(ONE_PER_FAMILY.values()) | set(TEST_MODELS)))
def test_pretrained_cfg_has_timms_keys_and_pool_size_fits_the_model(name):
    with torch.device("meta"):
        model = mambaout.create_model(name)
    cfg = model.pretrained_cfg
    state_dict = model.state_dict()
    assert f"{cfg['classifier']}.weight" in state_dict and f"{cfg['first_conv']}.weight" in state_dict
    assert "pool_size" in cfg
    if _is_map_model(model):
        stride = model.feature_info[-1]["reduction"]
        assert cfg["pool_size"] == tuple(math.ceil(side / stride) for side in cfg["input_size"][1:])
    else:
        assert cfg["pool_size"] is None  # token features, as timm's ViTs


@pytest.mark.parametrize("name", TEST_MODELS)
def test_timm_default_cfgs_checks(name):
    """timm's test_model_default_cfgs (map models) / test_model_default_cfgs_non_std (token models)."""
    model = mambaout.create_model(name).eval()
    cfg = model.pretrained_cfg
    x = torch.randn(1, *cfg["input_size"])
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert pre_logits.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0
        pooled = model(x)
        assert pooled.shape == pre_logits.shape
        if _is_map_model(model):
            channel_axis = -1 if model.output_fmt == "NHWC" else 1
            assert _spatial(features, model.output_fmt) == cfg["pool_size"]
            assert features.shape[channel_axis] == model.num_features
            model.reset_classifier(0, "")
            unpooled = model(x)
            assert unpooled.ndim == 4 and _spatial(unpooled, model.output_fmt) == cfg["pool_size"]
            fresh = mambaout.create_model(name, num_classes=0, global_pool="").eval()
            fresh.load_state_dict(model.state_dict())
            assert torch.equal(fresh(x), unpooled)
        else:
            assert features.shape[-1] == model.num_features
            model.reset_classifier(0, "")
            assert torch.equal(model(x), features)  # every token, through the (now empty) head
            assert mambaout.create_model(name, num_classes=0, global_pool="")(x).shape == features.shape
        model.reset_classifier(5, "avg")
        assert model(x).shape == (1, 5)
        model.reset_classifier(0)  # keeps the pool chosen last
        assert model(x).shape == (1, model.head_hidden_size)
        if not _is_map_model(model):
            torch.testing.assert_close(model(x), model.patch_tokens(features).mean(1), rtol=0, atol=1e-6)
            if model.num_prefix_tokens:  # PlainMamba and LocalVim-T/S have no class token to read
                model.reset_classifier(0, "token")
                assert torch.equal(model(x), features[:, model.cls_token_index(features.shape[1] - 1)])


@pytest.mark.parametrize("name", TEST_MODELS)
def test_unknown_global_pool_is_refused(name):
    with pytest.raises(ValueError, match="global_pool"):
        mambaout.create_model(name, global_pool="max")
    model = mambaout.create_model(name)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, "max")

"""Dense backbones (`create_backbone`) for every family: shapes at odd sizes, the model's own intermediates as the
oracle (padding and cropping included), the simple feature pyramid, official classification weights, gradients.

Registry-wide tests run on every `*_test` variant, so a family registered later is covered without edits here.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d

import mambaout
from mambaout.checkpoints import CheckpointMismatchError
from mambaout.dense.backbone import DenseBackbone, create_backbone, dense_drop_path_rate
from mambaout.dense.simple_pyramid import SimpleFeaturePyramid
from mambaout.factory import is_plain
from mambaout.recipes import DenseSettings
from test_checkpoints import official_key
from test_vim import _official_state_dict as vim_official
from test_vmamba import to_official as vmamba_official

TEST_MODELS = mambaout.list_models("*_test")
ODD_SIZES = [(70, 100), (97, 45)]  # non-square, and not multiples of 16 or 32


pytestmark = pytest.mark.usefixtures("one_thread")


def _twins(name: str, **kwargs) -> tuple[torch.nn.Module, DenseBackbone]:
    """A classification model and a backbone made from the same seeded weights."""
    torch.manual_seed(0)
    model = mambaout.create_model(name).eval()
    torch.manual_seed(0)
    return model, create_backbone(name, **kwargs).eval()


@pytest.mark.parametrize("name", TEST_MODELS)
def test_maps_have_the_declared_channels_and_strides_at_any_size(name):
    backbone = create_backbone(name).eval()
    features = mambaout.create_model(name, features_only=True)
    assert backbone.strides == [4, 8, 16, 32]
    if backbone.plain:
        dim = features.feature_info.channels()[-1]
        assert backbone.out_channels == [dim // 4, dim // 2, dim, dim]  # ViTDet: each deconvolution halves
    else:
        assert backbone.out_channels == features.feature_info.channels()
        assert backbone.strides == features.feature_info.reduction()
    assert backbone.plain == is_plain(mambaout.create_model(name))
    for height, width in ODD_SIZES:
        with torch.no_grad():
            maps = backbone(torch.randn(2, 3, height, width))
        assert [tuple(m.shape) for m in maps] == [
            (2, c, math.ceil(height / s), math.ceil(width / s)) for c, s in zip(backbone.out_channels, backbone.strides)
        ]
        assert all(torch.isfinite(m).all() for m in maps)


@pytest.mark.parametrize("name", TEST_MODELS)
def test_maps_are_the_padded_models_intermediates_cropped_and_normalised(name):
    model, backbone = _twins(name, norm_outputs=False)
    _, normed = _twins(name)
    height, width = ODD_SIZES[0]
    x = torch.randn(1, 3, height, width)
    padded = F.pad(x, (0, 128 - width, 0, 96 - height))  # zeros to the next multiple of 32 (96 x 128)
    with torch.no_grad():
        maps, normed_maps = backbone(x), normed(x)
        if backbone.plain:
            # the last block through the model's final norm, then the pyramid
            last = model.forward_intermediates(padded, indices=1, norm=True, intermediates_only=True)[0]
            oracle = [None, None, last, F.max_pool2d(last, 2)]
        else:
            oracle = model.forward_intermediates(padded, intermediates_only=True)
    for feature, normed_feature, reference, stride in zip(maps, normed_maps, oracle, backbone.strides):
        if reference is not None:
            reference = reference[..., : math.ceil(height / stride), : math.ceil(width / stride)]
            torch.testing.assert_close(feature, reference, rtol=0, atol=0)
        # a fresh LayerNorm2d (unit weight, zero bias): mean 0, variance 1 over the channels at every position
        expected = F.layer_norm(feature.permute(0, 2, 3, 1), feature.shape[1:2], eps=1e-6).permute(0, 3, 1, 2)
        torch.testing.assert_close(normed_feature, expected, rtol=1e-5, atol=1e-5)


def test_plain_pyramid_is_vitdets():
    pyramid = SimpleFeaturePyramid(32, source_stride=16, strides=(4, 8, 16, 32))
    kinds = [[type(m).__name__ for m in level.modules()][1:] or [type(level).__name__] for level in pyramid.levels]
    assert kinds == [
        ["ConvTranspose2d", "LayerNorm2d", "GELU", "ConvTranspose2d"],
        ["ConvTranspose2d"],
        ["Identity"],
        ["MaxPool2d"],
    ]
    x = torch.randn(1, 32, 4, 6)
    out = pyramid(x)
    assert [tuple(t.shape) for t in out] == [(1, 8, 16, 24), (1, 16, 8, 12), (1, 32, 4, 6), (1, 32, 2, 3)]
    assert torch.equal(out[2], x) and torch.equal(out[3], F.max_pool2d(x, 2))
    # a stride-8 model (patch stride 8): one deconvolution for stride 4, max pooling by 2 and 4 above its stride
    fine = SimpleFeaturePyramid(32, source_stride=8, strides=(4, 8, 16, 32))
    assert fine.out_channels == [16, 32, 32, 32]
    assert [tuple(t.shape) for t in fine(x)] == [(1, 16, 8, 12), (1, 32, 4, 6), (1, 32, 2, 3), (1, 32, 1, 1)]
    with pytest.raises(ValueError, match="powers of two"):
        SimpleFeaturePyramid(32, source_stride=16, strides=(12,))


def test_overlapping_patches_keep_the_promised_sizes():
    """A Vim "+" model (16-pixel patches every 8 pixels: stride 8): one deconvolution, then two poolings."""
    backbone = create_backbone("vim_test", patch_stride=8).eval()
    assert backbone.strides == [4, 8, 16, 32] and backbone.out_channels == [16, 32, 32, 32]
    for height, width in ODD_SIZES:
        with torch.no_grad():
            maps = backbone(torch.randn(1, 3, height, width))
        assert [tuple(m.shape[-2:]) for m in maps] == [
            (math.ceil(height / s), math.ceil(width / s)) for s in backbone.strides
        ]


def test_plain_position_embedding_follows_the_input_size():
    """vim_test's embedding is for a 4x4 grid; a 96x160 input (6x10 patches) uses the resampled one."""
    model, backbone = _twins("vim_test", norm_outputs=False)
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        last = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)[0]
        assert torch.equal(backbone(x)[2], last)
    assert last.shape[-2:] == (6, 10)


# --- classification weights ------------------------------------------------------------------------------------


def _official_layout(family: str, state_dict: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """Our weights under the names the family's official release files use (DeiT's are timm's: ours)."""
    if family == "mambaout":
        return {official_key(k): v for k, v in state_dict.items()}
    if family == "vmamba":
        return vmamba_official(state_dict)
    if family == "vim":
        return vim_official(model)
    return dict(state_dict)  # vit, and families registered later: their own layout


@pytest.mark.parametrize("name", TEST_MODELS)
def test_official_classification_weights_load_with_the_head_dropped(name, tmp_path, caplog):
    family = mambaout.get_model_spec(name).family
    torch.manual_seed(1)
    model = mambaout.create_model(name, num_classes=7).eval()
    path = tmp_path / f"{name}_official.pth"
    torch.save({"model": _official_layout(family, model.state_dict(), model), "epoch": 300}, path)
    with caplog.at_level(logging.INFO, logger="mambaout"):
        backbone = create_backbone(name, checkpoint=path, norm_outputs=False).eval()
    said = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(said) == 1 and str(path) in said[0]
    ours = model.state_dict()
    body = backbone.body.state_dict()
    head = sorted(set(ours) - set(body))
    assert head and all(k.startswith(model.pretrained_cfg["classifier"].split(".")[0]) for k in head)
    assert all(torch.equal(v, ours[k]) for k, v in body.items())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        if backbone.plain:
            oracle = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
            assert torch.equal(backbone(x)[2], oracle[0])
        else:
            oracle = model.forward_intermediates(x, intermediates_only=True)
            assert all(torch.equal(a, b) for a, b in zip(backbone(x), oracle))


def test_later_stages_are_dropped_with_the_head_and_checkpoints_that_do_not_fit_are_refused(tmp_path):
    model = mambaout.create_model("mambaout_test").eval()
    path = tmp_path / "w.pth"
    torch.save(model.state_dict(), path)
    backbone = create_backbone("mambaout_test", out_indices=(0, 1), checkpoint=path)
    assert backbone.strides == [4, 8] and len(backbone.body.stages) == 2
    torch.save(mambaout.create_model("vmamba2_test").state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match="does not fit"):
        create_backbone("mambaout_test", checkpoint=path)


# --- training ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TEST_MODELS)
def test_every_trainable_parameter_gets_a_gradient_and_checkpointing_changes_nothing(name):
    backbone = create_backbone(name, drop_path_rate=0.0).train()
    x = torch.randn(2, 3, *ODD_SIZES[1])
    maps = backbone(x)
    sum(m.square().mean() for m in maps).backward()
    missing = [n for n, p in backbone.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing[:5]}"
    grads = {n: p.grad.clone() for n, p in backbone.named_parameters()}
    backbone.zero_grad()
    backbone.set_grad_checkpointing(True)
    again = backbone(x)
    sum(m.square().mean() for m in again).backward()
    assert all(torch.equal(a, b) for a, b in zip(maps, again))
    for n, p in backbone.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-5, atol=1e-7, msg=n)
    names = dict(backbone.named_parameters())
    no_decay = backbone.no_weight_decay()
    assert all(n in names for n in no_decay)
    assert {f"body.{n}" for n in backbone.body.no_weight_decay() if f"body.{n}" in names} == no_decay


def test_norms_are_channels_first_layer_norms_and_can_be_left_out():
    assert all(isinstance(n, LayerNorm2d) for n in create_backbone("mambaout_test").norms)
    assert not any(
        p for n, p in create_backbone("mambaout_test", norm_outputs=False).named_parameters() if n.startswith("norms.")
    )


@pytest.mark.parametrize("out_indices", [(), (1, 0), (0, 4), (-1,)])
def test_bad_out_indices_are_refused(out_indices):
    with pytest.raises(ValueError, match="out_indices"):
        create_backbone("vim_test" if -1 in out_indices else "mambaout_test", out_indices=out_indices)


def test_every_real_model_declares_its_dense_drop_path_and_it_reaches_the_model():
    without = {name for name in mambaout.list_models() if mambaout.get_model_spec(name).dense == DenseSettings()}
    assert without == set(TEST_MODELS) | {"deit_test_causal"}  # every real model has one, with its source
    assert all(0.0 <= mambaout.get_model_spec(name).dense.drop_path < 1.0 for name in mambaout.list_models())
    assert dense_drop_path_rate("mambaout_tiny") == 0.3 and dense_drop_path_rate("vmamba2_base_s2l5") == 0.6
    assert dense_drop_path_rate("mambaout_test") == 0.1
    backbone = create_backbone("mambaout_test", drop_path_rate=0.3)
    rates = [m.drop_prob for m in backbone.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.3)

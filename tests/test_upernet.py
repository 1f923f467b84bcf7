"""UperNet: the head is mmseg's (checked against transformers' port of it), segmenters on every backbone family train
and infer, sliding-window inference agrees with whole-image inference where it must."""

import pytest
import torch
from torch import nn
from transformers.models.upernet.configuration_upernet import UperNetConfig
from transformers.models.upernet.modeling_upernet import UperNetFCNHead, UperNetHead

import mambaout
from mambaout.tasks.segmentation.inference import InferenceSettings, segment_probabilities, slide_logits
from mambaout.tasks.segmentation.task import segmentation_loss
from mambaout.tasks.segmentation.upernet import POOL_SCALES, FCNHead, Segmenter, UperHead

FAMILIES = mambaout.list_models("*_test")  # one tiny variant of every family, from the registry
SWIN_T_CHANNELS = [96, 192, 384, 768]  # MambaOut-T's and VMamba-T's stage widths


pytestmark = pytest.mark.usefixtures("one_thread")


def _to_port(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our (mmseg's) parameter names -> transformers' port's names."""
    return {k.replace(".bn.", ".batch_norm.").replace("conv_seg.", "classifier."): v for k, v in state_dict.items()}


def _randomize_norms(module: nn.Module, generator: torch.Generator) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.1)


def test_defaults_are_mmseg_upernet_as_transformers_ports_it():
    config = UperNetConfig()
    head = UperHead(SWIN_T_CHANNELS, 150)
    aux = FCNHead(SWIN_T_CHANNELS[2], 150)
    assert tuple(config.pool_scales) == POOL_SCALES == (1, 2, 3, 6)
    assert head.fpn_bottleneck.conv.out_channels == config.hidden_size == 512
    assert aux.convs[0].conv.out_channels == config.auxiliary_channels == 256
    assert len(aux.convs) == config.auxiliary_num_convs == 1 and config.auxiliary_concat_input is False
    assert aux.convs[0].conv.kernel_size == (3, 3) and aux.in_index == 2
    assert head.dropout.p == aux.dropout.p == 0.1 and isinstance(head.dropout, nn.Dropout2d)


@pytest.mark.parametrize("training", [False, True])
def test_heads_equal_the_transformers_port_of_mmseg_with_the_same_weights(training):
    generator = torch.Generator().manual_seed(0)
    config = UperNetConfig(num_labels=150)
    ours = UperHead(SWIN_T_CHANNELS, 150, dropout=0.0)
    ours_aux = FCNHead(SWIN_T_CHANNELS[2], 150, dropout=0.0)
    port, port_aux = UperNetHead(config, SWIN_T_CHANNELS), UperNetFCNHead(config, SWIN_T_CHANNELS)
    for mine, theirs in ((ours, port), (ours_aux, port_aux)):
        _randomize_norms(mine, generator)
        converted = _to_port(mine.state_dict())
        assert converted.keys() == theirs.state_dict().keys()
        theirs.load_state_dict(converted, strict=True)
        mine.train(training), theirs.train(training)
    # a 64x96 input's maps at strides 4..32: odd sizes exercise every resize
    features = [torch.randn(2, c, 16 // 2**i + 1, 24 // 2**i + 1, generator=generator)
                for i, c in enumerate(SWIN_T_CHANNELS)]
    torch.testing.assert_close(ours(features), port(features), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours_aux(features), port_aux(features), rtol=1e-4, atol=1e-5)


def _segmenter(name: str) -> Segmenter:
    return mambaout.create_segmenter(name, num_classes=5, channels=16, aux_channels=8)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_segmenter_trains_and_evaluates_on_every_family(name):
    model = _segmenter(name)
    images = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 5, (2, 64, 64))
    labels[:, :4] = 255  # ignored rows
    logits, aux = model(images, with_aux=True)
    assert logits.shape == aux.shape == (2, 5, 64, 64)
    loss = segmentation_loss(logits, labels) + 0.4 * segmentation_loss(aux, labels)
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, f"no gradient reaches {missing[:5]}"
    assert model.no_weight_decay() <= {n for n, _ in model.named_parameters()}

    model.eval()
    image = torch.randn(1, 3, 48, 80)
    for mode in ("whole", "slide"):
        settings = InferenceSettings(mode, img_scale=(80, 48), crop_size=32, stride=21)
        probs = segment_probabilities(model, image, settings)
        assert probs.shape == (1, 5, 48, 80)
        torch.testing.assert_close(probs.sum(1), torch.ones(1, 48, 80))


@pytest.mark.parametrize("name", ["mambaout_test", "vim_test"])
def test_sliding_window_on_an_image_of_one_window_equals_whole_image_inference(name):
    model = _segmenter(name).eval()
    image = torch.randn(1, 3, 64, 64)
    whole = InferenceSettings("whole", img_scale=(64, 64), crop_size=64, stride=43)
    slide = InferenceSettings("slide", img_scale=(64, 64), crop_size=64, stride=43)
    with torch.no_grad():
        torch.testing.assert_close(slide_logits(model, image, 64, 43), model(image), rtol=0, atol=0)
    torch.testing.assert_close(segment_probabilities(model, image, slide), segment_probabilities(model, image, whole))


class PixelwiseModel(nn.Module):
    """Each output pixel depends on its input pixel only: windows overlap with identical values."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[int, ...]] = []
        self.proj = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return self.proj(x)


def test_sliding_windows_cover_the_image_as_mmseg_places_them_and_average_overlaps():
    model = PixelwiseModel()
    image = torch.randn(1, 3, 100, 130)
    with torch.no_grad():
        logits = slide_logits(model, image, crop_size=64, stride=42, window_batch=2)
        torch.testing.assert_close(logits, model.proj(image), rtol=1e-5, atol=1e-6)
    # mmseg: rows = max(100 - 64 + 42 - 1, 0) // 42 + 1 = 2, cols = max(130 - 64 + 41, 0) // 42 + 1 = 3
    windows = sum(shape[0] for shape in model.calls)
    assert windows == 6 and all(shape[-2:] == (64, 64) for shape in model.calls)


def test_rectangular_windows_and_strides_are_placed_per_axis():
    model = PixelwiseModel()
    image = torch.randn(1, 3, 100, 130)
    with torch.no_grad():
        logits = slide_logits(model, image, crop_size=(48, 64), stride=(32, 42), window_batch=3)
        torch.testing.assert_close(logits, model.proj(image), rtol=1e-5, atol=1e-6)
    # rows = max(100 - 48 + 31, 0) // 32 + 1 = 3, cols = max(130 - 64 + 41, 0) // 42 + 1 = 3
    assert sum(shape[0] for shape in model.calls) == 9
    assert all(shape[-2:] == (48, 64) for shape in model.calls)


def test_whole_mode_resizes_to_the_test_scale_keeping_the_aspect_ratio():
    model = PixelwiseModel()
    image = torch.randn(1, 3, 100, 300)
    segment_probabilities(model, image, InferenceSettings("whole", img_scale=(2048, 512), ratios=(0.5, 1.0),
                                                          flip=True))
    # (2048, 512) x 0.5 = (1024, 256): 300x100 -> 768x256; x 1.0: 1536x512; each with and without flip
    assert model.calls == [(1, 3, 256, 768)] * 2 + [(1, 3, 512, 1536)] * 2


def test_upernet_mambaout_tiny_has_the_papers_parameter_count():
    model = mambaout.create_segmenter("mambaout_tiny", num_classes=150)  # ADE20K
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == 54  # the paper's Table 4: 54M

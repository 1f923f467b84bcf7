"""create_detector: torchvision's Mask R-CNN over every family's backbone trains (finite losses, a gradient for every
backbone parameter) and predicts; the 1x recipe's defaults and lr schedule; no weight decay on position embeddings."""

import math

import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

import mambaout
from mambaout.registry import get_model_spec
from mambaout.tasks.detection.model import create_detector
from mambaout.tasks.detection.task import DetectionConfig, multistep_warmup_scheduler

# the smallest heads and RoI counts that still exercise every part of the detector
TINY = dict(min_size=64, max_size=96, fpn_channels=16, box_head_dim=32, mask_head_channels=16,
            rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=32, rpn_pre_nms_top_n_test=50,
            rpn_post_nms_top_n_test=16, rpn_batch_size_per_image=32, box_batch_size_per_image=16,
            box_detections_per_img=8, box_score_thresh=0.0)


def _one_test_variant_per_family() -> list[str]:
    chosen: dict[str, str] = {}
    for name in mambaout.list_models("*_test"):
        chosen.setdefault(get_model_spec(name).family, name)
    return sorted(chosen.values())


def _targets(height: int, width: int) -> list[dict[str, torch.Tensor]]:
    boxes = torch.tensor([[8.0, 10.0, 40.0, 44.0], [30.0, 5.0, 60.0, 30.0]])
    masks = torch.zeros(2, height, width, dtype=torch.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
        mask[y1:y2, x1:x2] = 1
    return [{"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks}]


@pytest.mark.parametrize("backbone", _one_test_variant_per_family())
def test_a_detector_on_every_family_trains_and_predicts(backbone):
    torch.manual_seed(0)
    model = create_detector(backbone, num_classes=2, **TINY)
    height, width = 56, 72  # not a multiple of 32: the transform pads, the backbone pads to its own multiple
    images = [torch.rand(3, height, width)]
    losses = model(images, _targets(height, width))
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    body = model.backbone.body
    no_gradient = [n for n, p in body.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not no_gradient, f"backbone parameters without a gradient: {no_gradient[:5]}"
    assert all(p.grad is not None for p in model.parameters())  # DDP's find_unused_parameters=False holds

    model.eval()
    with torch.no_grad():
        (output,) = model(images)
    count = len(output["boxes"])
    assert 0 < count <= TINY["box_detections_per_img"]
    assert output["masks"].shape == (count, 1, height, width)  # pasted back into the original image
    assert output["labels"].min() >= 1 and output["labels"].max() <= 2  # background 0 is never a detection


def test_heads_are_torchvisions_and_normalisation_is_the_backbones():
    detector = create_detector("mambaout_test", num_classes=80)
    reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=81)
    ours = {k: v.shape for k, v in detector.state_dict().items() if not k.startswith("backbone.body")}
    theirs = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith("backbone.body")}
    assert ours.keys() == theirs.keys()  # FPN, RPN, box and mask heads: the same modules
    for name in (k for k in ours if not k.startswith("backbone.fpn.inner_blocks")):
        assert ours[name] == theirs[name], name  # and shapes, but for the FPN's inputs: the backbone's channels
    inputs = [ours[f"backbone.fpn.inner_blocks.{i}.0.weight"][1] for i in range(4)]
    assert inputs == detector.backbone.body.out_channels
    cfg = detector.backbone.body.pretrained_cfg
    assert detector.transform.image_mean == list(cfg["mean"]) and detector.transform.image_std == list(cfg["std"])
    assert (detector.transform.min_size, detector.transform.max_size) == ((800,), 1333)
    assert detector.transform.size_divisible % 32 == 0


def test_position_embeddings_get_no_weight_decay():
    detector = create_detector("deit_test", num_classes=3, **TINY)
    names = detector.no_weight_decay()
    parameters = dict(detector.named_parameters())
    assert names and names <= set(parameters)
    assert any(name.endswith("pos_embed") for name in names)


def test_recipe_defaults_are_the_papers_mask_rcnn_1x():
    config = DetectionConfig(data_dir="x")
    assert (config.opt, config.lr_base, config.weight_decay, config.epochs) == ("adamw", 1e-4, 0.05, 12)
    assert config.base_batch_size == 16 and config.resolved_lr(8) == pytest.approx(1e-4)  # 8 processes x 2 images
    assert (list(config.lr_steps), config.lr_decay, config.warmup_iters, config.warmup_ratio) == ([8, 11], 0.1, 1000,
                                                                                                    0.001)
    assert (list(config.img_scale), config.hflip, config.eval_metric) == ([1333, 800], 0.5, "bbox_mAP")
    assert config.resolved_drop_path() == 0.3  # mambaout_tiny's dense setting
    assert DetectionConfig(data_dir="x", backbone="mambaout_base").resolved_drop_path() == 0.6
    assert DetectionConfig(data_dir="x", drop_path=0.05).resolved_drop_path() == 0.05


def test_schedule_is_mmcvs_step_with_linear_warmup():
    steps_per_epoch = 500
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    scheduler = multistep_warmup_scheduler(optimizer, steps_per_epoch, [8, 11], 0.1, 1000, 0.001)
    lrs = {}
    for t in (0, 500, 1000, 8 * 500 - 1, 8 * 500, 11 * 500 - 1, 11 * 500, 12 * 500):
        scheduler.step_update(t)
        lrs[t] = optimizer.param_groups[0]["lr"]
    assert lrs[0] == pytest.approx(1e-7)
    assert lrs[500] == pytest.approx(1e-4 * (1 - 0.5 * (1 - 0.001)))  # mmcv: base * (1 - (1 - t / W)(1 - ratio))
    assert lrs[1000] == pytest.approx(1e-4) and lrs[8 * 500 - 1] == pytest.approx(1e-4)
    assert lrs[8 * 500] == pytest.approx(1e-5)  # the first update of epoch 8 (0-based) runs at 0.1x
    assert lrs[11 * 500 - 1] == pytest.approx(1e-5) and lrs[11 * 500] == pytest.approx(1e-6)
    assert lrs[12 * 500] == pytest.approx(1e-6)

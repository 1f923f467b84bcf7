"""The fused Gated CNN training op (ops/gated_conv.py) and its numba weight gradient against autograd's plain ops."""

import pytest
import torch
import torch.nn.functional as F

import mambaout
from mambaout.models.mambaout import GatedCNNBlock
from mambaout.ops._depthwise_numba import depthwise_weight_grad
from mambaout.tasks.classification.config import TrainConfig
from mambaout.tasks.classification.task import ClassificationTask


def _blocks(model: torch.nn.Module) -> list[GatedCNNBlock]:
    return [m for m in model.modules() if isinstance(m, GatedCNNBlock)]


@pytest.mark.parametrize(
    ("images", "height", "width", "channels", "kernel"),
    [(2, 9, 11, 5, 7), (1, 3, 2, 4, 7), (3, 8, 8, 16, 3), (1, 1, 13, 3, 5)],  # maps smaller than the kernel too
)
def test_numba_weight_gradient_equals_aten_in_float64(images, height, width, channels, kernel):
    torch.manual_seed(0)
    x = torch.randn(images, channels, height, width, dtype=torch.float64)
    grad = torch.randn(images, channels, height, width, dtype=torch.float64)
    weight = torch.randn(channels, 1, kernel, kernel, dtype=torch.float64)
    _, expected, _ = torch.ops.aten.convolution_backward(
        grad, x, weight, None, [1, 1], [kernel // 2] * 2, [1, 1], False, [0, 0], channels, [False, True, False]
    )
    ours = depthwise_weight_grad(x.permute(0, 2, 3, 1), grad.permute(0, 2, 3, 1), kernel)
    assert ours.dtype == torch.float64 and ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


def test_numba_weight_gradient_of_bf16_inputs_is_accumulated_in_float32():
    torch.manual_seed(1)
    x = torch.randn(2, 14, 14, 24).bfloat16()
    grad = torch.randn(2, 14, 14, 24).bfloat16()
    weight = torch.zeros(24, 1, 7, 7, dtype=torch.float64)
    _, exact, _ = torch.ops.aten.convolution_backward(
        grad.double().permute(0, 3, 1, 2), x.double().permute(0, 3, 1, 2), weight, None,
        [1, 1], [3, 3], [1, 1], False, [0, 0], 24, [False, True, False],
    )
    ours = depthwise_weight_grad(x, grad, 7)
    assert ours.dtype == torch.float32
    # the inputs are exact in float32, so only float32 accumulation error remains (sums of 392 products)
    torch.testing.assert_close(ours.double(), exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("act", "conv_ratio"), [(torch.nn.GELU, 1.0), (torch.nn.SiLU, 0.75), (torch.nn.GELU, 1.25)])
def test_fused_block_has_the_plain_blocks_outputs_and_gradients_in_float64(act, conv_ratio):
    torch.manual_seed(0)
    block = GatedCNNBlock(16, expansion_ratio=3.0, conv_ratio=conv_ratio, act=act).double()
    x = torch.randn(2, 9, 6, 16, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 9, 6, 16, dtype=torch.float64)

    def run(fused: bool):
        block.fused_training = fused
        block.zero_grad(set_to_none=True)
        x.grad = None
        y = block(x)
        (y * weights).sum().backward()
        return y.detach(), x.grad, {name: p.grad for name, p in block.named_parameters()}

    y_plain, gx_plain, grads_plain = run(False)
    y_fused, gx_fused, grads_fused = run(True)
    torch.testing.assert_close(y_fused, y_plain, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx_fused, gx_plain, rtol=1e-10, atol=1e-12)
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_fused[name], grad, rtol=1e-10, atol=1e-12, msg=name)


def test_training_runs_the_fused_op_and_inference_does_not():
    block = GatedCNNBlock(8)
    x = torch.randn(1, 5, 5, 8, requires_grad=True)
    assert type(block.mix(x).grad_fn).__name__ == "_GatedDepthwiseBackward"
    with torch.no_grad():
        assert block.mix(x).grad_fn is None
    block.fused_training = False
    assert type(block.mix(x).grad_fn).__name__ != "_GatedDepthwiseBackward"


@pytest.mark.parametrize(("amp", "rtol"), [(None, 1e-4), (torch.bfloat16, 3e-2)])
def test_twenty_training_steps_follow_the_plain_models_loss_curve(amp, rtol):
    """fp32: both runs agree to float32 rounding; bf16 autocast: to bf16's (the fused op's weight gradient is
    accumulated in float32, aten's is rounded to bf16)."""
    torch.manual_seed(0)
    images = torch.randn(4, 3, 64, 64)
    labels = torch.tensor([0, 1, 2, 3])

    def curve(fused: bool) -> list[float]:
        torch.manual_seed(1)
        model = mambaout.create_model("mambaout_test", num_classes=4)
        for block in _blocks(model):
            block.fused_training = fused
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
        losses = []
        for _ in range(20):
            with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
                loss = F.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return losses

    plain, fused = curve(False), curve(True)
    assert plain[-1] < plain[0] * 0.5  # the runs learn: a curve worth comparing
    torch.testing.assert_close(torch.tensor(fused), torch.tensor(plain), rtol=rtol, atol=rtol * 1e-2)


def test_the_engine_steps_adamw_with_torchs_fused_kernel():
    task = ClassificationTask(TrainConfig(model="mambaout_test", device="cpu", num_classes=4))
    optimizer = task.optimizer(mambaout.create_model("mambaout_test", num_classes=4), lr=1e-3)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert all(group["fused"] for group in optimizer.param_groups)

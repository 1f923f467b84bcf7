"""The Gated CNN block's token mixer as one autograd function, for training.

From fc1's output h = (gate, identity, conv) on channels-last (N, H, W, 2 * hidden) it computes
act(gate) * concat(identity, dwconv(conv)), the part of a MambaOut block between fc1 and fc2. As separate autograd
ops this costs a concatenation in the forward and, in the backward, three separate gradients of h's slices that
autograd adds into zero-filled copies of h; here the backward writes the gate, identity and conv gradients straight
into their slices of one tensor shaped like h. The depthwise conv's weight gradient on CPU comes from
`_depthwise_numba` (aten's takes 6-25x its forward there); elsewhere from aten.

Under autocast the conv runs in h's dtype (bf16), as autocast would run it, and its weight gradient is returned in
the weight's own dtype (float32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._depthwise_numba import depthwise_weight_grad

ACTIVATIONS = ("gelu", "silu")


def _activate(x: Tensor, activation: str) -> Tensor:
    return F.gelu(x) if activation == "gelu" else F.silu(x)


def _activation_backward(grad: Tensor, x: Tensor, activation: str, out: Tensor) -> None:
    if activation == "gelu":
        torch.ops.aten.gelu_backward.grad_input(grad, x, approximate="none", grad_input=out)
    else:
        torch.ops.aten.silu_backward.grad_input(grad, x, grad_input=out)


def _conv_backward(grad: Tensor, x: Tensor, weight: Tensor, mask: list[bool]) -> tuple[Tensor | None, ...]:
    """aten's gradients of the depthwise conv (channels-last grad and x, NHWC) for the outputs `mask` asks for."""
    kernel = weight.shape[-1]
    return torch.ops.aten.convolution_backward(
        grad.permute(0, 3, 1, 2), x.permute(0, 3, 1, 2), weight, None,
        [1, 1], [kernel // 2] * 2, [1, 1], False, [0, 0], weight.shape[0], [*mask, False],
    )


class _GatedDepthwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor | None, split: tuple[int, int, int], activation: str):
        hidden, identity_channels, conv_channels = split
        kernel = weight.shape[-1]
        conv_in = h[..., hidden + identity_channels :].permute(0, 3, 1, 2)
        conv_weight = weight.to(h.dtype)
        conv_bias = None if bias is None else bias.to(h.dtype)
        conv = F.conv2d(conv_in, conv_weight, conv_bias, padding=kernel // 2, groups=conv_channels).permute(0, 2, 3, 1)
        gate = _activate(h[..., :hidden], activation)
        out = torch.empty_like(gate)
        torch.mul(gate[..., :identity_channels], h[..., hidden : hidden + identity_channels],
                  out=out[..., :identity_channels])
        torch.mul(gate[..., identity_channels:], conv, out=out[..., identity_channels:])
        # what autograd would keep for these ops (h, the activated gate, the conv output), minus the concatenation
        ctx.save_for_backward(h, conv_weight, gate, conv)
        ctx.split, ctx.activation = split, activation
        ctx.weight_dtype, ctx.has_bias = weight.dtype, bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        h, conv_weight, gate, conv = ctx.saved_tensors
        hidden, identity_channels, _ = ctx.split
        grad_out = grad_out.contiguous()
        identity = h[..., hidden : hidden + identity_channels]
        conv_in = h[..., hidden + identity_channels :]
        grad_h = torch.empty_like(h)

        grad_gate = torch.empty_like(gate)
        torch.mul(grad_out[..., :identity_channels], identity, out=grad_gate[..., :identity_channels])
        torch.mul(grad_out[..., identity_channels:], conv, out=grad_gate[..., identity_channels:])
        _activation_backward(grad_gate, h[..., :hidden], ctx.activation, out=grad_h[..., :hidden])
        torch.mul(grad_out[..., :identity_channels], gate[..., :identity_channels],
                  out=grad_h[..., hidden : hidden + identity_channels])
        grad_conv = grad_out[..., identity_channels:] * gate[..., identity_channels:]

        grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_in, _, _ = _conv_backward(grad_conv, conv_in, conv_weight, [True, False])
            grad_h[..., hidden + identity_channels :] = grad_in.permute(0, 2, 3, 1)
        if ctx.needs_input_grad[1]:
            if grad_conv.device.type == "cpu":
                grad_weight = depthwise_weight_grad(conv_in, grad_conv, conv_weight.shape[-1])
            else:
                _, grad_weight, _ = _conv_backward(grad_conv, conv_in, conv_weight, [False, True])
            grad_weight = grad_weight.to(ctx.weight_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            accumulate = torch.promote_types(grad_conv.dtype, torch.float32)
            grad_bias = grad_conv.sum((0, 1, 2), dtype=accumulate).to(ctx.weight_dtype)
        return grad_h, grad_weight, grad_bias, None, None


def gated_depthwise(
    h: Tensor, weight: Tensor, bias: Tensor | None, split: tuple[int, int, int], activation: str = "gelu"
) -> Tensor:
    """act(gate) * concat(identity, depthwise_conv(conv)) of h = fc1's output split as `split` (gate, identity,
    conv channels), channels-last; `weight` (conv, 1, k, k) with odd k, stride 1, padding k // 2."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {ACTIVATIONS}")
    return _GatedDepthwise.apply(h, weight, bias, tuple(split), activation)

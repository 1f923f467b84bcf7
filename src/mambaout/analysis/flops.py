"""Parameters and MACs through torch's FlopCounterMode, on the meta device (no memory, any input size).

MACs are FLOPs / 2 (FlopCounterMode counts a multiply-accumulate as two FLOPs), the unit the papers'
tables use. Ops that register a FLOP formula (the selective scan) are counted like any matmul.
LayerNorm is counted as fvcore does (5 per element with affine, 4 without), because the official
tables were made with fvcore: without it MambaOut-Femto counts 1.148 GMACs instead of the official 1.156.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..errors import InputSizeError, check_input_size
from ..factory import create_model

aten = torch.ops.aten


def _layer_norm_flops(input_shape, normalized_shape, weight_shape=None, bias_shape=None, *args, **kwargs) -> int:
    per_element = 5 if weight_shape is not None else 4
    return 2 * per_element * math.prod(input_shape)  # in FLOPs, i.e. twice fvcore's MACs


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# keyed by overload packet, as torch does. torch registers SDPA's CUDA kernels but not the one CPU attention
# dispatches to (`_scaled_dot_product_flash_attention_for_cpu`), which would count DeiT's attention as free.
EXTRA_FORMULAS = {
    aten.native_layer_norm: _layer_norm_flops,
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
}


@dataclass(frozen=True)
class ModuleCost:
    name: str
    params: int
    macs: int


@dataclass(frozen=True)
class FlopReport:
    model: str
    input_shape: tuple[int, ...]
    params: int
    macs: int
    by_module: list[ModuleCost] = field(default_factory=list)

    def format(self) -> str:
        b, c, h, w = self.input_shape
        width = max(len(row.name) for row in self.by_module) if self.by_module else 6
        lines = [
            f"{self.model} at {c}x{h}x{w}, batch {b}",
            f"  {'module':<{width}}  {'params':>12}  {'GMACs':>9}  {'share':>6}",
        ]
        for row in self.by_module:
            share = row.macs / self.macs if self.macs else 0.0
            lines.append(f"  {row.name:<{width}}  {row.params:>12,}  {row.macs / 1e9:>9.4f}  {share:>6.1%}")
        lines.append(f"  {'total':<{width}}  {self.params:>12,}  {self.macs / 1e9:>9.4f}")
        lines.append(f"params: {self.params / 1e6:.1f}M   MACs: {self.macs / 1e9:.1f}G ({self.macs / 1e9:.3f} GMACs)")
        return "\n".join(lines)


def _breakdown_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level children, with containers of stages/blocks opened one level."""
    rows = []
    for name, child in model.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 0:
            rows += [(f"{name}.{sub}", grandchild) for sub, grandchild in child.named_children()]
        else:
            rows.append((name, child))
    return rows


def count_macs(model: nn.Module, input_shape: tuple[int, ...], name: str | None = None) -> FlopReport:
    """Count parameters and MACs of one forward pass of `model` (on whatever device it lives)."""
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS)
    was_training = model.training
    model.eval()
    try:
        with counter, torch.no_grad():
            model(torch.empty(input_shape, device=device))
    except (RuntimeError, ValueError) as e:
        raise InputSizeError(
            f"{name or type(model).__name__} cannot take an input of shape {tuple(input_shape)}: "
            f"{str(e).splitlines()[0]}"
        ) from e
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__

    def macs_of(path: str) -> int:
        return sum(counts.get(path, {}).values()) // 2

    rows = [
        ModuleCost(sub, sum(p.numel() for p in module.parameters()), macs_of(f"{root}.{sub}"))
        for sub, module in _breakdown_modules(model)
    ]
    params = sum(p.numel() for p in model.parameters())
    return FlopReport(name or root, tuple(input_shape), params, counter.get_total_flops() // 2, rows)


def model_flops(name: str, size: tuple[int, int] = (224, 224), batch: int = 1, **model_kwargs) -> FlopReport:
    """Params and MACs of a registered model at an input size, counted without allocating memory."""
    height, width = size
    check_input_size(height, width, batch)
    with torch.device("meta"):
        model = create_model(name, **model_kwargs)
    in_chans = model.pretrained_cfg["input_size"][0]
    return count_macs(model, (batch, in_chans, height, width), name=name)

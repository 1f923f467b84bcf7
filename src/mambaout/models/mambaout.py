"""MambaOut: a 4-stage hierarchy of Gated CNN blocks (Yu & Wang, 2024), in timm's state_dict layout.

The block is a Mamba block without the SSM: LayerNorm -> Linear to 2x hidden, split into gate,
identity and conv parts, 7x7 depthwise conv on the conv part, act(gate) * concat(identity, conv)
-> Linear, residual. Tensors stay channels-last (NHWC) between blocks, as in the official code.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from timm.layers import DropPath, LayerNorm, LayerScale, calculate_drop_path_rates, trunc_normal_
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices
from torch import nn

from ..checkpoints.layouts import convert_mambaout
from ..ops.gated_conv import gated_depthwise
from ..recipes import DenseSettings, Fallback
from ..recipes.mambaout import DENSE, RECIPES
from ..registry import Published, hub_weights, register_variants
from ._pooling import check_global_pool
from ._stages import prune_stages

ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "silu": nn.SiLU}
_ACTIVATION_NAMES = {layer: name for name, layer in ACTIVATIONS.items()}
DOWNSAMPLE_ORDERS = ("conv_norm", "norm_conv")
# timm's pooling choices for this head: "avg" (the released models) or "" (none: the head runs on every position)
GLOBAL_POOLS = ("avg", "")


def _nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def _activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class Stem(nn.Module):
    """Two 3x3 stride-2 convs (stride 4 in all), NCHW in, NHWC out."""

    def __init__(self, in_chans: int, out_dim: int, act: type[nn.Module], mid_norm: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, out_dim // 2, kernel_size=3, stride=2, padding=1)
        self.norm1 = LayerNorm(out_dim // 2) if mid_norm else None
        self.act = act()
        self.conv2 = nn.Conv2d(out_dim // 2, out_dim, kernel_size=3, stride=2, padding=1)
        self.norm2 = LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if self.norm1 is not None:
            x = _nchw(self.norm1(_nhwc(x)))
        x = self.conv2(self.act(x))
        return self.norm2(_nhwc(x))


class Downsample(nn.Module):
    """3x3 stride-2 conv with a LayerNorm after it (official) or before it (timm's `_rw` variants)."""

    def __init__(self, in_dim: int, out_dim: int, order: str = "conv_norm"):
        super().__init__()
        if order not in DOWNSAMPLE_ORDERS:
            raise ValueError(f"unknown downsample order {order!r}; choose from {DOWNSAMPLE_ORDERS}")
        self.norm_first = order == "norm_conv"
        # Registered in data-flow order so the state_dict's key order is timm's too.
        if self.norm_first:
            self.norm = LayerNorm(in_dim)
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=3, stride=2, padding=1)
        if not self.norm_first:
            self.norm = LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            return _nhwc(self.conv(_nchw(self.norm(x))))
        return self.norm(_nhwc(self.conv(_nchw(x))))


class GatedCNNBlock(nn.Module):
    # eager training runs fc1's output through one autograd op (ops/gated_conv.py); subclasses that change the
    # projection turn it off
    fused_training = True

    def __init__(
        self,
        dim: int,
        expansion_ratio: float = 8 / 3,
        kernel_size: int = 7,
        conv_ratio: float = 1.0,
        act: type[nn.Module] = nn.GELU,
        ls_init_value: float | None = None,
        drop_path: float = 0.0,
    ):
        super().__init__()
        hidden = int(expansion_ratio * dim)
        conv_channels = int(conv_ratio * dim)
        self.norm = LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.act = act()
        self.activation = _ACTIVATION_NAMES.get(act)  # for the fused training op; None: a custom act, unfused
        self.split_sizes = (hidden, hidden - conv_channels, conv_channels)  # gate, identity, conv
        self.conv = nn.Conv2d(conv_channels, conv_channels, kernel_size, padding=kernel_size // 2, groups=conv_channels)
        self.fc2 = nn.Linear(hidden, dim)
        self.ls = LayerScale(dim, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.fc2(self.mix(self.norm(x)))
        return shortcut + self.drop_path(self.ls(x))

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """act(gate) * concat(identity, dwconv(conv)) of fc1(x): the block between its norm and fc2."""
        if (self.fused_training and self.activation is not None and torch.is_grad_enabled()
                and not torch.compiler.is_compiling()):
            # eager training: fewer copies in the backward, and on CPU a weight gradient of the depthwise conv that
            # is several times faster than aten's (benchmarks/training_cpu.py)
            return gated_depthwise(self.fc1(x), self.conv.weight, self.conv.bias, self.split_sizes, self.activation)
        gate, identity, conv = self.project(x)
        conv = _nhwc(self.conv(_nchw(conv)))
        return self._gated(self.act(gate), identity, conv)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """fc1, split into the gate, identity and conv parts."""
        return torch.split(self.fc1(x), self.split_sizes, dim=-1)

    @staticmethod
    def _gated(gate: torch.Tensor, identity: torch.Tensor, conv: torch.Tensor) -> torch.Tensor:
        """gate * concat(identity, conv), in the form that is fastest where it runs."""
        if torch.is_grad_enabled():
            # training: concatenating first keeps the backward free of zero-filled gradients of gate's slices
            return gate * torch.cat((identity, conv), dim=-1)
        split = identity.shape[-1]
        if torch.compiler.is_compiling():
            # inductor computes each product straight into its slice of the result
            return torch.cat((gate[..., :split] * identity, gate[..., split:] * conv), dim=-1)
        # eager inference: both products into one buffer, skipping the copy of the block's widest tensor that
        # concatenating first costs (about a tenth of the block's CPU time; out= has no autograd)
        out = torch.empty_like(gate)
        torch.mul(gate[..., :split], identity, out=out[..., :split])
        torch.mul(gate[..., split:], conv, out=out[..., split:])
        return out


class SplitProjectionBlock(GatedCNNBlock):
    """A trained block for inference with fc1 as two Linears, (gate, identity) and conv: the same products, but the
    depthwise conv reads a dense tensor instead of a strided slice that it would first copy (about 5% of MambaOut-T's
    compiled bf16 time on CPU). Shares the block's other modules; its state_dict keys are not the official ones."""

    fused_training = False

    def __init__(self, block: GatedCNNBlock):
        nn.Module.__init__(self)
        self.split_sizes = block.split_sizes
        self.norm, self.act, self.conv, self.fc2 = block.norm, block.act, block.conv, block.fc2
        self.ls, self.drop_path = block.ls, block.drop_path
        rows = block.split_sizes[0] + block.split_sizes[1]
        self.fc1_gate_identity = _rows_of(block.fc1, slice(0, rows))
        self.fc1_conv = _rows_of(block.fc1, slice(rows, None))

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        gate, identity = torch.split(self.fc1_gate_identity(x), self.split_sizes[:2], dim=-1)
        return gate, identity, self.fc1_conv(x)


def _rows_of(linear: nn.Linear, rows: slice) -> nn.Linear:
    """A Linear computing `rows` of `linear`'s outputs."""
    weight = linear.weight[rows]
    part = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None)
    part.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        part.weight.copy_(weight)
        if linear.bias is not None:
            part.bias.copy_(linear.bias[rows])
    return part.train(linear.training)


class MambaOutStage(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, depth: int, downsample: str | None, **block_kwargs):
        super().__init__()
        drop_paths = block_kwargs.pop("drop_paths")
        self.downsample = Downsample(in_dim, out_dim, downsample) if downsample else nn.Identity()
        self.blocks = nn.Sequential(
            *(GatedCNNBlock(out_dim, drop_path=drop_paths[i], **block_kwargs) for i in range(depth))
        )
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class MlpHead(nn.Module):
    """Mean pool -> LayerNorm -> Linear -> act -> [LayerNorm] -> dropout -> Linear classifier.

    The official head has the LayerNorm after the hidden layer; timm's `_rw` variants drop it. The head's
    activation is GELU in every released model, also where the blocks use SiLU. With `global_pool=""` the
    pooling is skipped and the rest runs on every position (timm's MambaOut head does the same).
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        mlp_ratio: float = 4.0,
        hidden_norm: bool = True,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ):
        super().__init__()
        self.global_pool = check_global_pool(global_pool, GLOBAL_POOLS)
        hidden = int(mlp_ratio * in_dim)
        self.norm = LayerNorm(in_dim)
        layers = [("fc", nn.Linear(in_dim, hidden)), ("act", nn.GELU())]
        if hidden_norm:
            layers.append(("norm", LayerNorm(hidden)))
        self.pre_logits = nn.Sequential(OrderedDict(layers))
        self.head_dropout = nn.Dropout(drop_rate)
        self.num_features = hidden
        self.fc = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean((1, 2))
        x = self.head_dropout(self.pre_logits(self.norm(x)))
        return x if pre_logits else self.fc(x)


class MambaOut(nn.Module):
    """MambaOut backbone + MLP classifier with timm's model API (features are NHWC)."""

    def __init__(
        self,
        depths: tuple[int, ...] = (3, 3, 9, 3),
        dims: tuple[int, ...] = (96, 192, 384, 576),
        *,
        in_chans: int = 3,
        num_classes: int = 1000,
        expansion_ratio: float = 8 / 3,
        kernel_size: int = 7,
        conv_ratio: float = 1.0,
        act: str = "gelu",
        stem_mid_norm: bool = True,
        downsample: str = "conv_norm",
        ls_init_value: float | None = None,
        head_hidden_norm: bool = True,
        global_pool: str = "avg",
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError(f"depths {depths} and dims {dims} must have the same length")
        act_layer = _activation(act)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.output_fmt = "NHWC"
        self.stem = Stem(in_chans, dims[0], act_layer, mid_norm=stem_mid_norm)

        drop_paths = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages, self.feature_info, prev_dim, stride = [], [], dims[0], 4
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            if i > 0:
                stride *= 2
            stages.append(
                MambaOutStage(
                    prev_dim,
                    dim,
                    depth,
                    downsample=downsample if i > 0 else None,
                    expansion_ratio=expansion_ratio,
                    kernel_size=kernel_size,
                    conv_ratio=conv_ratio,
                    act=act_layer,
                    ls_init_value=ls_init_value,
                    drop_paths=drop_paths[i],
                )
            )
            self.feature_info.append(dict(num_chs=dim, reduction=stride, module=f"stages.{i}"))
            prev_dim = dim
        self.stages = nn.Sequential(*stages)
        self.num_features = prev_dim
        self.head = MlpHead(
            prev_dim, num_classes, hidden_norm=head_hidden_norm, drop_rate=drop_rate, global_pool=global_pool
        )
        self.head_hidden_size = self.head.num_features
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """None: the official {'norm'} (yuweihao/MambaOut@9f2f234 models/mambaout.py:244-245) names no parameter."""
        # The official names are norm.weight/norm.bias, so timm's exact-name test never matches 'norm'; those are
        # 1-D and exempt anyway, as are all norms and biases here (rule "timm").
        return set()

    @torch.jit.ignore
    def split_projections(self) -> int:
        """Swap every GatedCNNBlock for its SplitProjectionBlock, in place (an exact simplification for inference,
        which `prepare_for_inference` applies to any module offering this method); return how many were swapped."""
        swapped = 0
        for parent in list(self.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is GatedCNNBlock:
                    setattr(parent, name, SplitProjectionBlock(child))
                    swapped += 1
        return swapped

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self.head.global_pool = check_global_pool(global_pool, GLOBAL_POOLS)
        self.num_classes = num_classes
        if num_classes > 0:
            self.head.fc = nn.Linear(self.head.num_features, num_classes, device=self.head.norm.weight.device)
            self._init_weights(self.head.fc)
        else:
            self.head.fc = nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (timm semantics: int = last n stages, None = all; `norm` has no effect here)."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.stages), indices)
        stages = self.stages[: last + 1] if stop_early else self.stages
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                intermediates.append(_nchw(x).contiguous() if output_fmt == "NCHW" else x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Keep only the stages up to the last of `indices` (and no head): what a feature extractor needs."""
        return prune_stages(self, indices, prune_head)


# name: (architecture, published numbers, release weights)
_OFFICIAL_URL = "https://github.com/yuweihao/MambaOut/releases/download/model/{}.pth"
_PAPER = "MambaOut paper Table 1 / yuweihao/MambaOut README"
_TIMM_CARD = "timm model card (huggingface.co/timm/{})"
_RW = dict(stem_mid_norm=False, downsample="norm_conv", ls_init_value=1e-6, head_hidden_norm=False)

VARIANTS: dict[str, tuple[dict, Published, dict]] = {
    "mambaout_femto": (
        dict(depths=(3, 3, 9, 3), dims=(48, 96, 192, 288)),
        Published(7.3, 1.2, 78.9, _PAPER),
        dict(**hub_weights("timm/mambaout_femto.in1k"), origin_url=_OFFICIAL_URL.format("mambaout_femto")),
    ),
    "mambaout_kobe": (
        dict(depths=(3, 3, 15, 3), dims=(48, 96, 192, 288)),
        Published(9.1, 1.5, 80.0, _PAPER),
        dict(**hub_weights("timm/mambaout_kobe.in1k"), origin_url=_OFFICIAL_URL.format("mambaout_kobe")),
    ),
    "mambaout_tiny": (
        dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 576)),
        Published(26.5, 4.5, 82.7, _PAPER),
        dict(**hub_weights("timm/mambaout_tiny.in1k"), origin_url=_OFFICIAL_URL.format("mambaout_tiny")),
    ),
    "mambaout_small": (
        dict(depths=(3, 4, 27, 3), dims=(96, 192, 384, 576)),
        Published(48.5, 9.0, 84.1, _PAPER),
        dict(**hub_weights("timm/mambaout_small.in1k"), origin_url=_OFFICIAL_URL.format("mambaout_small")),
    ),
    "mambaout_base": (
        dict(depths=(3, 4, 27, 3), dims=(128, 256, 512, 768)),
        Published(84.8, 15.8, 84.2, _PAPER),
        dict(**hub_weights("timm/mambaout_base.in1k"), origin_url=_OFFICIAL_URL.format("mambaout_base")),
    ),
    "mambaout_small_rw": (
        dict(depths=(3, 4, 27, 3), dims=(96, 192, 384, 576), **_RW),
        Published(48.50, None, None, _TIMM_CARD.format("mambaout_small_rw.sw_e450_in1k")),
        dict(**hub_weights("timm/mambaout_small_rw.sw_e450_in1k"), tag="sw_e450_in1k"),
    ),
    "mambaout_base_short_rw": (
        dict(depths=(3, 3, 25, 3), dims=(128, 256, 512, 768), expansion_ratio=3.0, conv_ratio=1.25, **_RW),
        Published(88.83, 16.3, None, _TIMM_CARD.format("mambaout_base_short_rw.sw_e500_in1k")),
        dict(**hub_weights("timm/mambaout_base_short_rw.sw_e500_in1k"), tag="sw_e500_in1k", crop_pct=0.95),
    ),
    "mambaout_base_tall_rw": (
        dict(depths=(3, 4, 30, 3), dims=(128, 256, 512, 768), expansion_ratio=2.5, conv_ratio=1.25, **_RW),
        Published(86.48, 16.1, None, _TIMM_CARD.format("mambaout_base_tall_rw.sw_e500_in1k")),
        dict(**hub_weights("timm/mambaout_base_tall_rw.sw_e500_in1k"), tag="sw_e500_in1k", crop_pct=0.95),
    ),
    "mambaout_base_wide_rw": (
        dict(depths=(3, 4, 27, 3), dims=(128, 256, 512, 768), expansion_ratio=3.0, conv_ratio=1.5, act="silu", **_RW),
        Published(94.45, None, None, _TIMM_CARD.format("mambaout_base_wide_rw.sw_e500_in1k")),
        dict(**hub_weights("timm/mambaout_base_wide_rw.sw_e500_in1k"), tag="sw_e500_in1k", crop_pct=0.95),
    ),
    "mambaout_base_plus_rw": (
        dict(depths=(3, 4, 30, 3), dims=(128, 256, 512, 768), expansion_ratio=3.0, conv_ratio=1.5, act="silu", **_RW),
        Published(101.66, 19.2, 86.632, _TIMM_CARD.format("mambaout_base_plus_rw.sw_e150_in12k_ft_in1k")),
        dict(**hub_weights("timm/mambaout_base_plus_rw.sw_e150_in12k_ft_in1k"), tag="sw_e150_in12k_ft_in1k"),
    ),
    # A few narrow blocks: keeps registry-wide tests fast. No weights.
    "mambaout_test": (
        dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), **_RW),
        Published(source="test variant"),
        dict(input_size=(3, 64, 64), test_input_size=(3, 64, 64)),
    ),
}


# Models without an official recipe of their own: the official configuration nearest to them
_RW_WHY = ("timm's {} was trained with timm's own recipe, never published as a config; it trains with the "
           "official MambaOut recipe of its size")
FALLBACKS = {
    "mambaout_small_rw": Fallback("mambaout_small", _RW_WHY.format("mambaout_small_rw")),
    **{name: Fallback("mambaout_base", _RW_WHY.format(name))
       for name in ("mambaout_base_short_rw", "mambaout_base_tall_rw", "mambaout_base_wide_rw",
                    "mambaout_base_plus_rw")},
    "mambaout_test": Fallback("mambaout_femto", "a test variant: the smallest official MambaOut's recipe"),
}
_RW_DENSE = "issue 12's recipe: timm's _rw variants as the official model of their size"
DENSE_RW = {"mambaout_small_rw": DenseSettings(0.4, _RW_DENSE),
            **{name: DenseSettings(0.6, _RW_DENSE) for name in FALLBACKS if name.startswith("mambaout_base_")}}


register_variants(
    VARIANTS,
    family="mambaout",
    model=MambaOut,
    cfg={"crop_pct": 1.0, "test_input_size": (3, 288, 288), "tag": "in1k", "feature_stride": 32},
    recipes=RECIPES,
    fallback=FALLBACKS,
    converter=convert_mambaout,
    dense={**DENSE_RW, **DENSE},
)

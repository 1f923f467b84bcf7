"""VMamba: visual state space model (Liu et al., 2024), every released classification version as data.

A 4-stage hierarchy of VSS blocks. The token mixer is SS2D: in_proj -> [split off a gate z] -> depthwise conv + SiLU
-> cross-scan (the feature map read row-major, column-major and both reversed) -> one selective scan in which the
four directions are four groups of B/C with their own dt/A/D parameters -> cross-merge (the four outputs mapped back
to the grid and summed) -> out norm -> [* SiLU(z)] -> out_proj.

The released versions differ only in data (`VMambaVersion`): the stem, the downsampling, where the channels live
between blocks (v0 keeps NHWC with nn.Linear, v2 keeps NCHW with 1x1 "Linear2d" convs), the SSM sizes, the conv bias,
the z gate and the MLP branch. Each choice picks a module from a checked table; no layer branches on a version name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from timm.layers import DropPath, calculate_drop_path_rates, trunc_normal_
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from ..checkpoints.vmamba_layout import convert_vmamba
from ..errors import InputSizeError
from ..ops.selective_scan import selective_scan
from ..recipes import Fallback
from ..recipes.vmamba import DENSE, RECIPES
from ..registry import Published, register_variants
from ._mamba_layers import at_least_fp32, init_dt_projection_, init_s4d_real_
from ._pooling import check_global_pool
from ._stages import prune_stages

NUM_DIRECTIONS = 4


# ---------------------------------------------------------------------------------------------------------------------
# Cross-scan / cross-merge


def cross_scan(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 4, C, H*W): row-major, column-major, then both of them reversed."""
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    forward = torch.stack((rows, cols), dim=1)
    return torch.cat((forward, forward.flip(-1)), dim=1)


def cross_merge(ys: Tensor, height: int, width: int) -> Tensor:
    """(B, 4, C, H*W) sequences in cross_scan's four orders -> (B, C, H, W): each mapped back to the grid, summed."""
    batch, _, channels, _ = ys.shape
    ys = ys[:, :2] + ys[:, 2:].flip(-1)
    rows = ys[:, 0].reshape(batch, channels, height, width)
    cols = ys[:, 1].reshape(batch, channels, width, height).transpose(2, 3)
    return rows + cols


class CrossScan(nn.Module):
    """VMamba's scan orders (`cross_scan` / `cross_merge`), without parameters.

    SS2D takes any module with this interface: `num_directions` K, `scan` (B, C, H, W) -> (B, K, C, L) with L >= H*W
    (a direction shorter than L is padded at its end), and `merge` (B, K, C, L) -> (B, C, H, W).
    """

    num_directions = NUM_DIRECTIONS

    def scan(self, x: Tensor) -> Tensor:
        return cross_scan(x)

    def merge(self, ys: Tensor, height: int, width: int) -> Tensor:
        return cross_merge(ys, height, width)


# ---------------------------------------------------------------------------------------------------------------------
# Channel layouts: where the channels live between blocks


class Linear2d(nn.Linear):
    """nn.Linear over the channels of an NCHW tensor (a 1x1 conv that keeps the Linear's (out, in) weight)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def _same(x: Tensor) -> Tensor:
    return x


def _nhwc_to_nchw(x: Tensor) -> Tensor:
    return x.permute(0, 3, 1, 2)


def _nchw_to_nhwc(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1)


@dataclass(frozen=True)
class Layout:
    """How tensors flow between blocks: the channel axis, its Linear and LayerNorm, and conversions to NCHW/NHWC."""

    name: str
    channel_dim: int
    linear: type[nn.Linear]
    norm: type[nn.LayerNorm]
    to_nchw: Callable[[Tensor], Tensor]
    from_nchw: Callable[[Tensor], Tensor]
    to_nhwc: Callable[[Tensor], Tensor]
    from_nhwc: Callable[[Tensor], Tensor]


LAYOUTS: dict[str, Layout] = {
    "NHWC": Layout("NHWC", -1, nn.Linear, nn.LayerNorm, _nhwc_to_nchw, _nchw_to_nhwc, _same, _same),
    "NCHW": Layout("NCHW", 1, Linear2d, LayerNorm2d, _same, _same, _nchw_to_nhwc, _nhwc_to_nchw),
}


# ---------------------------------------------------------------------------------------------------------------------
# Stems and downsampling layers (each declares the input multiple it needs so that no pixel is dropped)


class PatchStem(nn.Module):
    """v0: 4x4 stride-4 conv + LayerNorm."""

    first_conv: ClassVar[str] = "conv"
    input_multiple: ClassVar[int] = 4

    def __init__(self, in_chans: int, dim: int, layout: Layout):
        super().__init__()
        self.layout = layout
        self.conv = nn.Conv2d(in_chans, dim, kernel_size=4, stride=4)
        self.norm = LayerNorm2d(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.layout.from_nchw(self.norm(self.conv(x)))


class ConvStem(nn.Module):
    """v2: two 3x3 stride-2 convs, LayerNorm after each, GELU between."""

    first_conv: ClassVar[str] = "conv1"
    input_multiple: ClassVar[int] = 1

    def __init__(self, in_chans: int, dim: int, layout: Layout):
        super().__init__()
        self.layout = layout
        self.conv1 = nn.Conv2d(in_chans, dim // 2, kernel_size=3, stride=2, padding=1)
        self.norm1 = LayerNorm2d(dim // 2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim // 2, dim, kernel_size=3, stride=2, padding=1)
        self.norm2 = LayerNorm2d(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.norm1(self.conv1(x)))
        return self.layout.from_nchw(self.norm2(self.conv2(x)))


class PatchMerging(nn.Module):
    """v0 (Swin's): each 2x2 neighbourhood concatenated (4C), LayerNorm, Linear to the next width."""

    input_multiple: ClassVar[int] = 2

    def __init__(self, in_dim: int, out_dim: int, layout: Layout):
        super().__init__()
        self.layout = layout
        self.norm = nn.LayerNorm(4 * in_dim)
        self.reduction = nn.Linear(4 * in_dim, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layout.to_nhwc(x)
        x = torch.cat((x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]), dim=-1)
        return self.layout.from_nhwc(self.reduction(self.norm(x)))


class ConvDownsample(nn.Module):
    """v2: 3x3 stride-2 conv + LayerNorm."""

    input_multiple: ClassVar[int] = 1

    def __init__(self, in_dim: int, out_dim: int, layout: Layout):
        super().__init__()
        self.layout = layout
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=3, stride=2, padding=1)
        self.norm = LayerNorm2d(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.layout.from_nchw(self.norm(self.conv(self.layout.to_nchw(x))))


STEMS: dict[str, type[nn.Module]] = {"patch4": PatchStem, "conv3x2": ConvStem}
DOWNSAMPLES: dict[str, type[nn.Module]] = {"patch_merging": PatchMerging, "conv3": ConvDownsample}


def _choose(table: dict, key: str, what: str):
    if key not in table:
        raise ValueError(f"unknown {what} {key!r}; choose from {sorted(table)}")
    return table[key]


# ---------------------------------------------------------------------------------------------------------------------
# The version table


@dataclass(frozen=True)
class VMambaVersion:
    """Everything that tells one released VMamba version from another.

    stem / downsample / layout: keys of STEMS, DOWNSAMPLES and LAYOUTS.
    ssm_ratio: SS2D's inner width over the block width; d_state: N; dt_rank: None means ceil(dim / 16).
    conv_kernel: the depthwise conv's kernel (1 turns the conv off); gate: multiply by SiLU(z) from in_proj.
    mlp_ratio: hidden width of the MLP branch over the block width (0: no MLP branch).
    """

    stem: str
    downsample: str
    layout: str
    ssm_ratio: float
    d_state: int
    dt_rank: int | None
    conv_kernel: int
    conv_bias: bool
    gate: bool
    mlp_ratio: float


# official vmambav0_*: SSM_FORWARDTYPE v0, PATCHEMBED v1, DOWNSAMPLE v1, MLP_RATIO 0, LayerNorm (channels last)
VMAMBA_V0 = VMambaVersion(
    stem="patch4",
    downsample="patch_merging",
    layout="NHWC",
    ssm_ratio=2.0,
    d_state=16,
    dt_rank=None,
    conv_kernel=3,
    conv_bias=True,
    gate=True,
    mlp_ratio=0.0,
)
# official vmambav2_* (s2lN): v05_noz, PATCHEMBED v2, DOWNSAMPLE v3, MLP_RATIO 4, ln2d (channels first)
VMAMBA_V2 = VMambaVersion(
    stem="conv3x2",
    downsample="conv3",
    layout="NCHW",
    ssm_ratio=2.0,
    d_state=1,
    dt_rank=None,
    conv_kernel=3,
    conv_bias=False,
    gate=False,
    mlp_ratio=4.0,
)
# official vmambav2v_* (s1lN): as v2 with SSM_RATIO 1.0
VMAMBA_V2V = replace(VMAMBA_V2, ssm_ratio=1.0)


# ---------------------------------------------------------------------------------------------------------------------
# SS2D and the VSS block


class SS2D(nn.Module):
    """2D selective scan: four scan directions, each a group of B/C with its own dt projection, A and D.

    `multi_scan` chooses the scan orders (default: VMamba's `CrossScan`; see it for the interface).
    """

    def __init__(
        self,
        dim: int,
        layout: Layout,
        *,
        ssm_ratio: float,
        d_state: int,
        dt_rank: int | None,
        conv_kernel: int,
        conv_bias: bool,
        gate: bool,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        multi_scan: nn.Module | None = None,
    ):
        super().__init__()
        inner = int(ssm_ratio * dim)
        self.layout = layout
        self.gate = gate
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16) if dt_rank is None else dt_rank
        multi_scan = CrossScan() if multi_scan is None else multi_scan
        k = multi_scan.num_directions

        self.in_proj = layout.linear(dim, 2 * inner if gate else inner, bias=False)
        self.act = nn.SiLU()
        self.conv = (
            nn.Conv2d(inner, inner, conv_kernel, padding=(conv_kernel - 1) // 2, groups=inner, bias=conv_bias)
            if conv_kernel > 1
            else nn.Identity()
        )
        # per direction: x -> (dt_rank + 2 N) projection, dt_rank -> inner dt projection, A (inner, N), D (inner)
        self.x_proj_weight = nn.Parameter(torch.empty(k, self.dt_rank + 2 * d_state, inner))
        self.dt_proj_weight = nn.Parameter(torch.empty(k, inner, self.dt_rank))
        self.dt_proj_bias = nn.Parameter(torch.empty(k, inner))
        self.A_log = nn.Parameter(torch.empty(k * inner, d_state))
        self.D = nn.Parameter(torch.empty(k * inner))
        self.out_norm = layout.norm(inner)
        self.out_proj = layout.linear(inner, dim, bias=False)
        self.multi_scan = multi_scan  # last: the official state_dict order where it has parameters (LocalVMamba)
        self._init_ssm(inner, dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def _init_ssm(self, inner: int, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
        """Mamba's initialisation, per direction (as the official `initialize='v0'`)."""
        bound = inner**-0.5  # nn.Linear's default for the x projection
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        init_dt_projection_(self.dt_proj_weight, self.dt_proj_bias, dt_min, dt_max, dt_init_floor)
        init_s4d_real_(self.A_log)
        self.D.fill_(1.0)

    def scan(self, x: Tensor) -> Tensor:
        """(B, inner, H, W) -> (B, inner, H, W): cross-scan, one grouped selective scan, cross-merge."""
        batch, inner, height, width = x.shape
        xs = self.multi_scan.scan(x)  # (B, K, inner, L)
        length = xs.shape[-1]
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_proj_weight)
        ys = selective_scan(
            xs.reshape(batch, -1, length),
            dts.reshape(batch, -1, length),
            -torch.exp(at_least_fp32(self.A_log)),
            Bs.contiguous(),
            Cs.contiguous(),
            at_least_fp32(self.D),
            delta_bias=at_least_fp32(self.dt_proj_bias).reshape(-1),
            delta_softplus=True,
        )
        ys = ys.view(batch, self.multi_scan.num_directions, inner, length)
        return self.multi_scan.merge(ys, height, width).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        x = self.in_proj(x)
        if self.gate:
            x, z = x.chunk(2, dim=self.layout.channel_dim)
        x = self.act(self.conv(self.layout.to_nchw(x)))
        y = self.out_norm(self.layout.from_nchw(self.scan(x)))
        if self.gate:
            y = y * self.act(z)
        return self.out_proj(y)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, layout: Layout):
        super().__init__()
        self.fc1 = layout.linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = layout.linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VSSBlock(nn.Module):
    """x + SS2D(norm1(x)), then x + MLP(norm2(x)) where the version has an MLP branch."""

    def __init__(
        self,
        dim: int,
        version: VMambaVersion,
        layout: Layout,
        drop_path: float,
        multi_scan: nn.Module | None = None,
    ):
        super().__init__()
        self.norm1 = layout.norm(dim)
        self.mixer = SS2D(
            dim,
            layout,
            ssm_ratio=version.ssm_ratio,
            d_state=version.d_state,
            dt_rank=version.dt_rank,
            conv_kernel=version.conv_kernel,
            conv_bias=version.conv_bias,
            gate=version.gate,
            multi_scan=multi_scan,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.has_mlp = version.mlp_ratio > 0
        if self.has_mlp:
            self.norm2 = layout.norm(dim)
            self.mlp = Mlp(dim, int(dim * version.mlp_ratio), layout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.mixer(self.norm1(x)))
        if self.has_mlp:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class VMambaStage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: list[nn.Module]):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


# timm's pooling choices for this head: "avg" (the released models) or "" (none: norm and fc on every position)
GLOBAL_POOLS = ("avg", "")


class ClassifierHead(nn.Module):
    """LayerNorm -> global average pool -> Linear, on NHWC features."""

    def __init__(self, dim: int, num_classes: int, global_pool: str = "avg"):
        super().__init__()
        self.global_pool = check_global_pool(global_pool, GLOBAL_POOLS)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.norm(x)
        if self.global_pool == "avg":
            x = x.mean((1, 2))
        return x if pre_logits else self.fc(x)


# ---------------------------------------------------------------------------------------------------------------------
# The model


class VMamba(nn.Module):
    """VMamba backbone + classifier with timm's model API (forward_features returns NHWC in every version).

    `multi_scans(block, inner)` builds the scan-order module of block number `block` (counted over all stages) whose
    SS2D is `inner` wide; None keeps VMamba's cross-scan in every block (LocalVMamba plugs its searched scans here).
    """

    def __init__(
        self,
        depths: tuple[int, ...] = (2, 2, 9, 2),
        dims: tuple[int, ...] = (96, 192, 384, 768),
        *,
        version: VMambaVersion = VMAMBA_V2,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_path_rate: float = 0.0,
        multi_scans: Callable[[int, int], nn.Module] | None = None,
    ):
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError(f"depths {depths} and dims {dims} must have the same length")
        layout = _choose(LAYOUTS, version.layout, "layout")
        stem_cls = _choose(STEMS, version.stem, "stem")
        downsample_cls = _choose(DOWNSAMPLES, version.downsample, "downsample")
        self.version = version
        self.layout = layout
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.output_fmt = "NHWC"
        self.input_multiple = stem_cls.input_multiple * downsample_cls.input_multiple ** (len(depths) - 1)
        self.stem = stem_cls(in_chans, dims[0], layout)

        # one linear ramp over all blocks, as the official code
        drop_paths = iter(calculate_drop_path_rates(drop_path_rate, sum(depths)))
        stages, self.feature_info, stride = [], [], 4
        numbers = iter(range(sum(depths)))
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            if i > 0:
                stride *= 2
            downsample = downsample_cls(dims[i - 1], dim, layout) if i > 0 else nn.Identity()
            blocks = [
                VSSBlock(dim, version, layout, next(drop_paths), self._multi_scan(multi_scans, next(numbers), dim))
                for _ in range(depth)
            ]
            stages.append(VMambaStage(downsample, blocks))
            self.feature_info.append(dict(num_chs=dim, reduction=stride, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = dims[-1]
        self.head = ClassifierHead(dims[-1], num_classes, global_pool)
        self.apply(self._init_weights)

    def _multi_scan(
        self, multi_scans: Callable[[int, int], nn.Module] | None, block: int, dim: int
    ) -> nn.Module | None:
        return multi_scans(block, int(self.version.ssm_ratio * dim)) if multi_scans is not None else None

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):  # Linear2d too
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """VSSM's {"pos_embed"} (MzeroMiko/VMamba@2ed52ea classification/models/vmamba.py:1385-1386), where it exists.

        LocalVMamba's VSSM returns {} (hunto/LocalMamba@75e5d1f classification/lib/models/local_vmamba.py:667-668);
        no variant here has a pos_embed, so both are empty. Swin's rule ("swin") then exempts only 1-D parameters
        and ".bias" names: the 2-D A_log and dt_proj_bias ((K*D, N), (K, D)) are decayed, as officially, although
        Mamba marks A_logs/Ds `_no_weight_decay` (no official optimizer reads that mark).
        """
        return {"pos_embed"} & {n for n, _ in self.named_parameters()}

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        """VSSM's keywords for Swin's rule: {} (MzeroMiko/VMamba@2ed52ea classification/models/vmamba.py:1390-1391)."""
        return set()

    @torch.jit.ignore
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
            self.head.fc = nn.Linear(self.num_features, num_classes, device=self.head.norm.weight.device)
            self._init_weights(self.head.fc)
        else:
            self.head.fc = nn.Identity()

    def _check_input(self, x: Tensor) -> None:
        height, width = x.shape[-2:]
        if height % self.input_multiple or width % self.input_multiple:
            raise InputSizeError(
                f"VMamba ({self.version.stem} stem, {self.version.downsample} downsampling) needs an input height "
                f"and width divisible by {self.input_multiple}, got {height}x{width}"
            )

    def forward_features(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return self.layout.to_nhwc(self.stages(self.stem(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs (timm semantics: int = last n stages, None = all; `norm` has no effect here)."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        self._check_input(x)
        to_fmt = self.layout.to_nchw if output_fmt == "NCHW" else self.layout.to_nhwc
        take, last = feature_take_indices(len(self.stages), indices)
        stages = self.stages[: last + 1] if stop_early else self.stages
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                intermediates.append(to_fmt(x).contiguous())
        x = self.layout.to_nhwc(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Keep only the stages up to the last of `indices` (and no head): what a feature extractor needs."""
        return prune_stages(self, indices, prune_head)


# ---------------------------------------------------------------------------------------------------------------------
# Registered variants: name -> (architecture, published numbers, release weights)

_RELEASE = "https://github.com/MzeroMiko/VMamba/releases/download/{}"
# Params (M) and GMACs as published (rounded; counted with the head and the mamba#110 scan formula); top-1 as
# published, which for the files marked "EMA weights" is the accuracy of their 'model_ema' entry: their cfg says
# use_ema=True, so pretrained=True loads that entry (falling back to 'model' if a file has none).
_README = "MzeroMiko/VMamba README.md / assets/performance.md @2ed52ea"

VARIANTS: dict[str, tuple[dict, Published, dict]] = {
    # official vmambav0_*_224 ("Vanilla-VMamba")
    "vmamba_tiny": (
        dict(depths=(2, 2, 9, 2), dims=(96, 192, 384, 768), version=VMAMBA_V0),
        Published(23, 5.6, 82.2, _README + "; Vanilla-VMamba-T, trained without EMA"),
        dict(url=_RELEASE.format("%23v0cls/vssmtiny_dp01_ckpt_epoch_292.pth")),
    ),
    "vmamba_small": (
        dict(depths=(2, 2, 27, 2), dims=(96, 192, 384, 768), version=VMAMBA_V0),
        Published(44, 11.2, 83.5, _README + "; Vanilla-VMamba-S, EMA weights"),
        dict(url=_RELEASE.format("%23v0cls/vssmsmall_dp03_ckpt_epoch_238.pth"), use_ema=True),
    ),
    "vmamba_base": (
        dict(depths=(2, 2, 27, 2), dims=(128, 256, 512, 1024), version=VMAMBA_V0),
        Published(76, 18.0, 83.7, _README + "; Vanilla-VMamba-B* (drop path 0.6), EMA weights"),
        dict(url=_RELEASE.format("%23v0cls/vssmbase_dp06_ckpt_epoch_241.pth"), use_ema=True),
    ),
    # official vmambav2v_*_224: the README's VMamba-T[s1l8], -S[s1l20], -B[s1l20]
    "vmamba2_tiny": (
        dict(depths=(2, 2, 8, 2), dims=(96, 192, 384, 768), version=VMAMBA_V2V),
        Published(30, 4.9, 82.6, _README + "; VMamba-T[s1l8]"),
        dict(url=_RELEASE.format("%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth")),
    ),
    "vmamba2_small": (
        dict(depths=(2, 2, 20, 2), dims=(96, 192, 384, 768), version=VMAMBA_V2V),
        Published(49, 8.6, 83.3, _README + "; VMamba-S[s1l20]"),
        dict(url=_RELEASE.format("%23v2cls/vssm1_small_0229s_ckpt_epoch_240.pth")),
    ),
    "vmamba2_base": (
        dict(depths=(2, 2, 20, 2), dims=(128, 256, 512, 1024), version=VMAMBA_V2V),
        Published(87, 15.2, 83.8, _README + "; VMamba-B[s1l20]"),
        dict(url=_RELEASE.format("%23v2cls/vssm1_base_0229s_ckpt_epoch_225.pth")),
    ),
    # official vmambav2_*_224: VMamba-T[s2l5], -S[s2l15], -B[s2l15]
    "vmamba2_tiny_s2l5": (
        dict(depths=(2, 2, 5, 2), dims=(96, 192, 384, 768), version=VMAMBA_V2),
        Published(31, 4.9, 82.5, _README + "; VMamba-T[s2l5], EMA weights"),
        dict(url=_RELEASE.format("%23v2cls/vssm_tiny_0230_ckpt_epoch_262.pth"), use_ema=True),
    ),
    "vmamba2_small_s2l5": (
        dict(depths=(2, 2, 15, 2), dims=(96, 192, 384, 768), version=VMAMBA_V2),
        Published(50, 8.7, 83.6, _README + "; VMamba-S[s2l15], EMA weights"),
        dict(url=_RELEASE.format("%23v2cls/vssm_small_0229_ckpt_epoch_222.pth"), use_ema=True),
    ),
    "vmamba2_base_s2l5": (
        dict(depths=(2, 2, 15, 2), dims=(128, 256, 512, 1024), version=VMAMBA_V2),
        Published(89, 15.4, 83.9, _README + "; VMamba-B[s2l15], EMA weights"),
        dict(url=_RELEASE.format("%23v2cls/vssm_base_0229_ckpt_epoch_237.pth"), use_ema=True),
    ),
    # A few narrow blocks of each layout: keeps registry-wide tests fast. No weights.
    "vmamba_test": (
        dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), version=replace(VMAMBA_V0, d_state=4)),
        Published(source="test variant"),
        dict(input_size=(3, 64, 64)),
    ),
    "vmamba2_test": (
        dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), version=replace(VMAMBA_V2, d_state=2)),
        Published(source="test variant"),
        dict(input_size=(3, 64, 64)),
    ),
}


FALLBACKS = {
    "vmamba_test": Fallback("vmamba_tiny", "a test variant: VMamba-T v0's recipe"),
    "vmamba2_test": Fallback("vmamba2_tiny_s2l5", "a test variant: VMamba-T v2's recipe"),
}


register_variants(
    VARIANTS,
    family="vmamba",
    model=VMamba,
    cfg=lambda arch: dict(
        crop_pct=0.875,
        interpolation="bicubic",
        first_conv=f"stem.{STEMS[arch['version'].stem].first_conv}",
        classifier="head.fc",
        feature_stride=32,
        tag="in1k",
        # release files are training checkpoints: {'model': ..., 'model_ema': ..., ...}
        checkpoint_layout="model",
    ),
    recipes=RECIPES,
    fallback=FALLBACKS,
    converter=convert_vmamba,
    dense=DENSE,
)

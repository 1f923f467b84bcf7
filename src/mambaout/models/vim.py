"""Vision Mamba, "Vim" (Zhu et al., ICML 2024), as its released `*_bimambav2_..._midclstok_div2` models.

Patch embedding, a class token inserted in the MIDDLE of the patch sequence (position num_patches // 2), a learned
absolute position embedding, then blocks of RMSNorm -> bidirectional Mamba mixer ("bimamba v2") on a residual stream
kept in float32, a final RMSNorm and a linear classifier on the middle class token.

The official blocks fuse "residual = residual + hidden; hidden = norm(residual)" at the start of the *next* block
(mamba_ssm's fused add-norm, residual_in_fp32). Here each block owns its own residual add,
x <- x + drop_path(mixer(norm(x))), with x in float32: the same arithmetic, regrouped, so that a block maps one tensor
to one tensor (gradient checkpointing, intermediates) and drop path rate i belongs to block i's own mixer output
(the official code applies inter_dpr[i + 1] = dpr[i] to it when it is added, and drop_path_rate to the last one).

Our names follow the package's vocabulary (`blocks`, `norm`); the official `layers.*` / `norm_f.*` keys are renamed by
`mambaout.checkpoints.layouts.convert_vim`. Inside a block the Mamba names are kept (`mixer.in_proj`, `mixer.A_log`,
`mixer.conv1d_b`, ...): they are the standard vocabulary of every Mamba code base.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import (
    DropPath,
    PatchEmbed,
    calculate_drop_path_rates,
    lecun_normal_,
    to_2tuple,
    trunc_normal_,
)
from torch import nn

from ..checkpoints.layouts import convert_vim
from ..errors import check_patch_multiple
from ..recipes import Fallback
from ..recipes.vim import DENSE, RECIPES
from ..registry import Published, hub_weights, register_variants
from ._mamba_layers import at_least_fp32, init_dt_projection_, init_s4d_real_, mamba_direction
from ._pooling import check_global_pool
from ._positions import middle_token_index, resample_mid_cls_pos_embed
from ._token_model import GLOBAL_POOLS, PositionTables, TokenModel


class RMSNorm(nn.Module):
    """mamba_ssm's RMSNorm: x / sqrt(mean(x^2) + eps) * weight, computed in float32, returned in the weight's dtype."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.rms_norm(at_least_fp32(x), (x.shape[-1],), at_least_fp32(self.weight), self.eps)
        return out.to(self.weight.dtype)


class BiMambaMixer(nn.Module):
    """Mamba's selective-SSM mixer, "bimamba v2": one input projection, then a forward and a backward scan, each with
    its own conv1d, x_proj, dt_proj, A and D; the backward scan runs on the flipped sequence and is flipped back; the
    two are summed and halved (`if_divide_out`) before the output projection.

    Both directions are always used (the official non-fast PyTorch path drops the backward one; its CUDA path, with
    which the weights were trained, does not).
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        num_layers: int = 1,
    ):
        super().__init__()
        self.d_inner = expand * dim
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16)
        self._dt_init = (dt_min, dt_max, dt_init_floor, dt_scale)
        self._num_layers = num_layers
        # Registered in the official state_dict order: the direct parameters first, then the submodules.
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.A_b_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D_b = nn.Parameter(torch.empty(self.d_inner))
        self.in_proj = nn.Linear(dim, 2 * self.d_inner, bias=False)
        self.conv1d, self.x_proj, self.dt_proj = self._direction_modules(d_conv)
        self.conv1d_b, self.x_proj_b, self.dt_proj_b = self._direction_modules(d_conv)
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False)
        self.reset_parameters()

    def _direction_modules(self, d_conv: int) -> tuple[nn.Conv1d, nn.Linear, nn.Linear]:
        conv = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False)
        dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        return conv, x_proj, dt_proj

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba's init: S4D-real A = -(1..N), D = 1, dt ~ log-uniform(dt_min, dt_max) through an inverse softplus in
        dt_proj's bias; Vim's GPT-2 style rescale of out_proj by 1/sqrt(depth). Other layers keep PyTorch's init."""
        dt_min, dt_max, dt_init_floor, dt_scale = self._dt_init
        for A_log, D, dt_proj in ((self.A_log, self.D, self.dt_proj), (self.A_b_log, self.D_b, self.dt_proj_b)):
            init_s4d_real_(A_log)
            D.fill_(1.0)
            init_dt_projection_(dt_proj.weight, dt_proj.bias, dt_min, dt_max, dt_init_floor, dt_scale)
        nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))
        self.out_proj.weight /= math.sqrt(self._num_layers)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) each
        out = mamba_direction(x, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        # the official code flips x and z together (xz.flip), so the gate stays aligned with its token
        out_b = mamba_direction(
            x.flip(-1), z.flip(-1), self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b
        ).flip(-1)
        return self.out_proj(((out + out_b) / 2).transpose(1, 2))


class Block(nn.Module):
    """x <- x + drop_path(mixer(RMSNorm(x))); x is the float32 residual stream (mamba_ssm's residual_in_fp32), so the
    sum stays float32 whatever the mixer's dtype."""

    def __init__(self, dim: int, mixer: BiMambaMixer, norm_eps: float = 1e-5, drop_path: float = 0.0):
        super().__init__()
        self.mixer = mixer  # before `norm`: the official state_dict order
        self.norm = RMSNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mixer(self.norm(x)))


class VisionMamba(TokenModel):
    """Vim with timm's model API; features are tokens (B, H*W + 1, C) after the final norm, the class token at
    index H*W // 2 (see `patch_tokens`)."""

    def __init__(
        self,
        embed_dim: int = 192,
        depth: int = 24,
        *,
        img_size: int = 224,
        patch_size: int = 16,
        patch_stride: int | None = None,
        in_chans: int = 3,
        num_classes: int = 1000,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        norm_eps: float = 1e-5,
        global_pool: str = "token",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        check_global_pool(global_pool, GLOBAL_POOLS)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.patch_size = patch_size
        self.num_features = self.head_hidden_size = embed_dim

        self.patch_embed = PatchEmbed(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            output_fmt="NHWC",
            strict_img_size=False,
        )
        self.patch_stride = patch_stride or patch_size
        if self.patch_stride != patch_size:
            # overlapping patches (the official PatchEmbed's `stride`, the "+" models); timm's PatchEmbed has no stride
            self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=self.patch_stride)
        self.grid_size = tuple((side - patch_size) // self.patch_stride + 1 for side in to_2tuple(img_size))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1] + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)  # the official code spends drop_rate here, not before the head
        self.head_drop = nn.Identity()
        # the head is registered before the blocks so that state_dict keys come in the official order
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        drop_paths = calculate_drop_path_rates(drop_path_rate, depth)  # linspace(0, rate, depth), as the official dpr
        mixer = partial(BiMambaMixer, embed_dim, d_state=d_state, expand=expand, d_conv=d_conv, num_layers=depth)
        self.blocks = nn.Sequential(*(Block(embed_dim, mixer(), norm_eps, drop_paths[i]) for i in range(depth)))
        self.feature_info = [
            dict(num_chs=embed_dim, reduction=self.patch_stride, module=f"blocks.{i}") for i in range(depth)
        ]
        self.norm = RMSNorm(embed_dim, eps=norm_eps)
        self._init_parameters()

    def _init_parameters(self) -> None:
        # VisionMamba's init: lecun-normal patch conv, truncated-normal (0.02) head, position embedding and class token
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self._init_head()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """VisionMamba's names (hustvl/Vim@dd0358a vim/models_mamba.py:378-379) that are parameters here.

        Nothing else: Vim trains with timm 0.4.12's add_weight_decay (vim/main.py:391), which never reads Mamba's
        `_no_weight_decay` mark, so the 2-D A_log / A_b_log are decayed officially; D / D_b are 1-D and exempt.
        """
        official = {"pos_embed", "cls_token", "dist_token", "cls_token_head", "cls_token_tail"}
        return official & {name for name, _ in self.named_parameters()}

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool, GLOBAL_POOLS)
        self._new_head(num_classes)

    def cls_token_index(self, num_patches: int) -> int:
        # The official read-out is this middle token: despite "final_pool_mean" in the model names,
        # VisionMamba.forward_features returns hidden_states[:, M // 2] whenever if_cls_token and
        # use_middle_cls_token are set, before its final_pool_type branch is reached.
        return middle_token_index(num_patches)

    def _position_tables(self) -> PositionTables:
        # hustvl/Vim vim/main.py --finetune resamples pos_embed with F.interpolate(mode="bicubic",
        # align_corners=False), antialias off (its default); its class row is kept, here at its middle place
        return {"pos_embed": (1, partial(resample_mid_cls_pos_embed, antialias=False))}

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch tokens with the class token inserted in the middle and the position embedding added (float32)."""
        check_patch_multiple(*x.shape[-2:], self.patch_stride)
        x = self.patch_embed(x)
        grid = (x.shape[1], x.shape[2])
        x = x.flatten(1, 2)
        index = middle_token_index(x.shape[1])
        x = torch.cat((x[:, :index], self.cls_token.expand(x.shape[0], -1, -1), x[:, index:]), dim=1)
        pos_embed = resample_mid_cls_pos_embed(self.pos_embed, new_size=grid, old_size=self.grid_size)
        return at_least_fp32(self.pos_drop(x + pos_embed)), grid


_README = "hustvl/Vim README.md, Model Weights table (#param. rounded to 1M; no FLOPs published)"

# name: (architecture, published numbers, release weights)
VARIANTS: dict[str, tuple[dict, Published, dict]] = {
    "vim_tiny": (
        dict(embed_dim=192, depth=24),
        Published(7, None, 76.1, _README),
        hub_weights("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_76p1acc.pth"),
    ),
    "vim_small": (
        dict(embed_dim=384, depth=24),
        Published(26, None, 80.5, _README),
        hub_weights("hustvl/Vim-small-midclstok", "vim_s_midclstok_80p5acc.pth"),
    ),
    # "+": fine-tuned from the above "at finer granularity" (vim/scripts/ft-vim-{t,s}.sh: the
    # *_patch16_stride8_224_* models, 16x16 patches at stride 8: a 27x27 grid, 730 tokens; 30 epochs)
    "vim_tiny_plus": (
        dict(embed_dim=192, depth=24, patch_stride=8),
        Published(7, None, 78.3, _README + "; Vim-tiny+"),
        hub_weights("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_ft_78p3acc.pth"),
    ),
    "vim_small_plus": (
        dict(embed_dim=384, depth=24, patch_stride=8),
        Published(26, None, 81.6, _README + "; Vim-small+"),
        hub_weights("hustvl/Vim-small-midclstok", "vim_s_midclstok_ft_81p6acc.pth"),
    ),
    "vim_base": (
        dict(embed_dim=768, depth=24),
        Published(98, None, 81.9, _README),
        hub_weights("hustvl/Vim-base-midclstok", "vim_b_midclstok_81p9acc.pth"),
    ),
    # Two narrow blocks on a 4x4 grid: keeps registry-wide tests fast. No weights.
    "vim_test": (
        dict(embed_dim=32, depth=2, img_size=64),
        Published(source="test variant"),
        dict(input_size=(3, 64, 64)),
    ),
}


# Vim's own evaluation (main.py --eval-crop-ratio 0.875, datasets.build_transform): resize 256, bicubic, centre crop
# 224, ImageNet mean/std; the timm _cfg() its models carry (0.9, mean/std 0.5) is never read.
register_variants(
    VARIANTS,
    family="vim",
    model=VisionMamba,
    cfg=dict(crop_pct=0.875, interpolation="bicubic", first_conv="patch_embed.proj", classifier="head"),
    recipes=RECIPES,
    fallback=Fallback("vim_tiny", "a test variant: Vim-Ti's recipe"),
    converter=convert_vim,
    dense=DENSE,
)

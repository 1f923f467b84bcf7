"""ViT / DeiT (Touvron et al., 2021) in timm's state_dict layout, with a switch to causal attention.

Pre-norm blocks (LayerNorm eps 1e-6 -> multi-head attention, LayerNorm -> 2-layer GELU MLP), a class token at
position 0, a learned absolute position embedding, a final LayerNorm and a linear classifier. With
`causal=False` (the default) this is exactly timm's `deit_*_patch16_224`, so DeiT's release files load strictly.
`causal=True` is the MambaOut paper's Fig. 3b ablation: the same weights, but every token attends only to itself
and the tokens before it, as in an RNN-like token mixer such as Mamba's.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, PatchEmbed, calculate_drop_path_rates, resample_abs_pos_embed, trunc_normal_
from torch import nn

from ..errors import check_patch_multiple
from ..recipes import Fallback
from ..recipes.deit import DENSE, RECIPES
from ..registry import Published, recipe_for, register_variants
from ._pooling import check_global_pool
from ._token_model import GLOBAL_POOLS, PositionTables, TokenModel


class Attention(nn.Module):
    """Multi-head self-attention through `scaled_dot_product_attention`; `causal` masks out later tokens.

    One module for both modes, so the causal ablation changes nothing but the mask (same weights and layout).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        causal: bool = False,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.causal = causal
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        # timm's qkv packing: the output features are ordered (q|k|v, head, head_dim).
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, is_causal=self.causal
        )
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class Block(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        causal: bool = False,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, proj_drop, causal)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(TokenModel):
    """ViT with a class token and timm's model API; features are tokens (B, 1 + H*W, C) after the final norm."""

    def __init__(
        self,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        *,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        causal: bool = False,
        global_pool: str | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        # With a causal mask the class token at position 0 sees only itself, so reading the class out from it
        # would classify from a learned constant. The official MambaOut repo does not publish its causal ViT;
        # we pool the way MambaOut (and Vim's `final_pool_mean`) read out a class: the mean of the patch tokens,
        # while every patch token still sees the class token before it. Keeping the class token first (rather than
        # moving it last) keeps the sequence, the position embedding and the state_dict identical to DeiT's, so
        # one checkpoint serves both modes: they differ only in the attention mask and this read-out.
        if global_pool is None:
            global_pool = "avg" if causal else "token"
        check_global_pool(global_pool, GLOBAL_POOLS)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.causal = causal
        self.patch_size = patch_size
        self.num_features = self.head_hidden_size = embed_dim

        # strict_img_size=False: any size divisible by the patch size; NHWC output keeps the grid shape for
        # resizing the position embedding and for reshaping intermediates.
        self.patch_embed = PatchEmbed(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            output_fmt="NHWC",
            strict_img_size=False,
        )
        self.grid_size = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + self.patch_embed.num_patches, embed_dim))
        drop_paths = calculate_drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(
            *(
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    attn_drop=attn_drop_rate,
                    proj_drop=proj_drop_rate,
                    drop_path=drop_paths[i],
                    causal=causal,
                )
                for i in range(depth)
            )
        )
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks.{i}") for i in range(depth)]
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_parameters()

    def _init_parameters(self) -> None:
        # timm's default ViT init: small random position embedding, near-zero class token, truncated-normal linears.
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        self.apply(self._init_linear)

    @staticmethod
    def _init_linear(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """timm 0.3.2 VisionTransformer's (vision_transformer.py:255-256), which DeiT trains (deit main.py:352)."""
        return {"pos_embed", "cls_token"}

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            check_global_pool(global_pool, GLOBAL_POOLS)
            self.global_pool = global_pool
        self.num_classes = num_classes
        if num_classes > 0:
            self.head = nn.Linear(self.num_features, num_classes, device=self.norm.weight.device)
            self._init_linear(self.head)
        else:
            self.head = nn.Identity()

    def cls_token_index(self, num_patches: int) -> int:
        return 0  # DeiT's class token comes first

    def _position_tables(self) -> PositionTables:
        # facebookresearch/deit main.py --finetune: F.interpolate(mode="bicubic", align_corners=False), antialias
        # off (its default), the class row kept first
        resample = partial(resample_abs_pos_embed, num_prefix_tokens=self.num_prefix_tokens, antialias=False)
        return {"pos_embed": (self.num_prefix_tokens, resample)}

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch tokens with the class token prepended and the position embedding (resized to the grid) added."""
        check_patch_multiple(*x.shape[-2:], self.patch_size)
        x = self.patch_embed(x)
        grid = (x.shape[1], x.shape[2])
        # A no-op at the trained grid; otherwise bicubic resampling of the patch rows, the class token's row kept.
        pos_embed = resample_abs_pos_embed(
            self.pos_embed, new_size=grid, old_size=self.grid_size, num_prefix_tokens=self.num_prefix_tokens
        )
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x.flatten(1, 2)), dim=1)
        return x + pos_embed, grid


# name: (architecture, published numbers, release weights)
_DEIT_URL = "https://dl.fbaipublicfiles.com/deit/{}.pth"
_DEIT_PAPER = "DeiT paper (Touvron et al., 2021) Table 1"

VARIANTS: dict[str, tuple[dict, Published, dict]] = {
    "deit_tiny": (
        dict(embed_dim=192, depth=12, num_heads=3),
        Published(5.7, 1.3, 72.2, _DEIT_PAPER),
        dict(url=_DEIT_URL.format("deit_tiny_patch16_224-a1311bcf")),
    ),
    "deit_small": (
        dict(embed_dim=384, depth=12, num_heads=6),
        Published(22.1, 4.6, 79.8, _DEIT_PAPER),
        dict(url=_DEIT_URL.format("deit_small_patch16_224-cd65a155")),
    ),
    "deit_base": (
        dict(embed_dim=768, depth=12, num_heads=12),
        Published(86.6, 17.6, 81.8, _DEIT_PAPER),
        dict(url=_DEIT_URL.format("deit_base_patch16_224-b5f2ef4d")),
    ),
    # Two narrow blocks on a 4x4 grid: keeps registry-wide tests fast. No weights.
    "deit_test": (
        dict(embed_dim=32, depth=2, num_heads=2, img_size=64),
        Published(source="test variant"),
        dict(input_size=(3, 64, 64)),
    ),
}


# crop 0.875 is DeiT's own evaluation (its main.py --eval-crop-ratio); timm's cfg says 0.9.
_DEIT_CFG = dict(crop_pct=0.875, first_conv="patch_embed.proj", classifier="head")
register_variants(VARIANTS, family="vit", model=VisionTransformer, cfg=_DEIT_CFG, recipes=RECIPES,
                  fallback=Fallback("deit_tiny", "a test variant: DeiT-Ti's recipe"), dense=DENSE)

# The Fig. 3b ablation: same architecture and layout, causal attention, mean pooling. Nobody released weights;
# DeiT's load into it (create_model(f"{name}_causal", checkpoint=...)) as a starting point.
register_variants(
    {f"{name}_causal": ({**arch, "causal": True},
                        Published(published.params_m, source=f"{name} with causal attention (MambaOut Fig. 3b)"), {})
     for name, (arch, published, _) in VARIANTS.items()},
    family="vit",
    model=VisionTransformer,
    cfg=_DEIT_CFG,
    recipes={},
    fallback={f"{name}_causal": Fallback(recipe_for(name)[0].name,
                                         f"the paper's Fig. 3b trains the causal variant with {name}'s recipe")
              for name in VARIANTS},
    dense=DENSE,
)

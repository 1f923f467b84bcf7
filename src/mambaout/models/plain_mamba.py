"""PlainMamba (Yang et al., BMVC 2024): a plain (non-hierarchical) visual Mamba with a continuous 2D zig-zag scan
and direction-aware updating.

A conv stem (7x7 stride 2 + BN + ReLU, 1 or 2 x [3x3 + BN + ReLU] at 64 channels, then an 8x8 stride-8 projection
after padding to a multiple of 8: one token per 16x16 pixels), a learned position embedding, no class token, then
blocks x + drop_path(mixer(LayerNorm(x))) (PlainMamba-L1's first block adds a depthwise 3x3 conv + BN + GELU after its
residual), a final LayerNorm (eps 1e-6), the mean of the tokens and a linear classifier.

The mixer (PlainMamba2D): in_proj (with bias) -> x, z; x -> depthwise 7x7 conv + SiLU in raster order -> dt, B, C.
Four snakes visit the tokens (`zigzag_orders`); in each, only u is taken in the snake's order: at scan step t the
token visited at step t meets the dt / B / C of raster token t, and B gets the embedding of the move that reached
step t (start, right, left, up, down). The four outputs (with their D skip) are put back in raster order, summed and
gated by SiLU(z). dt_proj's bias is counted twice, as the official code does: once in dt_proj itself and once as the
scan's delta_bias. All four snakes go through one grouped selective scan.
"""

from __future__ import annotations

import functools
import itertools
import math
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import DropPath, calculate_drop_path_rates, trunc_normal_
from torch import Tensor, nn

from ..checkpoints.plain_mamba_layout import convert_plain_mamba
from ..ops.selective_scan import selective_scan
from ..recipes import Fallback
from ..recipes.plain_mamba import DENSE, RECIPES
from ..registry import Published, hub_weights, register_variants
from ._mamba_layers import at_least_fp32, init_dt_projection_
from ._pooling import check_global_pool
from ._positions import resample_grid
from ._token_model import PATCH_POOLS, GridTokenModel, PositionTables

NUM_SNAKES = 4
# direction embedding rows: the move that reached a scan step
MOVES = {(0, 1): 1, (0, -1): 2, (-1, 0): 3, (1, 0): 4}  # (d row, d column) -> right, left, up, down; 0 = start


def _snake(outer: int, inner: int, rows_first: bool) -> list[tuple[int, int]]:
    """Boustrophedon from the top-left corner: along rows (rows_first) or along columns, turning at each edge."""
    path = []
    for a in range(outer):
        steps = range(inner) if a % 2 == 0 else range(inner - 1, -1, -1)
        path += [(a, b) if rows_first else (b, a) for b in steps]
    return path


def zigzag_orders(height: int, width: int, device: torch.device | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(orders, inverses, moves), each (4, H*W), for the four snakes of PlainMamba.

    Snakes: rows from the top-left; the same path backwards (from the bottom row); columns from the top-left; that
    path backwards (from the right column) - the official four start corners. orders[k, t] is the raster index of the
    token at step t, inverses[k, p] the step at which token p is visited, moves[k, t] the direction-embedding row.
    """
    return tuple(torch.tensor(a, device=device) for a in _zigzag_orders(height, width))  # copies: the cache is kept


@functools.lru_cache(maxsize=64)
def _zigzag_orders(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # numpy, not tensors: a cache filled while torch.export or torch.compile traces would otherwise keep fake tensors
    rows = _snake(height, width, rows_first=True)
    cols = _snake(width, height, rows_first=False)
    orders, moves = [], []
    for path in (rows, rows[::-1], cols, cols[::-1]):
        orders.append([r * width + c for r, c in path])
        moves.append([0] + [MOVES[(r1 - r0, c1 - c0)] for (r0, c0), (r1, c1) in itertools.pairwise(path)])
    orders = np.array(orders, dtype=np.int64)
    return orders, np.argsort(orders, axis=1), np.array(moves, dtype=np.int64)


class PlainMamba2D(nn.Module):
    """PlainMamba's mixer on (B, L, C) tokens of an H x W grid."""

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        expand: int = 2,
        conv_size: int = 7,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
    ):
        super().__init__()
        self.d_inner = expand * dim
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16)
        # the official state_dict order: A_log, D, direction_Bs, then the layers
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.direction_Bs = nn.Parameter(torch.zeros(NUM_SNAKES + 1, d_state))
        self.in_proj = nn.Linear(dim, 2 * self.d_inner)
        inner = self.d_inner
        self.conv2d = nn.Conv2d(inner, inner, conv_size, padding=conv_size // 2, groups=inner)
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner)
        self.out_proj = nn.Linear(inner, dim)
        self._init_parameters(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def _init_parameters(self, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
        trunc_normal_(self.direction_Bs, std=0.02)
        for linear in (self.in_proj, self.x_proj, self.out_proj):
            trunc_normal_(linear.weight, std=0.02)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
        init_dt_projection_(self.dt_proj.weight, self.dt_proj.bias, dt_min, dt_max, dt_init_floor)

    def forward(self, hidden: Tensor, grid: tuple[int, int]) -> Tensor:
        batch, length, _ = hidden.shape
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        x = x.transpose(1, 2).unflatten(-1, grid)  # (B, E, H, W)
        x = F.silu(self.conv2d(x)).flatten(2)  # (B, E, L), raster order
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = self.dt_proj(dt).transpose(1, 2)  # with its bias; the scan adds the bias once more (official)
        orders, inverses, moves = zigzag_orders(*grid, hidden.device)
        # one grouped scan: snake k is group k of B/C and channels k*E..(k+1)*E-1 of u, dt, A, D
        us = x[:, :, orders].transpose(1, 2).reshape(batch, -1, length)  # (B, 4E, L)
        Bs = B.transpose(1, 2)[:, None] + self.direction_Bs[moves].transpose(1, 2).to(B.dtype)  # (B, 4, N, L)
        Cs = C.transpose(1, 2)[:, None].expand(-1, NUM_SNAKES, -1, -1)
        ys = selective_scan(
            us,
            dt.repeat(1, NUM_SNAKES, 1),
            (-torch.exp(at_least_fp32(self.A_log))).repeat(NUM_SNAKES, 1),
            Bs.contiguous(),
            Cs.contiguous(),
            at_least_fp32(self.D).repeat(NUM_SNAKES),
            delta_bias=at_least_fp32(self.dt_proj.bias).repeat(NUM_SNAKES),
            delta_softplus=True,
        ).view(batch, NUM_SNAKES, self.d_inner, length)
        y = sum(ys[:, k][..., inverses[k]] for k in range(NUM_SNAKES)).to(z.dtype)  # back to raster order, summed
        return self.out_proj(y.transpose(1, 2) * F.silu(z))


class PlainMambaBlock(nn.Module):
    """x + drop_path(mixer(LayerNorm(x))), then (L1's first block only) depthwise 3x3 conv + BN + GELU, no residual."""

    def __init__(self, dim: int, mixer: PlainMamba2D, drop_path: float = 0.0, with_dwconv: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.dw = (
            nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False), nn.BatchNorm2d(dim), nn.GELU())
            if with_dwconv
            else None
        )
        self.mixer = mixer
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        x = x + self.drop_path(self.mixer(self.norm(x), grid))
        if self.dw is not None:
            x = self.dw(x.transpose(1, 2).unflatten(-1, grid)).flatten(2).transpose(1, 2)
        return x


class ConvPatchEmbed(nn.Module):
    """7x7 stride-2 conv + BN + ReLU, `num_convs` x (3x3 conv + BN + ReLU), pad to a multiple of 8 at the bottom and
    right (mmcv's AdaptivePadding 'corner'), 8x8 stride-8 projection: (B, 3, H, W) -> (B, ceil(ceil(H/2)/8), ..., C)."""

    def __init__(self, in_chans: int, dim: int, num_convs: int, stem_dim: int = 64, patch: int = 8):
        super().__init__()
        self.patch = patch
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_dim, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(stem_dim), nn.ReLU()
        )
        convs = []
        for _ in range(num_convs):
            convs += [nn.Conv2d(stem_dim, stem_dim, 3, padding=1, bias=False), nn.BatchNorm2d(stem_dim), nn.ReLU()]
        self.convs = nn.Sequential(*convs)
        self.projection = nn.Conv2d(stem_dim, dim, patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        x = self.convs(self.stem(x))
        height, width = x.shape[-2:]
        x = F.pad(x, (0, -width % self.patch, 0, -height % self.patch))
        return self.projection(x).permute(0, 2, 3, 1)


class PlainMamba(GridTokenModel):
    """PlainMamba with timm's model API; features are the (B, H*W, C) tokens after the final norm (no class token)."""

    num_prefix_tokens = 0

    def __init__(
        self,
        embed_dim: int = 192,
        depth: int = 24,
        num_convs: int = 1,
        dwconv_blocks: tuple[int, ...] = (),
        *,
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        d_state: int = 16,
        expand: int = 2,
        conv_size: int = 7,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.global_pool = check_global_pool(global_pool, PATCH_POOLS)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = embed_dim
        self.grid_size = (-(-img_size // 16),) * 2
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dim))
        self.patch_embed = ConvPatchEmbed(in_chans, embed_dim, num_convs)
        self.pos_drop = nn.Dropout(drop_rate)
        drop_paths = calculate_drop_path_rates(drop_path_rate, depth)
        mixer = partial(PlainMamba2D, embed_dim, d_state=d_state, expand=expand, conv_size=conv_size)
        self.blocks = nn.Sequential(
            *(PlainMambaBlock(embed_dim, mixer(), drop_paths[i], i in dwconv_blocks) for i in range(depth))
        )
        self.feature_info = [dict(num_chs=embed_dim, reduction=16, module=f"blocks.{i}") for i in range(depth)]
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        trunc_normal_(self.pos_embed, std=0.02)
        self._init_head()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The parameters the official custom_keys (decay_mult 0) match, for the "mmcls" rule.

        Keys of ChenhongyiYang/PlainMamba@0975a1d plain_mamba_configs/plain_mamba_l{1,2,3}_in1k_300e.py paramwise_cfg,
        merged by mmcv's Config with those of its _base_ configs/_base_/schedules/imagenet_bs1024_adamw_swin.py.
        mmcv matches a key as a substring of f"{prefix}.{name}" (official names sit under "backbone."); ours keep
        the official leaf names, so a key is matched against "." + our name.
        """
        keys = (".cls_token", ".pos_embed", ".A_log", ".D", ".direction_Bs")
        keys += (".absolute_pos_embed", ".relative_position_bias_table")  # the Swin base's: they match nothing here
        return {n for n, _ in self.named_parameters() if any(k in f".{n}" for k in keys)}

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool, PATCH_POOLS)
        self._new_head(num_classes)

    def _position_tables(self) -> PositionTables:
        # the official backbone resizes pos_embed in its forward with mmcls's resize_pos_embed (F.interpolate
        # bicubic, align_corners=False, no antialias), as `resample_grid` does; no class token
        return {"pos_embed": (0, resample_grid)}

    def _grid_embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.patch_embed(x)
        grid = (x.shape[1], x.shape[2])
        x = x.flatten(1, 2) + resample_grid(self.pos_embed, grid, self.grid_size)
        return self.pos_drop(x), grid


_README = "ChenhongyiYang/PlainMamba README.md @0975a1d (#Params without the classifier); FLOPs: the paper"

# name: (architecture, published numbers, release weights)
VARIANTS: dict[str, tuple[dict, Published, dict]] = {
    "plainmamba_l1": (
        dict(embed_dim=192, depth=24, num_convs=1, dwconv_blocks=(0,)),
        Published(7.3, 3.0, 77.9, _README + "; PlainMamba-L1"),
        hub_weights("ChenhongyiYang/PlainMamba", "l1.pth"),
    ),
    "plainmamba_l2": (
        dict(embed_dim=384, depth=24, num_convs=2),
        Published(25.7, 8.1, 81.6, _README + "; PlainMamba-L2"),
        hub_weights("ChenhongyiYang/PlainMamba", "l2.pth"),
    ),
    "plainmamba_l3": (
        dict(embed_dim=448, depth=36, num_convs=2),
        Published(50.5, 14.4, 82.3, _README + "; PlainMamba-L3"),
        hub_weights("ChenhongyiYang/PlainMamba", "l3.pth"),
    ),
    # Two narrow blocks (the first with L1's depthwise conv) on a 4x4 grid: keeps registry-wide tests fast.
    "plainmamba_test": (
        dict(embed_dim=32, depth=2, num_convs=1, dwconv_blocks=(0,), img_size=64, d_state=4),
        Published(source="test variant"),
        dict(input_size=(3, 64, 64)),
    ),
}


register_variants(
    VARIANTS,
    family="plainmamba",
    model=PlainMamba,
    # the official test pipeline: shorter side 256 (bicubic), centre crop 224, ImageNet mean/std
    cfg=dict(crop_pct=0.875, interpolation="bicubic", first_conv="patch_embed.stem.0", classifier="head", tag="in1k"),
    recipes=RECIPES,
    fallback=Fallback("plainmamba_l1", "a test variant: PlainMamba-L1's recipe"),
    converter=convert_plain_mamba,
    dense=DENSE,
)

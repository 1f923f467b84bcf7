"""LocalMamba (Huang et al., 2024): windowed selective scans with per-layer scan directions chosen by a search.

A scan direction is a permutation of the tokens, not a model: `h` (row-major), `v` (column-major), `wK` (K x K
windows in row-major window order, row-major inside a window; a map K does not divide is padded with zero tokens
*inside* the window order, real scan steps that are cropped after the reverse) and each one's `_flip` (the whole
sequence reversed). `scan_indices` turns a direction into (order, inverse) index tensors.

Two models reuse the families LocalMamba builds on:
- LocalVim: Vim's blocks (RMSNorm, float32 residual, `vim.Block`) with a mixer that runs 4 searched directions, each
  with its own conv1d / x_proj / dt_proj / A / D (the arithmetic of `mamba_direction`, all directions in one grouped
  call of each op), gates each with a shared `BiAttn` and sums them (not averages) before out_proj. RoPE rotates
  the stream before every block (the official code rotates hidden states and residual, which is the same since the
  rotation is linear); no class token, mean pool. The middle-class-token variant has no RoPE; its class token sits
  mid-sequence in every direction.
- LocalVMamba: VMamba v0 (`vmamba.VMamba`) whose SS2D takes `MultiScan` (searched directions + `BiAttn` on each
  direction before the sum) in place of the cross-scan; eps 1e-5 everywhere, as our VMamba already has.

Official names are kept inside the mixers (`A_log_0`, `conv1d_0`, `attn.global_reduce`, `multi_scan.attn`, ...);
`mambaout.checkpoints.local_mamba_layout` renames the model-level ones.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, calculate_drop_path_rates, lecun_normal_, trunc_normal_
from torch import Tensor, nn

from ..checkpoints.layouts import convert_vim
from ..checkpoints.local_mamba_layout import convert_local_vmamba
from ..errors import check_patch_multiple
from ..ops.selective_scan import selective_scan
from ..recipes import Fallback
from ..recipes.local_mamba import DENSE, RECIPES
from ..registry import Published, register_variants
from ._mamba_layers import at_least_fp32, init_dt_projection_, init_s4d_real_
from ._pooling import check_global_pool
from ._positions import middle_token_index, resample_grid, resample_mid_cls_pos_embed
from ._token_model import GLOBAL_POOLS, PATCH_POOLS, GridTokenModel, PositionTables
from .vim import Block, RMSNorm
from .vmamba import VMAMBA_V0, VMamba

# ---------------------------------------------------------------------------------------------------------------------
# Scan directions as token permutations

SCAN_KINDS = ("h", "v", "w")


def parse_direction(direction: str) -> tuple[str, int, bool]:
    """'w7_flip' -> ('w', 7, True); 'h' -> ('h', 0, False). Unknown names raise ValueError."""
    name, flip = (direction[: -len("_flip")], True) if direction.endswith("_flip") else (direction, False)
    kind, size = name[:1], name[1:]
    if kind in ("h", "v") and not size:
        return kind, 0, flip
    if kind == "w" and size.isdigit() and int(size) > 0:
        return kind, int(size), flip
    raise ValueError(f"unknown scan direction {direction!r}: use h, v or wK (K x K windows), each optionally _flip")


def scan_indices(direction: str, height: int, width: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """(order, inverse) of a direction on a height x width map of raster-ordered tokens.

    order[t] is the raster index of the token visited at step t, or height * width for a padding token (a zero);
    inverse[p] is the step at which raster token p is visited, so that scanned[..., inverse] undoes the scan.
    """
    order, inverse = _scan_indices(direction, height, width)
    return torch.tensor(order, device=device), torch.tensor(inverse, device=device)  # copies: the cache stays intact


@functools.lru_cache(maxsize=512)
def _scan_indices(direction: str, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    # numpy, not tensors: a cache filled while torch.export or torch.compile traces would otherwise keep fake tensors
    kind, size, flip = parse_direction(direction)
    tokens = height * width
    grid = np.arange(tokens).reshape(height, width)
    if kind == "h":
        order = grid.flatten()
    elif kind == "v":
        order = grid.T.flatten()
    else:
        rows, cols = -(-height // size), -(-width // size)
        padded = np.full((rows * size, cols * size), tokens)
        padded[:height, :width] = grid
        # (window row, row in window, window column, column in window) -> windows first, raster inside each
        order = padded.reshape(rows, size, cols, size).transpose(0, 2, 1, 3).flatten()
    if flip:
        order = order[::-1].copy()
    real = order < tokens
    inverse = np.empty(tokens, dtype=np.int64)
    inverse[order[real]] = np.arange(order.size)[real]
    return order.astype(np.int64), inverse


def local_scan(x: Tensor, direction: str, height: int, width: int) -> Tensor:
    """(..., H*W) raster-ordered tokens on the last axis -> (..., L') in scan order, padding tokens zero."""
    order, _ = scan_indices(direction, height, width, x.device)
    return F.pad(x, (0, 1))[..., order]


def local_reverse(y: Tensor, direction: str, height: int, width: int) -> Tensor:
    """(..., L') in scan order -> (..., H*W) raster order (padding steps dropped): the inverse of `local_scan`."""
    _, inverse = scan_indices(direction, height, width, y.device)
    return y[..., inverse]


def grouped_scan_indices(
    directions: Sequence[str],
    height: int,
    width: int,
    cls_index: int | None = None,
    device: torch.device | None = None,
) -> tuple[Tensor, Tensor]:
    """(orders (K, L), inverses (K, T)) of several directions at once, for sequences of T = H*W tokens, plus a class
    token at position `cls_index` when given (T = H*W + 1).

    orders[k, t] is the sequence position visited at step t of direction k, or T for a zero token (the direction's
    own padding, and padding at its end up to the longest direction: a causal scan never looks ahead); a class token
    is visited at step `cls_index` of every direction. inverses[k, p] is the step at which position p is visited.
    """
    orders, inverses = _grouped_scan_indices(tuple(directions), height, width, cls_index)
    return torch.tensor(orders, device=device), torch.tensor(inverses, device=device)


@functools.lru_cache(maxsize=512)
def _grouped_scan_indices(
    directions: tuple[str, ...], height: int, width: int, cls_index: int | None
) -> tuple[np.ndarray, np.ndarray]:
    orders, inverses = zip(*(_scan_indices(d, height, width) for d in directions))
    if cls_index is not None:
        # patch p (and the padding index H*W) sits one position later from the class token on; the class token is
        # put in at step cls_index of each scanned sequence, so steps from there on move one later too
        orders = [np.insert(o + (o >= cls_index), cls_index, cls_index) for o in orders]
        inverses = [np.insert(i + (i >= cls_index), cls_index, cls_index) for i in inverses]
    zero = height * width + (cls_index is not None)
    longest = max(o.size for o in orders)
    orders = [np.pad(o, (0, longest - o.size), constant_values=zero) for o in orders]
    return np.stack(orders), np.stack(inverses)


def scan_steps(tokens: Tensor, orders: Tensor) -> Tensor:
    """(B, C, T) tokens, (K, L) orders -> (B, K, C, L): every direction's sequence in one gather (the tokens are read
    in place, not copied K times; a gather beats indexing the token axis and transposing, forward and backward)."""
    batch, channels, _ = tokens.shape
    directions = orders.shape[0]
    index = orders[None, :, None].expand(batch, -1, channels, -1)
    return torch.gather(tokens[:, None].expand(-1, directions, -1, -1), 3, index)


def unscan_steps(ys: Tensor, inverses: Tensor) -> Tensor:
    """(B, K, C, L) scanned sequences, (K, T) inverses -> (B, K, T, C) in token order, channels last (BiAttn's
    layout). One transposing copy, then whole rows picked by index_select: 3x faster than a gather on the
    transposed view, and half the time in training."""
    batch, directions, channels, length = ys.shape
    rows = inverses + length * torch.arange(directions, device=inverses.device)[:, None]
    steps = ys.transpose(2, 3).reshape(batch, directions * length, channels)
    return steps.index_select(1, rows.flatten()).view(batch, directions, inverses.shape[1], channels)


class BiAttn(nn.Module):
    """LocalMamba's per-direction channel gate: x * sigmoid(MLP(mean over tokens of LayerNorm(x))), on (B, L, C).

    The gate is computed from the normalised tokens but multiplies the un-normalised ones (the official code).
    """

    def __init__(self, dim: int, ratio: float = 0.125):
        super().__init__()
        reduced = int(dim * ratio)
        self.norm = nn.LayerNorm(dim)
        self.global_reduce = nn.Linear(dim, reduced)
        self.act = nn.GELU()
        self.channel_select = nn.Linear(reduced, dim)

    def forward(self, x: Tensor) -> Tensor:
        summary = self.act(self.global_reduce(self.norm(x).mean(1, keepdim=True)))
        return x * torch.sigmoid(self.channel_select(summary))


def gated_sum(attn: BiAttn, ys: Tensor) -> Tensor:
    """(B, K, T, C) directions in token order -> (B, T, C): each gated by the shared BiAttn (its mean runs over that
    direction's tokens only), summed over the directions."""
    return attn(ys.flatten(0, 1)).unflatten(0, ys.shape[:2]).sum(1)


# ---------------------------------------------------------------------------------------------------------------------
# LocalVMamba: VMamba's SS2D with searched scan orders


class MultiScan(nn.Module):
    """The scan orders of one LocalVMamba block, in the interface of `vmamba.CrossScan`.

    All directions go through one grouped selective scan: each is padded at its end to the longest one (a causal scan
    never looks ahead, so the end padding is harmless), then cropped, reversed, gated by the shared `attn`, and summed.
    """

    def __init__(self, directions: Sequence[str], dim: int):
        super().__init__()
        for direction in directions:
            parse_direction(direction)
        self.directions = tuple(directions)
        self.num_directions = len(self.directions)
        self.attn = BiAttn(dim)

    def scan(self, x: Tensor) -> Tensor:
        orders, _ = grouped_scan_indices(self.directions, *x.shape[-2:], device=x.device)
        return scan_steps(F.pad(x.flatten(2), (0, 1)), orders)  # token H*W: the zero that padding steps read

    def merge(self, ys: Tensor, height: int, width: int) -> Tensor:
        _, inverses = grouped_scan_indices(self.directions, height, width, device=ys.device)
        out = gated_sum(self.attn, unscan_steps(ys, inverses))
        return out.transpose(1, 2).unflatten(2, (height, width))  # channels last in memory, as SS2D goes on

    def extra_repr(self) -> str:
        return ", ".join(self.directions)


@dataclass(frozen=True)
class SearchedScans:
    """VMamba's `multi_scans` hook: block number -> that block's MultiScan, from one list of directions per block."""

    directions: tuple[tuple[str, ...], ...]

    def __call__(self, block: int, dim: int) -> MultiScan:
        if block >= len(self.directions):
            raise ValueError(f"{len(self.directions)} scan-direction lists for more blocks (block {block})")
        return MultiScan(self.directions[block], dim)


# ---------------------------------------------------------------------------------------------------------------------
# LocalVim


class MultiScanMamba(nn.Module):
    """LocalVim's mixer: in_proj -> per direction (x and z permuted together) Vim's scan -> reverse -> BiAttn, summed
    -> out_proj. With a middle class token, the token is taken out before the permutation and put back in the middle
    of each direction's sequence, so it is scanned mid-sequence in every direction.

    All directions run as one: stacked (B, K d_inner, L), each padded at its end to the longest (as `MultiScan`),
    through one grouped conv, projection and selective scan; the parameters stay per direction (official keys).
    """

    def __init__(
        self,
        dim: int,
        directions: Sequence[str],
        *,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        num_layers: int = 1,
        mid_cls_token: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
    ):
        super().__init__()
        for direction in directions:
            parse_direction(direction)
        self.directions = tuple(directions)
        self.d_inner = expand * dim
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16)
        self.mid_cls_token = mid_cls_token
        # the official state_dict order: A_log_i, D_i of every direction, in_proj, then conv1d_i, x_proj_i, dt_proj_i
        for i in range(len(self.directions)):
            setattr(self, f"A_log_{i}", nn.Parameter(torch.empty(self.d_inner, d_state)))
            setattr(self, f"D_{i}", nn.Parameter(torch.empty(self.d_inner)))
        self.in_proj = nn.Linear(dim, 2 * self.d_inner, bias=False)
        for i in range(len(self.directions)):
            inner = self.d_inner
            setattr(self, f"conv1d_{i}", nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1))
            setattr(self, f"x_proj_{i}", nn.Linear(inner, self.dt_rank + 2 * d_state, bias=False))
            setattr(self, f"dt_proj_{i}", nn.Linear(self.dt_rank, inner))
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False)
        self.attn = BiAttn(self.d_inner)
        self._reset_ssm(dt_min, dt_max, dt_init_floor, num_layers)

    @torch.no_grad()
    def _reset_ssm(self, dt_min: float, dt_max: float, dt_init_floor: float, num_layers: int) -> None:
        """Mamba's init per direction (S4D-real A, D = 1, log-uniform dt), out_proj scaled by 1/sqrt(depth)."""
        for i in range(len(self.directions)):
            _, _, dt_proj, A_log, D = self.direction(i)
            init_s4d_real_(A_log)
            D.fill_(1.0)
            init_dt_projection_(dt_proj.weight, dt_proj.bias, dt_min, dt_max, dt_init_floor)
        nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))
        self.out_proj.weight /= math.sqrt(num_layers)

    def direction(self, i: int) -> tuple[nn.Conv1d, nn.Linear, nn.Linear, Tensor, Tensor]:
        """(conv1d, x_proj, dt_proj, A_log, D) of direction i."""
        return tuple(getattr(self, f"{name}_{i}") for name in ("conv1d", "x_proj", "dt_proj", "A_log", "D"))

    def forward(self, hidden: Tensor, grid: tuple[int, int]) -> Tensor:
        tokens = hidden.shape[1]
        cls_index = middle_token_index(tokens - 1) if self.mid_cls_token else None
        orders, inverses = grouped_scan_indices(self.directions, *grid, cls_index, hidden.device)
        # (B, 2 d_inner, T + 1): token T is the zero that padding steps read
        xz = F.pad(self.in_proj(hidden).transpose(1, 2), (0, 1))
        x, z = (scan_steps(half, orders).flatten(1, 2) for half in xz.chunk(2, dim=1))  # (B, K d_inner, L)
        y = self._scan(x, z).unflatten(1, (len(self.directions), self.d_inner))
        return self.out_proj(gated_sum(self.attn, unscan_steps(y, inverses)))

    def _stacked(self, name: str) -> list[Tensor]:
        return [getattr(self, f"{name}_{i}") for i in range(len(self.directions))]

    def _scan(self, x: Tensor, z: Tensor) -> Tensor:
        """`mamba_direction` of every direction at once on (B, K d_inner, L): one depthwise causal conv, one
        batched x_proj and dt_proj, one grouped selective scan (direction k is group k of B and C). The stacked weights
        are built from the per-direction parameters on every call, so gradients and load_state_dict reach them."""
        conv = self.conv1d_0
        weight = torch.cat([c.weight for c in self._stacked("conv1d")])
        bias = torch.cat([c.bias for c in self._stacked("conv1d")])
        # padding kernel - 1 on both sides and keeping the first L outputs: `_mamba_layers.causal_conv1d`
        x = F.conv1d(x, weight, bias, conv.stride, conv.padding, conv.dilation, groups=weight.shape[0])
        x = F.silu(x[..., : z.shape[-1]])
        batch, length = x.shape[0], x.shape[-1]
        x_proj = torch.stack([p.weight for p in self._stacked("x_proj")])  # (K, dt_rank + 2 N, d_inner)
        dt, B, C = torch.matmul(x_proj, x.view(batch, len(self.directions), self.d_inner, length)).split(
            [self.dt_rank, self.d_state, self.d_state], dim=2
        )
        # dt_proj's bias goes into the scan as delta_bias (softplus(dt + bias)), as in `_mamba_layers.mamba_direction`
        dt = torch.matmul(torch.stack([p.weight for p in self._stacked("dt_proj")]), dt)
        return selective_scan(
            x,
            dt.flatten(1, 2),
            -torch.exp(at_least_fp32(torch.cat(self._stacked("A_log")))),
            B.contiguous(),
            C.contiguous(),
            at_least_fp32(torch.cat(self._stacked("D"))),
            z,
            delta_bias=at_least_fp32(torch.cat([p.bias for p in self._stacked("dt_proj")])),
            delta_softplus=True,
        )

    def extra_repr(self) -> str:
        return ", ".join(self.directions)


class GridBlock(Block):
    """Vim's block for mixers that need the patch grid: x + drop_path(mixer(RMSNorm(x), grid))."""

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        return x + self.drop_path(self.mixer(self.norm(x), grid))


def rotate_pairs(x: Tensor) -> Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): adjacent channel pairs rotated by 90 degrees."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


class VisionRope(nn.Module):
    """2D rotary position embedding (EVA's VisionRotaryEmbeddingFast, as LocalVim uses it): the first half of the
    channels rotates with the row, the second half with the column, adjacent channel pairs sharing a frequency.

    `freqs_cos` / `freqs_sin` (H*W, C) are persistent buffers, as in the official state_dict; other grids resize them.
    """

    def __init__(self, dim: int, grid: tuple[int, int], pretrain_grid: int = 14, theta: float = 10000.0):
        super().__init__()
        half = dim // 2
        freqs = 1.0 / theta ** (torch.arange(0, half, 2)[: half // 2].float() / half)

        def axis(length: int) -> Tensor:  # (length, half): position t / length * pretrain_grid, each freq twice
            positions = torch.arange(length) / length * pretrain_grid
            return torch.outer(positions, freqs).repeat_interleave(2, dim=-1)

        rows, cols = axis(grid[0]), axis(grid[1])
        table = torch.cat(
            (rows[:, None].expand(-1, grid[1], -1), cols[None, :].expand(grid[0], -1, -1)), dim=-1
        ).reshape(grid[0] * grid[1], -1)
        self.grid = tuple(grid)
        self.register_buffer("freqs_cos", table.cos())
        self.register_buffer("freqs_sin", table.sin())

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        cos = resample_grid(self.freqs_cos, grid, self.grid)
        sin = resample_grid(self.freqs_sin, grid, self.grid)
        return x * cos + rotate_pairs(x) * sin


def _pools(has_cls_token: bool) -> tuple[str, ...]:
    return GLOBAL_POOLS if has_cls_token else PATCH_POOLS


class LocalVisionMamba(GridTokenModel):
    """LocalVim with timm's model API; features are tokens (B, H*W [+ 1], C) after the final norm."""

    def __init__(
        self,
        embed_dim: int = 192,
        depth: int = 20,
        directions: Sequence[Sequence[str]] = (("h", "h_flip", "w2", "w2_flip"),) * 20,
        *,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        norm_eps: float = 1e-5,
        mid_cls_token: bool = False,
        rope: bool = True,
        global_pool: str | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if len(directions) != depth:
            raise ValueError(f"{len(directions)} scan-direction lists for {depth} layers")
        self.num_prefix_tokens = int(mid_cls_token)
        if global_pool is None:  # the official read-out: the middle class token, else the mean of the tokens
            global_pool = "token" if mid_cls_token else "avg"
        self.global_pool = check_global_pool(global_pool, _pools(mid_cls_token))
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.patch_size = patch_size
        self.num_features = self.head_hidden_size = embed_dim
        if mid_cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.patch_embed = PatchEmbed(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            output_fmt="NHWC",
            strict_img_size=False,
        )
        self.grid_size = self.patch_embed.grid_size
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + int(mid_cls_token), embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.rope = VisionRope(embed_dim, self.grid_size) if rope else None
        self.head_drop = nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        drop_paths = calculate_drop_path_rates(drop_path_rate, depth)
        mixer = partial(
            MultiScanMamba,
            embed_dim,
            d_state=d_state,
            expand=expand,
            d_conv=d_conv,
            num_layers=depth,
            mid_cls_token=mid_cls_token,
        )
        self.blocks = nn.Sequential(
            *(GridBlock(embed_dim, mixer(directions[i]), norm_eps, drop_paths[i]) for i in range(depth))
        )
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks.{i}") for i in range(depth)]
        self.norm = RMSNorm(embed_dim, eps=norm_eps)
        self._init_parameters()

    def _init_parameters(self) -> None:
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        trunc_normal_(self.pos_embed, std=0.02)
        if self.num_prefix_tokens:
            trunc_normal_(self.cls_token, std=0.02)
        for block in self.blocks:
            for linear in (block.mixer.in_proj, block.mixer.attn.global_reduce, block.mixer.attn.channel_select):
                trunc_normal_(linear.weight, std=0.02)
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)
        self._init_head()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """LocalVim's names (hunto/LocalMamba@75e5d1f classification/lib/models/local_vim.py:305-306), where present.

        Nothing else: the toolbox's optimizer (classification/lib/utils/optim.py:41-63) never reads Mamba's
        `_no_weight_decay` mark, so the 2-D A_log_<k> are decayed officially; the 1-D D_<k> are exempt.
        """
        return {"pos_embed", "cls_token", "dist_token"} & {name for name, _ in self.named_parameters()}

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool, _pools(bool(self.num_prefix_tokens)))
        self._new_head(num_classes)

    def cls_token_index(self, num_patches: int) -> int:
        return middle_token_index(num_patches)

    def _position_tables(self) -> PositionTables:
        # hunto/LocalMamba Backbone_LocalVisionMamba.load_pretrained: pos_embed and the RoPE tables resized with
        # mmseg's resize (F.interpolate bicubic, align_corners=False, no antialias), as `resample_grid` does
        if self.num_prefix_tokens:
            tables = {"pos_embed": (1, partial(resample_mid_cls_pos_embed, antialias=False))}
        else:
            tables = {"pos_embed": (0, resample_grid)}
        if self.rope is not None:
            tables.update({"rope.freqs_cos": (0, resample_grid), "rope.freqs_sin": (0, resample_grid)})
        return tables

    def _grid_embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        check_patch_multiple(*x.shape[-2:], self.patch_size)
        x = self.patch_embed(x)
        grid = (x.shape[1], x.shape[2])
        x = x.flatten(1, 2)
        if self.num_prefix_tokens:
            index = middle_token_index(x.shape[1])
            x = torch.cat((x[:, :index], self.cls_token.expand(x.shape[0], -1, -1), x[:, index:]), dim=1)
            pos_embed = resample_mid_cls_pos_embed(self.pos_embed, grid, self.grid_size, antialias=False)
        else:
            pos_embed = resample_grid(self.pos_embed, grid, self.grid_size)
        return at_least_fp32(self.pos_drop(x + pos_embed)), grid

    def _before_block(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        return x if self.rope is None else self.rope(x, grid)


# ---------------------------------------------------------------------------------------------------------------------
# The searched scan directions (classification/lib/models/local_vim.py, local_vmamba.py @75e5d1f)

LOCAL_VIM_TINY_DIRECTIONS = (
    ("h", "v_flip", "w7", "w7_flip"),
    ("h_flip", "w2_flip", "w7", "w7_flip"),
    ("h", "h_flip", "v", "w7"),
    ("h", "h_flip", "v", "v_flip"),
    ("h", "h_flip", "v", "v_flip"),
    ("h", "h_flip", "v", "v_flip"),
    ("h_flip", "v", "v_flip", "w7"),
    ("h_flip", "v", "v_flip", "w2_flip"),
    ("h", "h_flip", "v", "v_flip"),
    ("h", "h_flip", "v", "v_flip"),
    ("h", "v", "v_flip", "w2"),
    ("h", "v", "v_flip", "w2_flip"),
    ("h", "h_flip", "v_flip", "w7"),
    ("h_flip", "v", "v_flip", "w2"),
    ("h", "h_flip", "v", "v_flip"),
    ("h", "v", "w2", "w2_flip"),
    ("v", "v_flip", "w2", "w7"),
    ("h", "h_flip", "v", "w2"),
    ("h", "h_flip", "w2_flip", "w7"),
    ("v", "v_flip", "w2", "w2_flip"),
)
# `local_vim_small` is defined twice in local_vim.py; the second definition (no search) is the one Python and timm's
# registry, hence the training CLI, use. (The first, dead one repeats the Tiny lists; see official_notes.md.)
LOCAL_VIM_SMALL_DIRECTIONS = (("h", "h_flip", "w2", "w2_flip"),) * 20
LOCAL_VMAMBA_TINY_DIRECTIONS = (
    ("h", "h_flip", "w7", "w7_flip"),
    ("h_flip", "v_flip", "w2", "w2_flip"),
    ("h_flip", "v_flip", "w2_flip", "w7"),
    ("h_flip", "v", "v_flip", "w2"),
    ("h", "h_flip", "v_flip", "w2_flip"),
    ("h_flip", "v_flip", "w2", "w2_flip"),
    ("h", "w2_flip", "w7", "w7_flip"),
    ("h", "h_flip", "v", "v_flip"),
    ("h", "v_flip", "w7", "w7_flip"),
    ("h_flip", "v", "w2", "w7_flip"),
    ("v", "v_flip", "w2", "w7_flip"),
    ("h", "h_flip", "v_flip", "w2_flip"),
    ("v_flip", "w2_flip", "w7", "w7_flip"),
    ("h_flip", "v_flip", "w2_flip", "w7_flip"),
    ("h_flip", "v", "w7", "w7_flip"),
)
LOCAL_VMAMBA_SMALL_DIRECTIONS = (
    ("h", "v", "v_flip", "w7_flip"),
    ("h", "h_flip", "v", "w7"),
    ("h_flip", "v", "v_flip", "w7"),
    ("h_flip", "v", "w2_flip", "w7"),
    ("h_flip", "v", "w2_flip", "w7"),
    ("h_flip", "v_flip", "w2", "w7_flip"),
    ("h_flip", "v", "v_flip", "w7"),
    ("h", "v", "v_flip", "w7"),
    ("h", "v", "v_flip", "w7"),
    ("h", "v", "v_flip", "w7_flip"),
    ("h", "h_flip", "v", "v_flip"),
    ("h", "v", "v_flip", "w2"),
    ("v", "v_flip", "w2_flip", "w7"),
    ("h", "h_flip", "v", "w2"),
    ("h_flip", "v", "v_flip", "w7_flip"),
    ("h", "h_flip", "v", "v_flip"),
    ("h", "v", "v_flip", "w7_flip"),
    ("h", "v", "v_flip", "w7_flip"),
    ("h", "h_flip", "v_flip", "w7"),
    ("h_flip", "v_flip", "w2_flip", "w7"),
    ("h_flip", "v", "v_flip", "w7_flip"),
    ("v", "v_flip", "w7", "w7_flip"),
    ("h", "v", "v_flip", "w7_flip"),
    ("h_flip", "v", "v_flip", "w2"),
    ("h", "v", "v_flip", "w2_flip"),
    ("h", "h_flip", "v", "w7"),
    ("h", "h_flip", "w7", "w7_flip"),
    ("h", "v_flip", "w2", "w2_flip"),
    ("h", "v_flip", "w2", "w7"),
    ("h", "v", "v_flip", "w7_flip"),
    ("h_flip", "v", "w2_flip", "w7"),
    ("h_flip", "v_flip", "w7", "w7_flip"),
    ("h", "v", "w7", "w7_flip"),
)
# Test variants: every kind of direction, windows that do (w2 on 4x4) and do not (w3, w7) divide the map
_TEST_DIRECTIONS = (("h", "v_flip", "w2", "w7_flip"), ("h_flip", "v", "w3", "w2_flip"))

# ---------------------------------------------------------------------------------------------------------------------
# Registered variants: name -> (builder, published numbers, release weights)

_RELEASE = "https://github.com/hunto/LocalMamba/releases/download/v1.0.0/{}.ckpt"
_README = "hunto/LocalMamba README.md @75e5d1f, ImageNet classification table"

VARIANTS: dict[str, tuple[str, dict, Published, dict]] = {
    "local_vim_tiny": (
        "local_vim",
        dict(embed_dim=192, depth=20, directions=LOCAL_VIM_TINY_DIRECTIONS),
        Published(8, 1.5, 76.2, _README + "; LocalVim-T (FLOPs by its own hand formula, see README)"),
        dict(url=_RELEASE.format("local_vim_tiny")),
    ),
    "local_vim_tiny_middle_cls_token": (
        "local_vim",
        dict(embed_dim=192, depth=20, directions=LOCAL_VIM_TINY_DIRECTIONS, mid_cls_token=True, rope=False),
        Published(8, 1.5, 77.8, _README + "; LocalVim-T (mid_cls_token)"),
        dict(url=_RELEASE.format("local_vim_tiny_middle_cls_token")),
    ),
    "local_vim_small": (
        "local_vim",
        dict(embed_dim=384, depth=20, directions=LOCAL_VIM_SMALL_DIRECTIONS),
        Published(28, 4.8, 81.1, _README + "; LocalVim-S"),
        # The README links local_vssm_small.ckpt (LocalVMamba-S's file) here; this name follows the release's own
        # pattern (local_vim_tiny.ckpt, log_local_vim_small.txt) and could not be checked offline.
        dict(url=_RELEASE.format("local_vim_small")),
    ),
    "local_vmamba_tiny": (
        "local_vmamba",
        dict(depths=(2, 2, 9, 2), dims=(96, 192, 384, 768), multi_scans=SearchedScans(LOCAL_VMAMBA_TINY_DIRECTIONS)),
        Published(26, 5.7, 82.7, _README + "; LocalVMamba-T (no checkpoint released: 'retraining...')"),
        dict(),
    ),
    "local_vmamba_small": (
        "local_vmamba",
        dict(depths=(2, 2, 27, 2), dims=(96, 192, 384, 768), multi_scans=SearchedScans(LOCAL_VMAMBA_SMALL_DIRECTIONS)),
        Published(50, 11.4, 83.7, _README + "; LocalVMamba-S"),
        dict(url=_RELEASE.format("local_vssm_small")),
    ),
    # Narrow, shallow, 4x4 token grids / 64x64 images: keeps registry-wide tests fast. No weights.
    "local_vim_test": (
        "local_vim",
        dict(embed_dim=32, depth=2, directions=_TEST_DIRECTIONS, img_size=64, d_state=4),
        Published(source="test variant"),
        dict(input_size=(3, 64, 64)),
    ),
    "local_vim_mid_cls_test": (
        "local_vim",
        dict(
            embed_dim=32, depth=2, directions=_TEST_DIRECTIONS, img_size=64, d_state=4, mid_cls_token=True, rope=False
        ),
        Published(source="test variant"),
        dict(input_size=(3, 64, 64)),
    ),
    "local_vmamba_test": (
        "local_vmamba",
        dict(
            depths=(1, 1, 2, 1),
            dims=(8, 16, 24, 32),
            multi_scans=SearchedScans((*_TEST_DIRECTIONS, *_TEST_DIRECTIONS, _TEST_DIRECTIONS[0])),
            d_state=4,
        ),
        Published(source="test variant"),
        dict(input_size=(3, 64, 64)),
    ),
}


def build_local_vmamba(*, d_state: int = 16, **kwargs) -> VMamba:
    """VMamba v0 with LocalMamba's scans (`d_state` only differs in the test variant)."""
    return VMamba(version=replace(VMAMBA_V0, d_state=d_state), **kwargs)


FALLBACKS = {
    "local_vim_test": Fallback("local_vim_tiny", "a test variant: LocalVim-T's recipe"),
    "local_vim_mid_cls_test": Fallback("local_vim_tiny", "a test variant: LocalVim-T's recipe"),
    "local_vmamba_test": Fallback("local_vmamba_tiny", "a test variant: LocalVMamba-T's recipe"),
}


_COMMON_CFG = dict(crop_pct=0.875, interpolation="bicubic", tag="in1k")
register_variants(  # LocalVim is laid out as Vim
    {name: row for name, (family, *row) in VARIANTS.items() if family == "local_vim"},
    family="local_vim",
    model=LocalVisionMamba,
    cfg=dict(first_conv="patch_embed.proj", classifier="head", **_COMMON_CFG),
    recipes=RECIPES,
    fallback=FALLBACKS,
    converter=convert_vim,
    dense=DENSE,
)
register_variants(
    {name: row for name, (family, *row) in VARIANTS.items() if family == "local_vmamba"},
    family="local_vmamba",
    model=build_local_vmamba,
    cfg=dict(first_conv="stem.conv", classifier="head.fc", feature_stride=32, **_COMMON_CFG),
    recipes=RECIPES,
    fallback=FALLBACKS,
    converter=convert_local_vmamba,
    dense=DENSE,
)

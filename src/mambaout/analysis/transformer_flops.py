"""The MambaOut paper's Equation 6: when is attention's quadratic cost worth replacing with an SSM?

FLOPs of one Transformer block on L tokens of width D (a multiply-accumulate counted as 2 FLOPs):

    linear layers   qkv (D -> 3D) + proj (D -> D) + MLP (D -> rD -> D) = (4 + 2r)·D² MACs per token
                    -> 2·(4 + 2r)·D²·L = (8 + 4r)·D²·L FLOPs,  24·D²·L for the usual r = 4
    attention       Q·Kᵀ (L x D by D x L) and A·V (L x L by L x D): 2·L²·D MACs -> 4·D·L² FLOPs

The quadratic term equals the linear one at L = (8 + 4r)·D² / (4·D) = (2 + r)·D, i.e. 6D for r = 4: 2304 tokens for
ViT-S (D = 384), 4608 for ViT-B (D = 768). Far below that (ImageNet at 224/16 gives L = 196), attention's cost is
dominated by its linear layers, and a linear-complexity token mixer such as an SSM buys little; near or above it
(detection/segmentation inputs, L ≈ 4096) the quadratic term is what grows. Softmax, norms and the causal mask's
saved half are ignored, as in the paper (and as torch's FlopCounterMode counts SDPA).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TransformerBlockFlops:
    dim: int
    tokens: int
    mlp_ratio: float
    linear: int  # FLOPs of qkv, proj and the MLP: (8 + 4r)·D²·L
    quadratic: int  # FLOPs of Q·Kᵀ and A·V: 4·D·L²
    total: int
    crossover_tokens: int  # the L at which quadratic == linear: (2 + r)·D

    @property
    def quadratic_share(self) -> float:
        return self.quadratic / self.total

    def format(self) -> str:
        d, n = self.dim, self.tokens
        ratio = self.quadratic / self.linear
        lines = [
            f"one Transformer block, D={d}, L={n}, MLP ratio {self.mlp_ratio:g} (MambaOut paper, Eq. 6)",
            f"  linear    (8+4r)·D²·L = {self.linear / 1e9:10.4f} GFLOPs",
            f"  quadratic      4·D·L² = {self.quadratic / 1e9:10.4f} GFLOPs  ({self.quadratic_share:.1%} of the block)",
            f"  total                 = {self.total / 1e9:10.4f} GFLOPs",
            f"  quadratic = linear at L = (2+r)·D = {self.crossover_tokens}; here L / that = "
            f"{n / self.crossover_tokens:.2f}",
        ]
        # Half the crossover is where the quadratic term is a third of the block: past it, it is no longer small.
        if ratio < 0.5:
            verdict = (
                "attention's cost is dominated by its linear layers, so a linear-complexity token mixer (an SSM, "
                "as in Mamba) would save little: the short-sequence regime of ImageNet classification, where the "
                "paper concludes Mamba is not needed."
            )
        elif ratio < 1:
            verdict = (
                "the two terms are comparable: the sequence is approaching the long-sequence regime where the "
                "quadratic term takes over."
            )
        else:
            verdict = (
                "the quadratic term dominates the cost: the long-sequence regime (detection, segmentation) where the "
                "paper considers a linear-complexity token mixer (an SSM, as in Mamba) worth exploring."
            )
        lines.append(f"conclusion: at L={n} the quadratic term is {ratio:.2f}x the linear one; {verdict}")
        return "\n".join(lines)


def transformer_block_flops(dim: int, tokens: int, mlp_ratio: float = 4.0) -> TransformerBlockFlops:
    """Equation 6 of the MambaOut paper for one block, generalised to any MLP ratio.

    The MLP's hidden width is int(dim * mlp_ratio), as the models build it, so every count is an exact integer.
    """
    if dim < 1 or tokens < 1:
        raise ValueError(f"dim and tokens must be positive, got dim={dim}, tokens={tokens}")
    if mlp_ratio <= 0:
        raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")
    hidden = int(dim * mlp_ratio)
    linear_macs_per_token = 4 * dim * dim + 2 * dim * hidden  # qkv + proj + fc1 + fc2
    linear = 2 * linear_macs_per_token * tokens
    quadratic = 4 * dim * tokens * tokens
    return TransformerBlockFlops(
        dim=dim,
        tokens=tokens,
        mlp_ratio=mlp_ratio,
        linear=linear,
        quadratic=quadratic,
        total=linear + quadratic,
        # 2·(4D² + 2D·hidden)·L = 4·D·L²  <=>  L = 2D + hidden
        crossover_tokens=2 * dim + hidden,
    )

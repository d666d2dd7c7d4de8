"""CSF, Cross-Scale Fusion (paper section "Cross-Scale Fusion").

"For each scale feature, we carry out Multi-Head Self-Attention": each scale's query feature first
attends to itself (keys / values spatially reduced by a strided conv, as in PVT / SegFormer, so the
stride-4 scale stays affordable); then every query of every scale samples the full-scale features of
the MSFE in one cross-scale deformable attention, so each query sees all scales at once.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import unflatten_levels
from .msfe import DeformableEncoderLayer

__all__ = ["CSF", "SpatialReductionAttention"]


class SpatialReductionAttention(nn.Module):
    """Multi-head self-attention with keys / values from a ``sr x sr`` strided conv of the map.

    ``forward(x (N, C, H, W), pos (H*W, C)) -> (N, H*W, C)`` (residual and LayerNorm included);
    ``H`` and ``W`` must be divisible by ``sr``.

    ``fused_attn`` (default ``True``): ``F.scaled_dot_product_attention`` (flash / memory-efficient
    kernels on a GPU: the ``(N, M, HW, hw)`` scores are never stored); ``False``: the same maths as
    plain matmuls and a softmax (kept for before/after timings and as the reference in tests). fvcore
    counts both the same (``cssformer.analysis.flops`` has a handle for the fused op).
    """

    fused_attn = True

    def __init__(self, dim: int, n_heads: int, sr: int, dropout: float = 0.0):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"csf_heads: got {n_heads}, expected a divisor of dim ({dim})")
        if sr < 1:
            raise ValueError(f"csf_sr_ratios: got {sr}, expected >= 1")
        self.n_heads, self.scale = n_heads, (dim // n_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr = nn.Conv2d(dim, dim, sr, sr) if sr > 1 else nn.Identity()
        self.sr_norm = nn.LayerNorm(dim) if sr > 1 else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        m = self.n_heads
        tokens = x.flatten(2).transpose(1, 2)                                    # (N, HW, C)
        if self.fused_attn:  # one copy to the token layout: the linears below then take no copy each
            tokens = tokens.contiguous()
        q = self.q(tokens + pos).view(n, -1, m, c // m).transpose(1, 2)          # (N, M, HW, D)
        reduced = self.sr_norm(self.sr(x).flatten(2).transpose(1, 2))            # (N, hw, C)
        k, v = self.kv(reduced).view(n, -1, 2, m, c // m).permute(2, 0, 3, 1, 4)  # (N, M, hw, D) each
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.drop.p if self.training else 0.0)
        else:
            out = self.drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(-1)) @ v
        out = out.transpose(1, 2).reshape(n, h * w, c)
        return self.norm(tokens + self.drop(self.proj(out)))


class CSF(nn.Module):
    """Cross-Scale Fusion.

    Args:
        dim: channels.
        sr_ratios: key/value reduction of the self-attention per scale (strides 4, 8, 16, 32).
        csf_heads: heads of the self-attention.
        n_heads, n_points, ffn_dim, dropout: of the cross-scale deformable layer.

    ``forward(queries [(N, C, H_l, W_l)], pos (N, S, C), reference_points (N, S, 2), full_scale (N, S, C),
    shapes) -> [(N, C, H_l, W_l)]``.
    """

    def __init__(self, dim: int, sr_ratios: Sequence[int] = (8, 4, 2, 1), csf_heads: int = 8, n_heads: int = 8,
                 n_points: int = 16, ffn_dim: int = 1024, dropout: float = 0.0):
        super().__init__()
        self.self_attn = nn.ModuleList(SpatialReductionAttention(dim, csf_heads, int(sr), dropout)
                                       for sr in sr_ratios)
        self.cross = DeformableEncoderLayer(dim, len(sr_ratios), n_heads, n_points, ffn_dim, dropout)

    def forward(self, queries: Sequence[torch.Tensor], pos: torch.Tensor, reference_points: torch.Tensor,
                full_scale: torch.Tensor, shapes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        sizes = [h * w for h, w in shapes]
        level_pos = pos.split(sizes, 1)
        attended = [sa(q, p) for sa, q, p in zip(self.self_attn, queries, level_pos)]
        tokens = torch.cat(attended, 1)                                           # (N, S, C)
        fused = self.cross(tokens, pos, reference_points, shapes, values=full_scale)
        return unflatten_levels(fused, shapes)



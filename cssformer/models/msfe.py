"""MSFE, Multi-Scale Feature Enhancement (paper section "Multi-Scale Feature Enhancement").

The scale features are flattened together; every token predicts offsets for every sampling point on
every scale and fuses all scales in one sparse step (multi-scale deformable attention, Deformable DETR
encoder layer: attention + FFN, post-norm). Output: the *full-scale features* the CSF samples.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from cssformer_kernels import MSDeformAttn

from .layers import FFN

__all__ = ["MSFE", "DeformableEncoderLayer"]


class DeformableEncoderLayer(nn.Module):
    """One deformable transformer layer: ``x = LN(x + MSDA(x + pos, ref, values)); x = FFN(x)``.

    ``forward(query (N, Q, C), pos (Q, C) or (N, Q, C), reference_points (N, Q, 2), values (N, S, C),
    shapes [(H_l, W_l)]) -> (N, Q, C)``; ``values`` defaults to ``query`` (self-attention form).
    """

    def __init__(self, dim: int, n_levels: int, n_heads: int, n_points: int, ffn_dim: int,
                 dropout: float = 0.0):
        super().__init__()
        self.attn = MSDeformAttn(dim, n_levels, n_heads, n_points)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn_dim, dropout)

    def forward(self, query: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                shapes: Sequence[Sequence[int]], values: torch.Tensor | None = None) -> torch.Tensor:
        values = query if values is None else values
        out = self.attn(query + pos, reference_points, values, shapes)
        return self.ffn(self.norm(query + self.drop(out)))


class MSFE(nn.Module):
    """Multi-Scale Feature Enhancement: ``(N, S, C)`` flattened levels -> ``(N, S, C)`` full-scale features.

    Args:
        dim, n_levels, n_heads, n_points, ffn_dim, dropout: of each deformable layer.
        num_layers: stacked layers (paper: one-time fusion, i.e. 1).

    ``forward(tokens (N, S, C), pos (N, S, C) incl. level embedding, reference_points (N, S, 2),
    shapes [(H_l, W_l)])``.
    """

    def __init__(self, dim: int, n_levels: int = 4, n_heads: int = 8, n_points: int = 16, ffn_dim: int = 1024,
                 num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"msfe_layers: got {num_layers}, expected >= 1")
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(dim, n_levels, n_heads, n_points, ffn_dim, dropout)
            for _ in range(num_layers)
        )

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                shapes: Sequence[Sequence[int]]) -> torch.Tensor:
        for layer in self.layers:
            tokens = layer(tokens, pos, reference_points, shapes)
        return tokens

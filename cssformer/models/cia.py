"""CIA, Channel Information Augmentation (paper section "Channel Information Augmentation").

Per scale: pool the feature to a few sizes (PSP-like), align channels with a 1x1 conv each, upsample
back and fuse into the *significance feature*; its global vector goes through an MLP (1x1 conv
``C -> C/r -> C``, sigmoid) to channel weights; the query feature is re-weighted, with a residual.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvNormAct

__all__ = ["CIA", "CIA_REWEIGHT", "adaptive_avg_pool2d"]

CIA_REWEIGHT = ("query", "significance")


def _pool_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """``(n_out, n_in)``: row ``i`` averages PyTorch's adaptive bin ``[floor(i n_in / n_out),
    ceil((i + 1) n_in / n_out))``."""
    m = torch.zeros(n_out, n_in, dtype=like.dtype, device=like.device)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -(-(i + 1) * n_in // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool2d(x: torch.Tensor, size: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, size)``; while ``torch.onnx.export`` traces, the same bins as two
    matrix products (ONNX ``AveragePool`` cannot express bins of unequal size, e.g. 3 bins of a 16-wide
    map), equal to within float rounding (tested at odd sizes)."""
    if not torch.onnx.is_in_onnx_export() or size == 1:  # size 1 exports as GlobalAveragePool
        return F.adaptive_avg_pool2d(x, size)
    h, w = x.shape[-2:]
    return _pool_matrix(int(h), size, x) @ x @ _pool_matrix(int(w), size, x).T


class CIA(nn.Module):
    """Channel Information Augmentation for one scale: ``(N, C, H, W) -> (N, C, H, W)``.

    Args:
        dim: channels ``C``.
        pool_sizes: output sizes of the adaptive average pools (paper: "four different sizes").
        reduction: MLP bottleneck ``C -> C / reduction -> C`` (paper: 2).
        reweight: what the channel weights multiply before the residual is added: ``"query"`` (the
            input, ``x * w + x``) or ``"significance"`` (``s * w + x``).
        norm: norm of the fusion conv (``"gn"`` / ``"bn"``); the pooled branches have none.
    """

    def __init__(self, dim: int, pool_sizes: Sequence[int] = (1, 2, 3, 6), reduction: int = 2,
                 reweight: str = "query", norm: str = "gn"):
        super().__init__()
        if reweight not in CIA_REWEIGHT:
            raise ValueError(f"cia_reweight: got {reweight!r}, expected one of {CIA_REWEIGHT}")
        if not pool_sizes or any(int(s) < 1 for s in pool_sizes):
            raise ValueError(f"cia_pool_sizes: got {tuple(pool_sizes)}, expected positive sizes")
        if reduction < 1 or dim % reduction:
            raise ValueError(f"cia_reduction: got {reduction}, expected a divisor of dim ({dim})")
        branch = max(dim // len(pool_sizes), 1)
        self.pool_sizes = tuple(int(s) for s in pool_sizes)
        self.reweight = reweight
        # "1x1 convolution is used to align the number of channels": C -> C / #pools per branch.
        # No norm on the pooled maps: a 1x1 map has no statistics for GroupNorm (or BatchNorm at batch 1).
        self.branches = nn.ModuleList(nn.Sequential(nn.Conv2d(dim, branch, 1), nn.ReLU(inplace=True))
                                      for _ in self.pool_sizes)
        # Fusion of the input and the upsampled branches into the significance feature.
        self.fuse = ConvNormAct(dim + branch * len(self.pool_sizes), dim, 1, norm=norm)
        # "two 1x1 conv layers followed by a sigmoid ... C -> C/2 and C/2 -> C".
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, dim // reduction, 1), nn.ReLU(inplace=True),
            nn.Conv2d(dim // reduction, dim, 1), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pyramid = [x]
        for size, branch in zip(self.pool_sizes, self.branches):
            pooled = branch(adaptive_avg_pool2d(x, size))
            pyramid.append(F.interpolate(pooled, size=(h, w), mode="bilinear", align_corners=False))
        significance = self.fuse(torch.cat(pyramid, 1))           # (N, C, H, W)
        alpha = adaptive_avg_pool2d(significance, 1)                # global feature vector (N, C, 1, 1)
        weights = self.mlp(alpha)                                  # channel importance in (0, 1)
        base = x if self.reweight == "query" else significance
        return base * weights + x

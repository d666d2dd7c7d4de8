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

from .layers import ConvNormAct, adaptive_avg_pool2d, pool_matrix

__all__ = ["CIA", "CIA_REWEIGHT", "adaptive_avg_pool2d"]

CIA_REWEIGHT = ("query", "significance")


def _bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``(n_out, n_in)`` float64: row ``i`` holds the two weights of ``F.interpolate(mode="bilinear",
    align_corners=False)`` (source ``(i + 0.5) n_in / n_out - 0.5``, clamped at 0 and at the last pixel)."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    scale = n_in / n_out
    for i in range(n_out):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(src), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        frac = src - i0
        m[i, i0] += 1.0 - frac
        m[i, i1] += frac
    return m


class CIA(nn.Module):
    """Channel Information Augmentation for one scale: ``(N, C, H, W) -> (N, C, H, W)``.

    Args:
        dim: channels ``C``.
        pool_sizes: output sizes of the adaptive average pools (paper: "four different sizes").
        reduction: MLP bottleneck ``C -> C / reduction -> C`` (paper: 2).
        reweight: what the channel weights multiply before the residual is added: ``"query"`` (the
            input, ``x * w + x``) or ``"significance"`` (``s * w + x``).
        norm: norm of the fusion conv (``"gn"`` / ``"bn"``); the pooled branches have none.

    ``fast`` (default ``True``): all pooled branches in a handful of launches instead of ~7 each: the
    pools as one matrix product with the stacked bin matrices (fp32), the branch 1x1 convs as one linear
    over all bins (a block mask keeps each branch on its own bins) and the bilinear upsampling as one
    product with the stacked interpolation matrices, kept per input size. Same maths to float rounding;
    the former form (``fast = False``) runs while fvcore / ONNX / ``torch.compile`` trace.
    """

    fast = True

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
        self._matrices: dict = {}
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, dim // reduction, 1), nn.ReLU(inplace=True),
            nn.Conv2d(dim // reduction, dim, 1), nn.Sigmoid(),
        )

    def _branch_matrices(self, h: int, w: int, device, dtype):
        """``(pool (H W, T) fp32 (fp64 for fp64), upsample (T, H W) in dtype, mask (B, T) in dtype)``, ``T = sum s^2`` bins,
        ``B`` the branch channels of all branches; cached per (size, device, dtype)."""
        key = (h, w, device, dtype)
        hit = self._matrices.get(key)
        if hit is None:
            like = torch.zeros((), dtype=torch.float64)
            pools, ups = [], []
            for s in self.pool_sizes:
                pools.append(torch.kron(pool_matrix(h, s, like), pool_matrix(w, s, like)).T)
                ups.append(torch.kron(_bilinear_matrix(s, h), _bilinear_matrix(s, w)).T)
            branch = self.branches[0][0].out_channels
            mask = torch.zeros(branch * len(self.pool_sizes), sum(s * s for s in self.pool_sizes))
            col = 0
            for i, s in enumerate(self.pool_sizes):
                mask[i * branch:(i + 1) * branch, col:col + s * s] = 1.0
                col += s * s
            with torch.inference_mode(False):
                acc = torch.float64 if dtype == torch.float64 else torch.float32
                hit = (torch.cat(pools, 1).to(device, acc), torch.cat(ups, 0).to(device, dtype),
                       mask.to(device, dtype))
            if len(self._matrices) > 8:
                self._matrices.clear()
            self._matrices[key] = hit
        return hit

    def _pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[x] + [upsampled branch_s(pool_s(x))]``: the branches of every pool size."""
        n, c, h, w = x.shape
        if (not self.fast or torch.jit.is_tracing() or torch.compiler.is_compiling()
                or torch.onnx.is_in_onnx_export()):
            pyramid = [x]
            for size, branch in zip(self.pool_sizes, self.branches):
                pooled = branch(adaptive_avg_pool2d(x, size))
                pyramid.append(F.interpolate(pooled, size=(h, w), mode="bilinear", align_corners=False))
            return pyramid
        kind = x.device.type
        autocast = torch.is_autocast_enabled(kind)
        dtype = torch.get_autocast_dtype(kind) if autocast else x.dtype
        pool, up, mask = self._branch_matrices(h, w, x.device, dtype)
        weight = torch.cat([b[0].weight for b in self.branches]).flatten(1)       # (B, C)
        bias = torch.cat([b[0].bias for b in self.branches])
        # The pooled maps are tiny (T = 50 bins): pools, branch convs and ReLU in fp32 (fp64 for fp64),
        # with no per-weight autocast casts; only the upsampling product runs in the autocast dtype.
        with torch.autocast(kind, enabled=False):
            pooled = x.flatten(2).to(pool.dtype) @ pool                           # (N, C, T)
            z = torch.baddbmm(bias.to(pool.dtype).view(1, -1, 1), weight.to(pool.dtype).expand(n, -1, -1), pooled)
            z = z.relu_() * mask.to(pool.dtype)                                   # (N, B, T), own bins only
        ups = (z.to(dtype) @ up).view(n, -1, h, w)                                # (N, B, H, W)
        return [x.to(dtype), ups]

    def _channel_weights(self, significance: torch.Tensor) -> torch.Tensor:
        """The MLP on the global vector ``(N, C, 1, 1)``; the fast path runs it in fp32 (a few hundred
        numbers: no autocast casts of its four weight tensors, forward and backward)."""
        alpha = adaptive_avg_pool2d(significance, 1)               # global feature vector (N, C, 1, 1)
        if not self.fast or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return self.mlp(alpha)
        with torch.autocast(significance.device.type, enabled=False):
            return self.mlp(alpha.to(self.mlp[0].weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        significance = self.fuse(torch.cat(self._pyramid(x), 1))  # (N, C, H, W)
        weights = self._channel_weights(significance)              # channel importance in (0, 1)
        base = x if self.reweight == "query" else significance
        if self.fast and weights.dtype == x.dtype == base.dtype:
            return torch.addcmul(x, base, weights)                 # base * weights + x in one launch
        return base * weights + x

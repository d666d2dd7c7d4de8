"""Small building blocks shared by the decoders: conv + norm + activation, the feed-forward block,
adaptive average pooling that exports at any size, 2-D sine position encodings and the pixel-centre
reference points of a feature pyramid."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cssformer.sizes import ceil_div

__all__ = ["NORMS", "pool_matrix", "adaptive_avg_pool2d", "AdaptiveAvgPool", "make_norm", "ConvNormAct", "FFN",
           "sine_position_encoding", "pixel_reference_points",
           "pyramid_positions", "flatten_levels", "unflatten_levels"]

NORMS = ("gn", "bn")


def pool_matrix(n_in, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """``(n_out, n_in)``: row ``i`` averages PyTorch's adaptive bin ``[floor(i n_in / n_out),
    ceil((i + 1) n_in / n_out))``. Built from ``arange`` comparisons, so ``n_in`` may be symbolic (an
    exporter's free input size): the graph computes the bins at run time."""
    rows = torch.arange(n_out, device=like.device)[:, None]
    start, end = (rows * n_in) // n_out, ceil_div((rows + 1) * n_in, n_out)
    cols = torch.arange(n_in, device=like.device)[None, :]
    inside = (cols >= start) & (cols < end)
    return inside.to(like.dtype) / (end - start).to(like.dtype)


def adaptive_avg_pool2d(x: torch.Tensor, size: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, size)``; while ``torch.onnx.export`` traces (either exporter), the
    same bins as two matrix products (ONNX ``AveragePool`` cannot express bins of unequal size, e.g. 3
    bins of a 16-wide map, and the bins are computed from the map's size when the graph runs, so one
    graph serves any input size), equal to within float rounding (tested at odd sizes). ``torch.export``
    alone (pt2) keeps the aten op."""
    if not torch.onnx.is_in_onnx_export() or size == 1:  # size 1 exports as GlobalAveragePool / a mean
        return F.adaptive_avg_pool2d(x, size)
    h, w = x.shape[-2:]
    return pool_matrix(h, size, x) @ x @ pool_matrix(w, size, x).T


class AdaptiveAvgPool(nn.Module):
    """``nn.AdaptiveAvgPool2d(size)`` as :func:`adaptive_avg_pool2d` (matrix products while exporting to
    ONNX, so the graph serves any input size); no parameters, so state dicts are unchanged."""

    def __init__(self, size: int):
        super().__init__()
        self.size = int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool2d(x, self.size)

    def extra_repr(self) -> str:
        return f"output_size={self.size}"


def make_norm(kind: str, channels: int) -> nn.Module:
    """``"gn"``: GroupNorm with 32 groups (or fewer when ``channels`` needs it); ``"bn"``: BatchNorm2d
    (convert to SyncBatchNorm for multi-GPU training)."""
    if kind == "gn":
        groups = math.gcd(32, channels)
        return nn.GroupNorm(groups, channels)
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"norm: got {kind!r}, expected one of {NORMS}")


class ConvNormAct(nn.Sequential):
    """``Conv2d(bias=False) -> norm -> ReLU``; ``(N, C_in, H, W) -> (N, C_out, H', W')``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 norm: str = "gn", act: bool = True):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
            make_norm(norm, out_channels),
            nn.ReLU(inplace=True) if act else nn.Identity(),
        )


class FFN(nn.Module):
    """Transformer feed-forward block with residual and post-norm: ``(N, Q, C) -> (N, Q, C)``."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.drop(self.fc2(self.drop(self.act(self.fc1(x))))))


def sine_position_encoding(h: int, w: int, dim: int, device, dtype=torch.float32,
                           temperature: float = 10000.0) -> torch.Tensor:
    """DETR's normalised 2-D sine encoding of an ``h x w`` grid: ``(h * w, dim)``, ``dim`` even.
    The first half of the channels encodes ``y``, the second ``x``."""
    if dim % 2:
        raise ValueError(f"dim: got {dim}, expected an even number of channels for the sine encoding")
    half = dim // 2
    scale = 2 * math.pi
    y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * scale
    x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * scale
    idx = torch.arange(half, device=device, dtype=torch.float32)
    freq = temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / half)
    pos_y = y[:, None] / freq  # (h, half)
    pos_x = x[:, None] / freq  # (w, half)
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), -1).flatten(1)
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), -1).flatten(1)
    pos = torch.cat((pos_y[:, None, :].expand(h, w, half), pos_x[None, :, :].expand(h, w, half)), -1)
    return pos.reshape(h * w, dim).to(dtype)


def pixel_reference_points(shapes: Sequence[Sequence[int]], device, dtype=torch.float32) -> torch.Tensor:
    """Normalised ``(x, y)`` pixel centres of every level, flattened in order: ``(sum_l H_l W_l, 2)``."""
    points = []
    for h, w in shapes:
        y = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
        x = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
        points.append(torch.stack(torch.meshgrid(x, y, indexing="xy"), -1).reshape(-1, 2))
    return torch.cat(points, 0)


def pyramid_positions(features: Sequence[torch.Tensor], level_embed: torch.Tensor, cache: dict | None = None):
    """What a deformable encoder over the levels ``[(N, C, H_l, W_l)]`` needs besides the tokens:
    ``(shapes [(H_l, W_l)], pos (1, S, C), reference_points (N, S, 2))``, ``pos`` the sine encoding of each
    level plus its row of ``level_embed (L, C)``, the reference points the pixel centres.

    ``cache``: a dict (the caller's, e.g. a decoder attribute) that keeps the size-only parts (the sine
    encodings, each position's level, the reference points) per (shapes, channels, device, dtype), so a
    forward adds only ``level_embed`` (3 launches instead of ~70). Not used while ``torch.compile`` or
    ``torch.jit`` traces (the graph holds the maths). The values are the same either way."""
    compiling = torch.compiler.is_compiling()  # torch.export / compile: sizes stay symbolic (no int())
    shapes = [tuple(f.shape[-2:]) if compiling else tuple(int(s) for s in f.shape[-2:]) for f in features]
    n, device, dtype = features[0].shape[0], features[0].device, features[0].dtype
    dim = level_embed.shape[1]
    if cache is None or compiling or torch.jit.is_tracing():
        pos = torch.cat([sine_position_encoding(h, w, dim, device, dtype) + level_embed[i].to(dtype)
                         for i, (h, w) in enumerate(shapes)], 0)[None]
        ref = pixel_reference_points(shapes, device)[None].expand(n, -1, -1)
        return shapes, pos, ref
    key = (tuple(shapes), dim, device, dtype)
    hit = cache.get(key)
    if hit is None:
        with torch.inference_mode(False), torch.no_grad():
            sine = torch.cat([sine_position_encoding(h, w, dim, device, dtype) for h, w in shapes], 0)
            level = torch.cat([torch.full((h * w,), i, dtype=torch.long, device=device)
                               for i, (h, w) in enumerate(shapes)])
            hit = (sine, level, pixel_reference_points(shapes, device)[None])
        if len(cache) > 8:
            cache.clear()
        cache[key] = hit
    sine, level, ref = hit
    pos = (sine + level_embed.to(dtype)[level])[None]
    return shapes, pos, ref.expand(n, -1, -1)


def flatten_levels(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[(N, C, H_l, W_l)] -> (N, sum_l H_l W_l, C)``."""
    return torch.cat([f.flatten(2).transpose(1, 2) for f in features], 1)


def unflatten_levels(tokens: torch.Tensor, shapes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """``(N, sum_l H_l W_l, C) -> [(N, C, H_l, W_l)]``."""
    n, _, c = tokens.shape
    sizes = [h * w for h, w in shapes]
    return [t.transpose(1, 2).reshape(n, c, h, w) for t, (h, w) in zip(tokens.split(sizes, 1), shapes)]

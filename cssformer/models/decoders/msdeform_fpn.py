"""``msdeform-fpn``: Mask2Former's pixel decoder (Cheng et al., 2022, ``MSDeformAttnPixelDecoder``) as a
per-pixel segmentation decoder: six deformable encoder layers over strides 8 / 16 / 32, an FPN step to stride 4,
the ``mask_features`` 1x1 conv, then a 1x1 classifier (no query-based transformer decoder)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..heads import Classifier
from ..layers import ConvNormAct, flatten_levels, pyramid_positions, unflatten_levels
from ..msfe import DeformableEncoderLayer

__all__ = ["MSDeformFPNConfig", "MSDeformFPNDecoder"]


@dataclass
class MSDeformFPNConfig:
    dim: int = 256
    n_heads: int = 8
    n_points: int = 4            # Mask2Former's default
    ffn_dim: int = 1024
    num_layers: int = 6
    attn_dropout: float = 0.0
    dropout: float = 0.1
    norm: str = "gn"


class MSDeformFPNDecoder(nn.Module):
    """``[(N, C_i, H / s_i, W / s_i)]`` (strides 4, 8, 16, 32) ``-> (N, K, H / 4, W / 4)``."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, cfg: MSDeformFPNConfig):
        super().__init__()
        d = cfg.dim
        if d % cfg.n_heads or d % 2:
            raise ValueError(f"dim: got {d}, expected an even multiple of n_heads ({cfg.n_heads})")
        deep = list(in_channels[1:])
        self.input_proj = nn.ModuleList(ConvNormAct(ch, d, 1, norm=cfg.norm, act=False) for ch in deep)
        self.level_embed = nn.Parameter(torch.randn(len(deep), d))
        self.encoder = nn.ModuleList(
            DeformableEncoderLayer(d, len(deep), cfg.n_heads, cfg.n_points, cfg.ffn_dim, cfg.attn_dropout)
            for _ in range(cfg.num_layers))
        self.lateral = ConvNormAct(in_channels[0], d, 1, norm=cfg.norm, act=False)
        self.output = ConvNormAct(d, d, 3, norm=cfg.norm)
        self.mask_features = nn.Conv2d(d, d, 1)
        self.cls = Classifier(d, num_classes, cfg.dropout)
        self.cache_positions = True   # positions / reference points kept per input size (set_fast_paths)
        self._positions: dict = {}

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        projected = [proj(f) for proj, f in zip(self.input_proj, features[1:])]
        shapes, pos, ref = pyramid_positions(projected, self.level_embed,
                                             self._positions if self.cache_positions else None)
        tokens = flatten_levels(projected)
        for layer in self.encoder:
            tokens = layer(tokens, pos, ref, shapes)
        stride8 = unflatten_levels(tokens, shapes)[0]
        fine = self.lateral(features[0])
        fine = self.output(fine + F.interpolate(stride8, size=fine.shape[-2:], mode="bilinear", align_corners=False))
        return self.cls(self.mask_features(fine))

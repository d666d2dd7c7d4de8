"""Semantic FPN (Kirillov et al., 2019) as mmsegmentation's ``FPN`` neck + ``FPNHead``: lateral 1x1 and
output 3x3 convs with a top-down pathway, then per-level scale heads (3x3 conv + 2x upsample until
stride 4), summed and classified."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..heads import Classifier
from ..layers import ConvNormAct

__all__ = ["SemanticFPNConfig", "SemanticFPNDecoder"]


@dataclass
class SemanticFPNConfig:
    channels: int = 256        # FPN neck channels
    head_channels: int = 128   # scale-head channels
    dropout: float = 0.1
    norm: str = "gn"


class SemanticFPNDecoder(nn.Module):
    """``[(N, C_i, H / s_i, W / s_i)]`` (strides 4, 8, 16, 32) ``-> (N, K, H / 4, W / 4)``."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, cfg: SemanticFPNConfig):
        super().__init__()
        c, hc = cfg.channels, cfg.head_channels
        self.lateral = nn.ModuleList(nn.Conv2d(ch, c, 1) for ch in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in in_channels)
        self.scale_heads = nn.ModuleList()
        for i in range(len(in_channels)):
            steps = max(1, i)  # strides 4, 8, 16, 32 -> 1, 1, 2, 3 convs (log2 of the stride ratio)
            layers = []
            for k in range(steps):
                layers.append(ConvNormAct(c if k == 0 else hc, hc, 3, norm=cfg.norm))
                if i > 0:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.cls = Classifier(hc, num_classes, cfg.dropout)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [lat(f) for lat, f in zip(self.lateral, features)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        pyramid = [conv(x) for conv, x in zip(self.output, laterals)]
        out = self.scale_heads[0](pyramid[0])
        for head, x in zip(self.scale_heads[1:], pyramid[1:]):
            out = out + F.interpolate(head(x), size=out.shape[-2:], mode="bilinear", align_corners=False)
        return self.cls(out)

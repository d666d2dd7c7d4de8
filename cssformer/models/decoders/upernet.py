"""UperNet (Xiao et al., 2018) as mmsegmentation's ``UPerHead``: PPM on the last level, FPN top-down,
3x3 convs, concatenation of all levels at stride 4, 3x3 bottleneck, classifier."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..heads import Classifier
from ..layers import AdaptiveAvgPool, ConvNormAct

__all__ = ["UperNetConfig", "UperNetDecoder"]


@dataclass
class UperNetConfig:
    channels: int = 512              # mmseg's Swin + UperNet setting
    pool_scales: tuple = (1, 2, 3, 6)
    dropout: float = 0.1
    norm: str = "gn"


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class UperNetDecoder(nn.Module):
    """``[(N, C_i, H / s_i, W / s_i)] -> (N, K, H / 4, W / 4)``."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, cfg: UperNetConfig):
        super().__init__()
        c, norm = cfg.channels, cfg.norm
        self.in_channels = list(in_channels)
        self.ppm = nn.ModuleList(nn.Sequential(AdaptiveAvgPool(s), ConvNormAct(in_channels[-1], c, 1, norm=norm))
                                 for s in cfg.pool_scales)
        self.ppm_bottleneck = ConvNormAct(in_channels[-1] + len(cfg.pool_scales) * c, c, 3, norm=norm)
        self.lateral = nn.ModuleList(ConvNormAct(ch, c, 1, norm=norm) for ch in in_channels[:-1])
        self.fpn = nn.ModuleList(ConvNormAct(c, c, 3, norm=norm) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvNormAct(len(in_channels) * c, c, 3, norm=norm)
        self.cls = Classifier(c, num_classes, cfg.dropout)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        top = features[-1]
        psp = self.ppm_bottleneck(torch.cat([top] + [_up(p(top), top) for p in self.ppm], 1))
        laterals = [lat(f) for lat, f in zip(self.lateral, features[:-1])] + [psp]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _up(laterals[i], laterals[i - 1])
        outs = [conv(x) for conv, x in zip(self.fpn, laterals[:-1])] + [psp]
        fused = self.fpn_bottleneck(torch.cat([outs[0]] + [_up(o, outs[0]) for o in outs[1:]], 1))
        return self.cls(fused)

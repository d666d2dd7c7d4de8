"""SegFormer's all-MLP decoder (Xie et al., 2021) as mmsegmentation's ``SegformerHead``: a per-pixel
linear layer (1x1 conv) per level to a common width, upsampling to stride 4, concatenation, a fusing
1x1 conv and the classifier."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..heads import Classifier
from ..layers import ConvNormAct

__all__ = ["SegFormerConfig", "SegFormerDecoder"]


@dataclass
class SegFormerConfig:
    channels: int = 256
    dropout: float = 0.1
    norm: str = "gn"


class SegFormerDecoder(nn.Module):
    """``[(N, C_i, H / s_i, W / s_i)] -> (N, K, H / 4, W / 4)``."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, cfg: SegFormerConfig):
        super().__init__()
        self.mlps = nn.ModuleList(ConvNormAct(ch, cfg.channels, 1, norm=cfg.norm) for ch in in_channels)
        self.fuse = ConvNormAct(len(in_channels) * cfg.channels, cfg.channels, 1, norm=cfg.norm)
        self.cls = Classifier(cfg.channels, num_classes, cfg.dropout)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        outs = [F.interpolate(mlp(f), size=size, mode="bilinear", align_corners=False) if i else mlp(f)
                for i, (mlp, f) in enumerate(zip(self.mlps, features))]
        return self.cls(self.fuse(torch.cat(outs, 1)))

"""Prediction heads: the classifier every decoder ends in, the multi-scale fusion segmentation head and
the auxiliary FCN head."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvNormAct

__all__ = ["Classifier", "FusionHead", "FCNHead"]


class Classifier(nn.Conv2d):
    """Dropout2d, then a 1x1 conv to the classes (mmseg's ``cls_seg``): ``(N, C, H, W) -> (N, K, H, W)``.

    A ``Conv2d`` itself, so a decoder's ``cls`` keeps the parameter names ``cls.weight`` / ``cls.bias``
    of the ``Dropout2d`` + ``Conv2d`` pair it replaces (checkpoints load unchanged)."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__(in_channels, num_classes, 1)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.dropout2d(x, self.dropout, self.training))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dropout={self.dropout}"


class FusionHead(nn.Module):
    """Upsample every level to the first (stride 4), concatenate, fuse with a 1x1 conv, classify.

    ``[(N, C_l, H_l, W_l)] -> (N, num_classes, H_0, W_0)``.
    """

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int, dropout: float = 0.1,
                 norm: str = "gn"):
        super().__init__()
        self.fuse = ConvNormAct(sum(in_channels), channels, 1, norm=norm)
        self.cls = Classifier(channels, num_classes, dropout)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        up = [features[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                              for f in features[1:]]
        return self.cls(self.fuse(torch.cat(up, 1)))


class FCNHead(nn.Module):
    """mmseg's auxiliary ``FCNHead`` (one 3x3 conv, dropout, 1x1 classifier) on one backbone stage.

    ``(N, C_in, H, W) -> (N, num_classes, H, W)``.
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1,
                 norm: str = "gn"):
        super().__init__()
        self.conv = ConvNormAct(in_channels, channels, 3, norm=norm)
        self.cls = Classifier(channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(self.conv(x))

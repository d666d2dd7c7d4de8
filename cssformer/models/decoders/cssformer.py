"""The CSSFormer decoder: input projections -> CIA (query features) and MSFE (full-scale features) ->
CSF -> fusion head. Each open choice of the paper is a field of ``CSSFormerConfig``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..cia import CIA
from ..csf import CSF
from ..heads import FusionHead
from ..layers import ConvNormAct, flatten_levels, pyramid_positions
from ..msfe import MSFE

__all__ = ["CSSFormerConfig", "CSSFormerDecoder"]


@dataclass
class CSSFormerConfig:
    """Decoder fields (each one an override of ``build_model``); defaults are the Swin-T/S/B/L ones."""

    dim: int = 256                      # decoder channels C (input projections, MSFE, CSF, head)
    use_cia: bool = True                # ablation switch: CIA on the query features
    use_msfe_csf: bool = True           # ablation switch: MSFE + CSF (else projections -> head)
    cia_pool_sizes: tuple = (1, 2, 3, 6)  # "four different sizes" (PSPNet's bins)
    cia_reduction: int = 2              # MLP C -> C/2 -> C (paper)
    cia_reweight: str = "query"         # weights multiply the query ("query") or the significance feature
    n_heads: int = 8                    # heads of both deformable attentions
    n_points: int = 16                  # sampling points per head and level (paper: 16)
    msfe_layers: int = 1                # deformable layers in the MSFE ("one-time fusion")
    ffn_dim: int = 512                  # hidden size of the FFNs (2 x C: the paper's Table 5 GFLOPs; 1024 = 4 x C)
    csf_heads: int = 8                  # heads of the CSF self-attention
    csf_sr_ratios: tuple = (8, 4, 2, 1)  # key/value reduction of the CSF self-attention per scale
    attn_dropout: float = 0.0           # dropout inside MSFE / CSF
    dropout: float = 0.1                # dropout before the classifier
    norm: str = "gn"                    # norm of the conv layers: "gn" or "bn"


class CSSFormerDecoder(nn.Module):
    """``[(N, C_i, H / s_i, W / s_i)]`` (strides 4, 8, 16, 32) -> logits ``(N, K, H / 4, W / 4)``."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, cfg: CSSFormerConfig):
        super().__init__()
        self.cfg = cfg
        n_levels = len(in_channels)
        if len(cfg.csf_sr_ratios) != n_levels:
            raise ValueError(f"csf_sr_ratios: got {tuple(cfg.csf_sr_ratios)}, expected one ratio per level "
                             f"({n_levels})")
        if cfg.dim % cfg.n_heads or cfg.dim % 2:
            raise ValueError(f"dim: got {cfg.dim}, expected an even multiple of n_heads ({cfg.n_heads})")
        self.in_channels = list(in_channels)
        self.input_proj = nn.ModuleList(ConvNormAct(c, cfg.dim, 1, norm=cfg.norm, act=False) for c in in_channels)
        self.cia = (nn.ModuleList(CIA(cfg.dim, cfg.cia_pool_sizes, cfg.cia_reduction, cfg.cia_reweight, cfg.norm)
                                  for _ in in_channels) if cfg.use_cia else None)
        if cfg.use_msfe_csf:
            self.level_embed = nn.Parameter(torch.zeros(n_levels, cfg.dim))
            nn.init.normal_(self.level_embed)
            self.msfe = MSFE(cfg.dim, n_levels, cfg.n_heads, cfg.n_points, cfg.ffn_dim, cfg.msfe_layers,
                             cfg.attn_dropout)
            self.csf = CSF(cfg.dim, cfg.csf_sr_ratios, cfg.csf_heads, cfg.n_heads, cfg.n_points, cfg.ffn_dim,
                           cfg.attn_dropout)
        else:
            self.msfe = self.csf = None
        self.head = FusionHead([cfg.dim] * n_levels, cfg.dim, num_classes, cfg.dropout, cfg.norm)
        self.cache_positions = True   # positions / reference points kept per input size (set_fast_paths)
        self._positions: dict = {}

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.input_proj):
            raise ValueError(f"features: got {len(features)} levels, expected {len(self.input_proj)}")
        for i, (f, c) in enumerate(zip(features, self.in_channels)):
            if f.dim() != 4 or f.shape[1] != c:
                raise ValueError(f"features[{i}]: got shape {tuple(f.shape)}, expected (N, {c}, H, W)")
        projected = [proj(f) for proj, f in zip(self.input_proj, features)]
        queries = [cia(x) for cia, x in zip(self.cia, projected)] if self.cia is not None else projected
        if self.msfe is not None:
            queries = self._msfe_csf(projected, queries)
        return self.head(queries)

    def _msfe_csf(self, projected: list[torch.Tensor], queries: list[torch.Tensor]) -> list[torch.Tensor]:
        shapes, pos, ref = pyramid_positions(projected, self.level_embed,                 # (1, S, C), (N, S, 2)
                                             self._positions if self.cache_positions else None)
        full_scale = self.msfe(flatten_levels(projected), pos, ref, shapes)              # (N, S, C)
        return self.csf(queries, pos, ref, full_scale, shapes)

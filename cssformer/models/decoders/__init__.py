"""Decoders by name: ``name -> (ConfigDataclass, DecoderClass)``. Every decoder maps the Swin pyramid
``[(N, C_i, H / s_i, W / s_i)]`` (strides 4, 8, 16, 32) to logits at stride 4 (or coarser)."""
from __future__ import annotations

from ..cssformer import CSSFormerConfig, CSSFormerDecoder

DECODERS = {
    "cssformer": (CSSFormerConfig, CSSFormerDecoder),
}

__all__ = ["DECODERS"]

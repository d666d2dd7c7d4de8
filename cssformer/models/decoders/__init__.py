"""Decoders by name: ``name -> (ConfigDataclass, DecoderClass)``. Every decoder maps the Swin pyramid
``[(N, C_i, H / s_i, W / s_i)]`` (strides 4, 8, 16, 32) to logits at stride 4; the baselines are the
decoders of the paper's decoder comparison (Table 7), on the same backbone."""
from __future__ import annotations

from .cssformer import CSSFormerConfig, CSSFormerDecoder
from .fpn import SemanticFPNConfig, SemanticFPNDecoder
from .msdeform_fpn import MSDeformFPNConfig, MSDeformFPNDecoder
from .segformer import SegFormerConfig, SegFormerDecoder
from .upernet import UperNetConfig, UperNetDecoder

DECODERS = {
    "cssformer": (CSSFormerConfig, CSSFormerDecoder),
    "upernet": (UperNetConfig, UperNetDecoder),
    "fpn": (SemanticFPNConfig, SemanticFPNDecoder),
    "segformer": (SegFormerConfig, SegFormerDecoder),
    "msdeform-fpn": (MSDeformFPNConfig, MSDeformFPNDecoder),  # was "mask2former" (module mask2former.py)
}

__all__ = ["DECODERS"]

"""One switch for the model's fast paths, so a benchmark can time the former forms in the same run.

Fast paths (each the same maths as its former form, to float rounding; tested):
- CSF self-attention and Swin's window attention: ``F.scaled_dot_product_attention`` (attention
  scores never stored) instead of matmul + softmax + matmul;
- CIA: the pooled branches in a few matrix products instead of ~7 launches per branch;
- Swin's shifted-window masks and the decoders' positions / reference points kept per input size;
- the loss: no host synchronisation.
"""
from __future__ import annotations

from torch import nn

__all__ = ["set_fast_paths"]


def set_fast_paths(module: nn.Module, enabled: bool = True) -> int:
    """Turns the fast paths of every layer in ``module`` (a model, a decoder, a loss) on or off; returns
    how many layers it set."""
    from timm.models.swin_transformer import WindowAttention

    from .backbone import _CachedAttnMask
    from .cia import CIA
    from .csf import SpatialReductionAttention
    from .loss import SegmentationLoss

    count = 0
    for m in module.modules():
        if isinstance(m, (SpatialReductionAttention, WindowAttention)):
            m.fused_attn = enabled
        elif isinstance(m, (CIA, SegmentationLoss)):
            m.fast = enabled
        elif hasattr(m, "cache_positions"):
            m.cache_positions = enabled
        elif isinstance(getattr(m, "get_attn_mask", None), _CachedAttnMask):
            m.get_attn_mask.enabled = enabled
        else:
            continue
        count += 1
    return count

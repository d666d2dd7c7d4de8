"""cssformer_kernels: sparse cross-scale sampling (multi-scale deformable attention) for PyTorch.

Triton kernels on CUDA tensors (forward and backward, fused location/softmax form, autotuned per GPU),
a pure-PyTorch reference on every other device, one ``torch.library`` op for both.
"""
from .module import MSDeformAttn, level_tensors
from .op import BACKENDS, ms_deform_attn, ms_deform_attn_fused
from .reference import fused_locations_and_weights, ms_deform_attn_fused_reference, ms_deform_attn_reference

__all__ = [
    "BACKENDS",
    "MSDeformAttn",
    "fused_locations_and_weights",
    "level_tensors",
    "ms_deform_attn",
    "ms_deform_attn_fused",
    "ms_deform_attn_fused_reference",
    "ms_deform_attn_reference",
]

__version__ = "0.1.0"

"""cssformer_kernels: sparse cross-scale sampling (multi-scale deformable attention) for PyTorch.

Triton kernels on CUDA tensors (forward and backward, fused location/softmax form, autotuned per GPU),
a pure-PyTorch reference on every other device, one ``torch.library`` op for both. Which one runs:
``set_backend`` / ``use_backend`` / ``CSSFORMER_MSDA_BACKEND`` for the library, ``MSDeformAttn.backend``
per layer, ``backend=`` per call (see ``backend.py``).
"""
from .backend import BACKENDS, get_backend, set_backend, use_backend
from .module import MSDeformAttn, override_backend
from .op import ms_deform_attn, ms_deform_attn_fused, ms_deform_attn_per_level
from .shapes import level_tensors
from .reference import fused_locations_and_weights, ms_deform_attn_fused_reference, ms_deform_attn_reference

__all__ = [
    "BACKENDS",
    "MSDeformAttn",
    "fused_locations_and_weights",
    "get_backend",
    "level_tensors",
    "ms_deform_attn",
    "ms_deform_attn_fused",
    "ms_deform_attn_fused_reference",
    "ms_deform_attn_per_level",
    "ms_deform_attn_reference",
    "override_backend",
    "set_backend",
    "use_backend",
]

__version__ = "0.1.0"

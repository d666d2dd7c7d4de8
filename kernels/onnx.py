"""The sampling ops in ONNX.

ONNX has no multi-scale deformable attention operator, so while ``torch.onnx.export`` traces a model
(``torch.onnx.is_in_onnx_export()``), :func:`~cssformer_kernels.ms_deform_attn` and
:func:`~cssformer_kernels.ms_deform_attn_fused` run as their decomposition into standard operators,
the maths of ``reference.py``: per level one ``GridSample`` (bilinear, zeros padding,
``align_corners=0``), then ``Mul`` by the attention weights and ``ReduceSum``; the fused form adds
``loc = ref + offset / (W_l, H_l)`` and a ``Softmax``. ``GridSample`` needs opset >= :data:`MIN_OPSET`.

Outside an ONNX export nothing changes: eager calls, ``torch.compile`` and ``torch.export`` keep the
``cssformer::`` custom ops (and with them the Triton kernels on CUDA). The level shapes become
constants of the graph, so an exported model has a fixed input size (the batch may stay dynamic).
"""
from __future__ import annotations

import torch

from .reference import ms_deform_attn_fused_reference, ms_deform_attn_reference

__all__ = ["MIN_OPSET", "exporting_to_onnx", "onnx_form"]

MIN_OPSET = 16  # GridSample


def exporting_to_onnx() -> bool:
    """True while ``torch.onnx.export`` traces the model."""
    return bool(torch.onnx.is_in_onnx_export())


def onnx_form(fused: bool):
    """The decomposition the ONNX graph gets for the canonical (``fused=False``) or fused op; same
    arguments as the op without ``backend``."""
    return ms_deform_attn_fused_reference if fused else ms_deform_attn_reference

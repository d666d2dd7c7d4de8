"""The sampling ops in ONNX.

ONNX has no multi-scale deformable attention operator, so while ``torch.onnx.export`` traces a model
(``torch.onnx.is_in_onnx_export()``), :func:`~cssformer_kernels.ms_deform_attn` and
:func:`~cssformer_kernels.ms_deform_attn_fused` run as their decomposition into standard operators,
the maths of ``reference.py``: per level one ``GridSample`` (bilinear, zeros padding,
``align_corners=0``), then ``Mul`` by the attention weights and ``ReduceSum``; the fused form adds
``loc = ref + offset / (W_l, H_l)`` and a ``Softmax``. ``GridSample`` needs opset >= :data:`MIN_OPSET`.

Outside an ONNX export nothing changes: eager calls, ``torch.compile`` and ``torch.export`` keep the
``cssformer::`` custom ops (and with them the Triton kernels on CUDA). In that TorchScript route
(deprecated in torch 2.14) the level shapes become constants of the graph, so an exported model has a
fixed input size (the batch may stay dynamic).

The ``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True,
custom_translation_table=onnx_translation_table())``) keeps the custom op in its graph and translates it
with the onnxscript functions of :func:`onnx_translation_table`, which read every level's size from the
``spatial_shapes`` tensor when the graph runs: one graph for any level sizes (same number of levels);
``cssformer export`` builds its ONNX graphs of any input size this way. onnxscript is imported only by
that function.
"""
from __future__ import annotations

import torch

from .reference import ms_deform_attn_fused_reference, ms_deform_attn_reference

__all__ = ["MIN_OPSET", "exporting_to_onnx", "onnx_form", "onnx_translation_table"]

MIN_OPSET = 16  # GridSample


def exporting_to_onnx() -> bool:
    """True while the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) traces the model.
    The ``torch.export``-based exporter (``dynamo=True``) keeps the custom ops; it translates them with
    :func:`onnx_translation_table`. Always false under ``torch.compile`` / ``torch.export`` (dynamo does not
    trace the exporter's globals, and the TorchScript exporter never runs inside it)."""
    if torch.compiler.is_compiling():
        return False
    try:
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:  # torch < 2.9 keeps the flag elsewhere
        try:
            from torch.onnx._globals import GLOBALS
        except ImportError:
            return bool(torch.onnx.is_in_onnx_export())
    return bool(GLOBALS.in_onnx_export)


def onnx_form(fused: bool):
    """The decomposition the ONNX graph gets for the canonical (``fused=False``) or fused op; same
    arguments as the op without ``backend``."""
    return ms_deform_attn_fused_reference if fused else ms_deform_attn_reference


def onnx_translation_table() -> dict:
    """``torch.onnx.export(..., dynamo=True, custom_translation_table=onnx_translation_table())``: ONNX
    functions (onnxscript, imported only here) for ``cssformer::ms_deform_attn`` and
    ``cssformer::ms_deform_attn_fused``. Unlike the TorchScript decomposition above, every level size is
    computed from the ``spatial_shapes`` tensor when the graph runs (``Split`` by ``H_l * W_l``,
    ``Reshape`` to ``(N*M, D, H_l, W_l)``, ``GridSample``), so the graph is not tied to one input size;
    only the number of levels is fixed."""
    from onnxscript import opset18 as op

    def ints(*values):
        return op.Constant(value_ints=list(values))

    def sample(value, spatial_shapes, grids, weights):
        """value (N, S, M, D); grids (N, Q, M, L, P, 2) in [-1, 1]; weights (N, Q, M, L, P)."""
        levels = spatial_shapes.shape[0]  # static: the graph's number of levels
        shape_v, shape_g = op.Shape(value), op.Shape(grids)
        n, m, d = op.Slice(shape_v, ints(0), ints(1)), op.Slice(shape_v, ints(2), ints(3)), op.Slice(shape_v, ints(3), ints(4))
        q, p = op.Slice(shape_g, ints(1), ints(2)), op.Slice(shape_g, ints(4), ints(5))
        nm = op.Mul(n, m)
        sizes = op.ReduceProd(spatial_shapes, ints(1), keepdims=0)  # (L,) H_l * W_l, at run time
        starts = op.CumSum(sizes, op.Constant(value_int=0), exclusive=1)
        sampled = []
        for level in range(levels):
            hw = op.Gather(spatial_shapes, op.Constant(value_int=level), axis=0)  # (2,) H_l, W_l
            start, size = op.Gather(starts, ints(level), axis=0), op.Gather(sizes, ints(level), axis=0)
            part = op.Slice(value, start, op.Add(start, size), ints(1))  # (N, H_l * W_l, M, D)
            v = op.Reshape(op.Transpose(part, perm=[0, 2, 3, 1]), op.Concat(nm, d, hw, axis=0))
            g = op.Gather(grids, op.Constant(value_int=level), axis=3)  # (N, Q, M, P, 2)
            g = op.Reshape(op.Transpose(g, perm=[0, 2, 1, 3, 4]), op.Concat(nm, q, p, ints(2), axis=0))
            s = op.GridSample(v, g, mode="bilinear", padding_mode="zeros", align_corners=0)  # (N*M, D, Q, P)
            sampled.append(op.Unsqueeze(s, ints(3)))
        stacked = op.Concat(*sampled, axis=3) if levels > 1 else sampled[0]  # (N*M, D, Q, L, P)
        w = op.Unsqueeze(op.Transpose(weights, perm=[0, 2, 1, 3, 4]), ints(1))  # (N, 1, M, Q, L, P)
        w = op.Reshape(w, op.Concat(nm, ints(1), q, ints(levels), p, axis=0))
        out = op.ReduceSum(op.Mul(stacked, w), ints(3, 4), keepdims=0)  # (N*M, D, Q)
        out = op.Reshape(out, op.Concat(n, op.Mul(m, d), q, axis=0))
        return op.Transpose(out, perm=[0, 2, 1])  # (N, Q, M*D)

    def to_grid(locations):
        return op.Sub(op.Mul(locations, op.CastLike(2.0, locations)), op.CastLike(1.0, locations))

    def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                       backend: str = "auto"):
        return sample(value, spatial_shapes, to_grid(sampling_locations), attention_weights)

    def ms_deform_attn_fused(value, spatial_shapes, level_start_index, reference_points, sampling_offsets,
                             attention_logits, backend: str = "auto"):
        # loc = ref + offset / (W_l, H_l); weights: softmax over (L, P)
        normalizer = op.CastLike(op.Gather(spatial_shapes, ints(1, 0), axis=1), sampling_offsets)  # (L, 2): W_l, H_l
        if len(reference_points.shape) == 3:  # (N, Q, 2): the same point on every level
            ref = op.Unsqueeze(reference_points, ints(2, 3, 4))  # (N, Q, 1, 1, 1, 2)
        else:  # (N, Q, L, 2)
            ref = op.Unsqueeze(reference_points, ints(2, 4))  # (N, Q, 1, L, 1, 2)
        locations = op.Add(ref, op.Div(sampling_offsets, op.Unsqueeze(normalizer, ints(1))))
        shape = op.Shape(attention_logits)
        flat = op.Concat(op.Slice(shape, ints(0), ints(3)), ints(-1), axis=0)
        weights = op.Reshape(op.Softmax(op.Reshape(attention_logits, flat), axis=-1), shape)
        return sample(value, spatial_shapes, to_grid(locations), weights)

    ops = torch.ops.cssformer
    return {ops.ms_deform_attn.default: ms_deform_attn, ops.ms_deform_attn_fused.default: ms_deform_attn_fused}

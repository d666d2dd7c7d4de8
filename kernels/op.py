"""The public sampling ops: input checks, backend dispatch, and the ``torch.library`` custom ops with
fake implementations and autograd, so ``torch.compile``, CUDA graphs and fvcore's tracer each see one op.

Four custom ops, one per direction and form, all taking the resolved ``backend`` string (see
``backend.py`` for how the public functions pick it):

- ``cssformer::ms_deform_attn`` / ``cssformer::ms_deform_attn_backward``
- ``cssformer::ms_deform_attn_fused`` / ``cssformer::ms_deform_attn_fused_backward``

``backend="auto"`` reaches an op only from ``torch.export`` (a program picks the backend by device when
it runs); ``backend="reference"`` runs the PyTorch reference (its backward through ``grid_sample``'s backward);
``backend="triton"`` runs the kernels in ``msda_forward.py`` /
``msda_backward.py``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import checks
from .backend import BACKENDS, get_backend, resolve_backend
from .onnx import exporting_to_onnx, onnx_form
from .reference import (
    ms_deform_attn_fused_reference,
    ms_deform_attn_fused_reference_backward,
    ms_deform_attn_reference,
    ms_deform_attn_reference_backward,
)

__all__ = ["ms_deform_attn", "ms_deform_attn_fused", "ms_deform_attn_per_level", "resolve_backend", "BACKENDS"]


def _backend_for(backend: Optional[str], device: torch.device) -> str:
    """The backend the op node gets (``None``: the library setting). Under ``torch.export`` ``auto`` stays
    ``auto``: the op resolves it when it runs, so a program exported on a CPU runs the Triton kernels
    once loaded on a GPU."""
    if torch.compiler.is_exporting() and (get_backend() if backend is None else backend) == "auto":
        return "auto"
    return resolve_backend(backend, device)


def _op_backend(backend: str, device: torch.device) -> str:
    """What an op node runs. The public functions resolve the backend once per call (``_backend_for``)
    and the op and its autograd take it as given; only ``"auto"`` (from ``torch.export``) and strings
    that did not come from a public function are resolved here."""
    return backend if backend in ("reference", "triton") else resolve_backend(backend, device)


# --------------------------------------------------------------------------------------------------
# Canonical form
# --------------------------------------------------------------------------------------------------

@torch.library.custom_op("cssformer::ms_deform_attn", mutates_args=())
def _msda_op(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
             sampling_locations: torch.Tensor, attention_weights: torch.Tensor, backend: str) -> torch.Tensor:
    backend = _op_backend(backend, value.device)
    if backend == "reference":
        return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations,
                                        attention_weights)
    from .msda_forward import msda_forward
    return msda_forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


@_msda_op.register_fake
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, backend):
    N, _, M, D = value.shape
    return value.new_empty((N, sampling_locations.shape[1], M * D))


@torch.library.custom_op("cssformer::ms_deform_attn_backward", mutates_args=())
def _msda_backward_op(grad_output: torch.Tensor, value: torch.Tensor, spatial_shapes: torch.Tensor,
                      level_start_index: torch.Tensor, sampling_locations: torch.Tensor,
                      attention_weights: torch.Tensor, backend: str,
                      deterministic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "reference":
        return ms_deform_attn_reference_backward(grad_output, value, spatial_shapes, level_start_index,
                                                 sampling_locations, attention_weights)
    from .msda_backward import msda_backward
    return msda_backward(grad_output, value, spatial_shapes, level_start_index, sampling_locations,
                         attention_weights, deterministic=deterministic)


@_msda_backward_op.register_fake
def _(grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, backend,
      deterministic):
    return (torch.empty_like(value), torch.empty_like(sampling_locations), torch.empty_like(attention_weights))


def _msda_setup_context(ctx, inputs, output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, backend = inputs
    ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    ctx.backend = _op_backend(backend, value.device)


def _msda_autograd_backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
    need = ctx.needs_input_grad
    if not (need[0] or need[3] or need[4]):
        return None, None, None, None, None, None
    grads = _msda_backward_op(grad_output.contiguous(), value, spatial_shapes, level_start_index,
                              sampling_locations, attention_weights, ctx.backend,
                              torch.are_deterministic_algorithms_enabled())
    return (grads[0] if need[0] else None, None, None,
            grads[1] if need[3] else None, grads[2] if need[4] else None, None)


_msda_op.register_autograd(_msda_autograd_backward, setup_context=_msda_setup_context)


# --------------------------------------------------------------------------------------------------
# Fused form: locations (reference + offset / (W_l, H_l)) and the softmax over (L, P) in-kernel
# --------------------------------------------------------------------------------------------------

@torch.library.custom_op("cssformer::ms_deform_attn_fused", mutates_args=())
def _fused_op(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
              reference_points: torch.Tensor, sampling_offsets: torch.Tensor, attention_logits: torch.Tensor,
              backend: str) -> torch.Tensor:
    backend = _op_backend(backend, value.device)
    if backend == "reference":
        return ms_deform_attn_fused_reference(value, spatial_shapes, level_start_index, reference_points,
                                              sampling_offsets, attention_logits)
    from .msda_forward import msda_fused_forward
    return msda_fused_forward(value, spatial_shapes, level_start_index, reference_points, sampling_offsets,
                              attention_logits)


@_fused_op.register_fake
def _(value, spatial_shapes, level_start_index, reference_points, sampling_offsets, attention_logits, backend):
    N, _, M, D = value.shape
    return value.new_empty((N, sampling_offsets.shape[1], M * D))


@torch.library.custom_op("cssformer::ms_deform_attn_fused_backward", mutates_args=())
def _fused_backward_op(grad_output: torch.Tensor, value: torch.Tensor, spatial_shapes: torch.Tensor,
                       level_start_index: torch.Tensor, reference_points: torch.Tensor,
                       sampling_offsets: torch.Tensor, attention_logits: torch.Tensor, backend: str,
                       deterministic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "reference":
        return ms_deform_attn_fused_reference_backward(grad_output, value, spatial_shapes, level_start_index,
                                                       reference_points, sampling_offsets, attention_logits)
    from .msda_backward import msda_fused_backward
    return msda_fused_backward(grad_output, value, spatial_shapes, level_start_index, reference_points,
                               sampling_offsets, attention_logits, deterministic=deterministic)


@_fused_backward_op.register_fake
def _(grad_output, value, spatial_shapes, level_start_index, reference_points, sampling_offsets,
      attention_logits, backend, deterministic):
    return (torch.empty_like(value), torch.empty_like(reference_points), torch.empty_like(sampling_offsets),
            torch.empty_like(attention_logits))


def _fused_setup_context(ctx, inputs, output):
    value, spatial_shapes, level_start_index, reference_points, sampling_offsets, attention_logits, backend = inputs
    ctx.save_for_backward(value, spatial_shapes, level_start_index, reference_points, sampling_offsets,
                          attention_logits)
    ctx.backend = _op_backend(backend, value.device)


def _fused_autograd_backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, reference_points, sampling_offsets, attention_logits = ctx.saved_tensors
    need = ctx.needs_input_grad
    if not (need[0] or need[3] or need[4] or need[5]):
        return (None,) * 7
    grads = _fused_backward_op(grad_output.contiguous(), value, spatial_shapes, level_start_index,
                               reference_points, sampling_offsets, attention_logits, ctx.backend,
                               torch.are_deterministic_algorithms_enabled())
    return (grads[0] if need[0] else None, None, None, grads[1] if need[3] else None,
            grads[2] if need[4] else None, grads[3] if need[5] else None, None)


_fused_op.register_autograd(_fused_autograd_backward, setup_context=_fused_setup_context)


# --------------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------------

def ms_deform_attn(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                   sampling_locations: torch.Tensor, attention_weights: torch.Tensor, *,
                   backend: Optional[str] = None) -> torch.Tensor:
    """Multi-scale deformable attention; a drop-in for Deformable DETR's ``MSDeformAttnFunction``.

    Args:
        value: ``(N, S, M, D)`` float16/bfloat16/float32/float64, ``S = sum_l H_l * W_l``.
        spatial_shapes: ``(L, 2)`` int64 ``(H_l, W_l)``, on value's device or on the CPU (no sync).
        level_start_index: ``(L,)`` int64, running sum of ``H_l * W_l``.
        sampling_locations: ``(N, Q, M, L, P, 2)`` normalised ``(x, y)``; float32 or value's dtype
            are taken as given, any other floating dtype is cast to value's dtype.
        attention_weights: ``(N, Q, M, L, P)``, already normalised over ``(L, P)``; cast to value's
            dtype (as mmcv does: under autocast the softmax before the op runs in float32). Sums are
            accumulated in float32 (float64 for float64 values) either way.
        backend: ``"auto"`` (Triton on CUDA, reference elsewhere), ``"triton"`` or ``"reference"``;
            ``None`` (default): the library setting (:func:`cssformer_kernels.set_backend`).

    Returns:
        ``(N, Q, M * D)`` in value's dtype. Differentiable in value, locations and weights.
    """
    checks.check_ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if exporting_to_onnx():
        return onnx_form(fused=False)(value, spatial_shapes, level_start_index, sampling_locations,
                                      attention_weights)
    backend = _backend_for(backend, value.device)
    spatial_shapes, level_start_index = checks.levels_on(value.device, spatial_shapes, level_start_index)
    sampling_locations = checks.coords_like_value(value, sampling_locations)
    attention_weights = checks.weights_like_value(value, attention_weights)
    return _msda_op(value.contiguous(), spatial_shapes, level_start_index, sampling_locations.contiguous(),
                    attention_weights.contiguous(), backend)


def ms_deform_attn_fused(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                         reference_points: torch.Tensor, sampling_offsets: torch.Tensor,
                         attention_logits: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    """Deformable attention with the location and softmax maths fused into the kernel.

    ``sampling_locations = reference_points + sampling_offsets / (W_l, H_l)`` and
    ``attention_weights = softmax(attention_logits over (L, P))``, then as :func:`ms_deform_attn`.

    Args:
        value: ``(N, S, M, D)``.
        spatial_shapes, level_start_index: as :func:`ms_deform_attn`.
        reference_points: ``(N, Q, L, 2)`` or ``(N, Q, 2)`` normalised ``(x, y)``; dtypes as the
            locations of :func:`ms_deform_attn`.
        sampling_offsets: ``(N, Q, M, L, P, 2)`` in pixels of level ``l``; dtypes as the locations.
        attention_logits: ``(N, Q, M, L, P)``; cast to value's dtype.
        backend: as :func:`ms_deform_attn`.

    Returns:
        ``(N, Q, M * D)``. Differentiable in value, reference points, offsets and logits.
    """
    checks.check_ms_deform_attn_fused(value, spatial_shapes, level_start_index, reference_points,
                                      sampling_offsets, attention_logits)
    if exporting_to_onnx():
        return onnx_form(fused=True)(value, spatial_shapes, level_start_index, reference_points,
                                     sampling_offsets, attention_logits)
    backend = _backend_for(backend, value.device)
    spatial_shapes, level_start_index = checks.levels_on(value.device, spatial_shapes, level_start_index)
    reference_points = checks.coords_like_value(value, reference_points)
    sampling_offsets = checks.coords_like_value(value, sampling_offsets)
    attention_logits = checks.weights_like_value(value, attention_logits)
    return _fused_op(value.contiguous(), spatial_shapes, level_start_index, reference_points.contiguous(),
                     sampling_offsets.contiguous(), attention_logits.contiguous(), backend)


def ms_deform_attn_per_level(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                             sampling_locations: torch.Tensor, attention_weights: torch.Tensor,
                             points_per_level: Sequence[int], *, method: str = "default",
                             backend: Optional[str] = None) -> torch.Tensor:
    """Deformable attention with a point count per level (RT-DETRv2, D-FINE, DEIMv2).

    Args:
        value, spatial_shapes, level_start_index: as :func:`ms_deform_attn`.
        sampling_locations: ``(N, Q, M, sum(points_per_level), 2)`` normalised ``(x, y)``, the points of
            level 0 first.
        attention_weights: ``(N, Q, M, sum(points_per_level))``, normalised over all points.
        points_per_level: ``P_l`` for each level, every ``P_l >= 1``.
        method: ``"default"`` (bilinear sampling, the only one supported).
        backend: as :func:`ms_deform_attn`.

    Levels with fewer than ``max(P_l)`` points are padded with points of weight zero (they add nothing,
    their gradients are dropped); equal counts need no padding. Returns ``(N, Q, M * D)``.
    """
    if method != "default":
        raise ValueError(f"method: got {method!r}, expected 'default' (bilinear sampling; other sampling "
                         "methods, such as RT-DETRv2's 'discrete', are not supported)")
    points = checks.check_points_per_level(points_per_level, spatial_shapes, sampling_locations,
                                           attention_weights)
    N, Q, M = sampling_locations.shape[:3]
    L, P = len(points), max(points)
    if min(points) == P:
        locations = sampling_locations.reshape(N, Q, M, L, P, 2)
        weights = attention_weights.reshape(N, Q, M, L, P)
    else:
        locs, ws = [], []
        for loc, w in zip(sampling_locations.split(points, dim=3), attention_weights.split(points, dim=3)):
            pad = P - loc.shape[3]
            locs.append(torch.nn.functional.pad(loc, (0, 0, 0, pad), value=0.5))
            ws.append(torch.nn.functional.pad(w, (0, pad), value=0.0))
        locations, weights = torch.stack(locs, 3), torch.stack(ws, 3)
    return ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights, backend=backend)

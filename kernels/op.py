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

from typing import Optional

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

__all__ = ["ms_deform_attn", "ms_deform_attn_fused", "resolve_backend", "BACKENDS"]


def _backend_for(backend: Optional[str], device: torch.device) -> str:
    """The backend the op node gets (``None``: the library setting). Under ``torch.export`` ``auto`` stays
    ``auto``: the op resolves it when it runs, so a program exported on a CPU runs the Triton kernels
    once loaded on a GPU."""
    if torch.compiler.is_exporting() and (get_backend() if backend is None else backend) == "auto":
        return "auto"
    return resolve_backend(backend, device)


_DEVICE_LEVELS: dict = {}


def _levels_on(device: torch.device, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor):
    """int64 level tensors on ``device``. Levels given on the CPU are copied once per distinct value and
    cached, so a model that keeps its shapes on the CPU triggers no copy (and no sync) per call."""
    if spatial_shapes.device == device and level_start_index.device == device:
        return spatial_shapes.long().contiguous(), level_start_index.long().contiguous()
    key = (str(device), tuple(spatial_shapes.reshape(-1).tolist()), tuple(level_start_index.tolist()))
    hit = _DEVICE_LEVELS.get(key)
    if hit is None:
        hit = (spatial_shapes.to(device=device, dtype=torch.long).contiguous(),
               level_start_index.to(device=device, dtype=torch.long).contiguous())
        if len(_DEVICE_LEVELS) > 64:
            _DEVICE_LEVELS.clear()
        _DEVICE_LEVELS[key] = hit
    return hit


# --------------------------------------------------------------------------------------------------
# Canonical form
# --------------------------------------------------------------------------------------------------

@torch.library.custom_op("cssformer::ms_deform_attn", mutates_args=())
def _msda_op(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
             sampling_locations: torch.Tensor, attention_weights: torch.Tensor, backend: str) -> torch.Tensor:
    backend = resolve_backend(backend, value.device)
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
    ctx.backend = resolve_backend(backend, value.device)


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
    backend = resolve_backend(backend, value.device)
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
    ctx.backend = resolve_backend(backend, value.device)


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
        sampling_locations: ``(N, Q, M, L, P, 2)`` normalised ``(x, y)``; value's dtype or float32.
        attention_weights: ``(N, Q, M, L, P)`` in value's dtype, already normalised over ``(L, P)``.
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
    spatial_shapes, level_start_index = _levels_on(value.device, spatial_shapes, level_start_index)
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
        reference_points: ``(N, Q, L, 2)`` or ``(N, Q, 2)`` normalised ``(x, y)``; value's dtype or float32.
        sampling_offsets: ``(N, Q, M, L, P, 2)`` in pixels of level ``l``; value's dtype or float32.
        attention_logits: ``(N, Q, M, L, P)`` in value's dtype.
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
    spatial_shapes, level_start_index = _levels_on(value.device, spatial_shapes, level_start_index)
    return _fused_op(value.contiguous(), spatial_shapes, level_start_index, reference_points.contiguous(),
                     sampling_offsets.contiguous(), attention_logits.contiguous(), backend)

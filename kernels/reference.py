"""Pure-PyTorch multi-scale deformable attention: what CPU tensors run, and the tests' oracle.

Semantics are those of Deformable DETR's ``ms_deform_attn_core_pytorch``: each level is sampled with
``F.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)``, so a normalised point
``(x, y)`` lands at pixel ``(x * W_l - 0.5, y * H_l - 0.5)`` and corners outside the map count as zero.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .launch import acc_dtype  # grid_sample has no half kernels everywhere: upcast, cast back

__all__ = [
    "ms_deform_attn_reference",
    "ms_deform_attn_fused_reference",
    "fused_locations_and_weights",
]


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention, the slow and obviously-correct way.

    Args:
        value: ``(N, S, M, D)``, ``S = sum_l H_l * W_l``, levels flattened in order.
        spatial_shapes: ``(L, 2)`` integer ``(H_l, W_l)``.
        level_start_index: ``(L,)`` integer; unused (derived from ``spatial_shapes``), kept for the contract.
        sampling_locations: ``(N, Q, M, L, P, 2)`` normalised ``(x, y)``.
        attention_weights: ``(N, Q, M, L, P)``.

    Returns:
        ``(N, Q, M * D)`` in ``value.dtype``.
    """
    del level_start_index
    N, S, M, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    out_dtype = value.dtype
    cdt = acc_dtype(out_dtype)
    value = value.to(cdt)
    sampling_locations = sampling_locations.to(cdt)
    attention_weights = attention_weights.to(cdt)

    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    value_list = value.split(sizes, dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for lid, (h, w) in enumerate(spatial_shapes.tolist()):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        value_l = value_list[lid].flatten(2).transpose(1, 2).reshape(N * M, D, int(h), int(w))
        # (N, Q, M, P, 2) -> (N*M, Q, P, 2)
        grid_l = grids[:, :, :, lid].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # (N*M, D, Q, P)
    weights = attention_weights.transpose(1, 2).reshape(N * M, 1, Q, L * P)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1).view(N, M * D, Q)
    return out.transpose(1, 2).contiguous().to(out_dtype)


def fused_locations_and_weights(
    spatial_shapes: torch.Tensor,
    reference_points: torch.Tensor,
    sampling_offsets: torch.Tensor,
    attention_logits: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the fused kernels compute in-kernel: ``loc = ref + offset / (W_l, H_l)``, softmax over (L, P).

    Args:
        spatial_shapes: ``(L, 2)`` integer ``(H_l, W_l)``.
        reference_points: ``(N, Q, L, 2)`` or ``(N, Q, 2)`` normalised ``(x, y)``.
        sampling_offsets: ``(N, Q, M, L, P, 2)`` in pixels of level ``l``.
        attention_logits: ``(N, Q, M, L, P)``.

    Returns:
        ``sampling_locations (N, Q, M, L, P, 2)`` and ``attention_weights (N, Q, M, L, P)``.
    """
    N, Q, M, L, P, _ = sampling_offsets.shape
    # (W_l, H_l) per level, the order of (x, y).
    normalizer = spatial_shapes.flip(-1).to(device=sampling_offsets.device, dtype=sampling_offsets.dtype)
    if reference_points.dim() == 3:
        reference_points = reference_points[:, :, None, :]
    ref = reference_points[:, :, None, :, None, :].to(sampling_offsets.dtype)
    locations = ref + sampling_offsets / normalizer[None, None, None, :, None, :]
    weights = attention_logits.reshape(N, Q, M, L * P).softmax(-1).view(N, Q, M, L, P)
    return locations, weights


def ms_deform_attn_fused_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    reference_points: torch.Tensor,
    sampling_offsets: torch.Tensor,
    attention_logits: torch.Tensor,
) -> torch.Tensor:
    """The fused form the slow way: locations and softmax weights, then :func:`ms_deform_attn_reference`."""
    cdt = acc_dtype(value.dtype)
    locations, weights = fused_locations_and_weights(
        spatial_shapes, reference_points.to(cdt), sampling_offsets.to(cdt), attention_logits.to(cdt)
    )
    return ms_deform_attn_reference(value, spatial_shapes, level_start_index, locations, weights)


def ms_deform_attn_reference_backward(
    grad_output: torch.Tensor,
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(value, sampling_locations, attention_weights)`` of :func:`ms_deform_attn_reference`
    for ``grad_output (N, Q, M * D)``, through ``grid_sample``'s own backward (no autograd needed, so it
    can run inside a custom op)."""
    del level_start_index
    N, S, M, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    cdt = acc_dtype(value.dtype)
    v = value.to(cdt)
    grids = 2 * sampling_locations.to(cdt) - 1
    w = attention_weights.to(cdt).transpose(1, 2).reshape(N * M, 1, Q, L, P)
    g = grad_output.to(cdt).view(N, Q, M, D).permute(0, 2, 3, 1).reshape(N * M, D, Q)
    shapes = [(int(h), int(wd)) for h, wd in spatial_shapes.tolist()]
    value_list = v.split([h * wd for h, wd in shapes], dim=1)
    grad_values, grad_grids, grad_weights = [], [], []
    for lid, (h, wd) in enumerate(shapes):
        value_l = value_list[lid].flatten(2).transpose(1, 2).reshape(N * M, D, h, wd)
        grid_l = grids[:, :, :, lid].transpose(1, 2).flatten(0, 1)  # (N*M, Q, P, 2)
        sampled = F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        grad_weights.append((g[..., None] * sampled).sum(1))  # (N*M, Q, P)
        grad_sampled = g[..., None] * w[:, :, :, lid]  # (N*M, D, Q, P)
        gv, gg = torch.ops.aten.grid_sampler_2d_backward(grad_sampled, value_l, grid_l, 0, 0, False, [True, True])
        grad_values.append(gv.view(N, M, D, h * wd).permute(0, 3, 1, 2))  # (N, HW, M, D)
        grad_grids.append(gg)
    grad_value = torch.cat(grad_values, 1)
    # grid = 2 * loc - 1: d/dloc = 2 d/dgrid. (N*M, Q, L, P, 2) -> (N, Q, M, L, P, 2)
    grad_loc = 2 * torch.stack(grad_grids, 2).view(N, M, Q, L, P, 2).transpose(1, 2)
    grad_w = torch.stack(grad_weights, 2).view(N, M, Q, L, P).transpose(1, 2)
    return (grad_value.to(value.dtype).contiguous(), grad_loc.to(sampling_locations.dtype).contiguous(),
            grad_w.to(attention_weights.dtype).contiguous())


def ms_deform_attn_fused_reference_backward(
    grad_output: torch.Tensor,
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    reference_points: torch.Tensor,
    sampling_offsets: torch.Tensor,
    attention_logits: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(value, reference_points, sampling_offsets, attention_logits)`` of
    :func:`ms_deform_attn_fused_reference`: the canonical backward, then the chain rule through
    ``loc = ref + off / (W_l, H_l)`` and the softmax."""
    cdt = acc_dtype(value.dtype)
    locations, weights = fused_locations_and_weights(
        spatial_shapes, reference_points.to(cdt), sampling_offsets.to(cdt), attention_logits.to(cdt)
    )
    grad_value, grad_loc, grad_w = ms_deform_attn_reference_backward(
        grad_output, value, spatial_shapes, level_start_index, locations, weights
    )
    L = spatial_shapes.shape[0]
    normalizer = spatial_shapes.flip(-1).to(device=grad_loc.device, dtype=cdt).view(1, 1, 1, L, 1, 2)
    grad_off = grad_loc / normalizer
    grad_ref = grad_loc.sum(dim=(2, 4))  # (N, Q, L, 2)
    if reference_points.dim() == 3:
        grad_ref = grad_ref.sum(2)
    grad_logits = weights * (grad_w - (weights * grad_w).sum((-1, -2), keepdim=True))
    return (grad_value, grad_ref.to(reference_points.dtype), grad_off.to(sampling_offsets.dtype),
            grad_logits.to(attention_logits.dtype))

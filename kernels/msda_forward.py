"""Forward Triton kernel of multi-scale deformable attention, canonical and fused forms.

One program: ``BLOCK_R`` (query, head) rows x all ``D`` channels (layout in ``triton_common``). For each
level and chunk of ``P_BLOCK`` points it computes the locations (and, fused, the softmax weights),
gathers the 4 bilinear corners as contiguous ``D``-channel rows of ``value`` and accumulates in fp32
(fp64 for fp64 inputs). Bytes per row: ``L*P`` locations and weights in, ``4*L*P`` corner rows of
``D`` values gathered (mostly from L2), ``D`` outputs written.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import autotune
from .launch import block_meta, kernel_meta, launch_shape
from .triton_common import (
    bilinear_corners,
    gather_rows,
    level_geometry,
    point_locations,
    row_indices,
    softmax_stats,
)

KERNEL_VERSION = 3


@triton.jit
def _msda_forward_kernel(
    value_ptr, shapes_ptr, starts_ptr, loc_ptr, attw_ptr, ref_ptr, out_ptr,
    R, Q, S, M, D, L, P,
    REF_LEVELS: tl.constexpr, FUSED: tl.constexpr, INT64: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, P_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, LP_POW2: tl.constexpr,
):
    LP = L * P
    rows, rmask, m, nq, n = row_indices(tl.program_id(0), R, M, Q, INT64, BLOCK_R)
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    pb = tl.arange(0, P_BLOCK)[None, :]

    row_max = tl.zeros((BLOCK_R,), ACC)
    inv_denom = tl.zeros((BLOCK_R,), ACC)
    if FUSED:
        row_max, inv_denom = softmax_stats(attw_ptr, rows, rmask, LP, LP_POW2, ACC)

    acc = tl.zeros((BLOCK_R, BLOCK_D), ACC)
    for l in range(L):
        H, W, Hf, Wf, row0 = level_geometry(shapes_ptr, starts_ptr, l, n, m, S, M, INT64, ACC)
        for p0 in range(0, P, P_BLOCK):
            pmask = rmask[:, None] & (p0 + pb < P)
            x_im, y_im, weight = point_locations(loc_ptr, attw_ptr, ref_ptr, rows, nq, rmask, pmask, l, l * P + p0 + pb,
                                                 Wf, Hf, row_max, inv_denom, LP, REF_LEVELS, FUSED, ACC)
            x0, y0, fx, fy, x_lo_ok, x_hi_ok, y_lo_ok, y_hi_ok = bilinear_corners(x_im, y_im, W, H, Wf, Hf, pmask)
            r00 = row0[:, None] + (y0 * W + x0).to(row0.dtype) * M
            r10 = r00 + W * M
            v00 = gather_rows(value_ptr, r00, y_lo_ok & x_lo_ok, D, d, dmask).to(ACC)
            v01 = gather_rows(value_ptr, r00 + M, y_lo_ok & x_hi_ok, D, d, dmask).to(ACC)
            v10 = gather_rows(value_ptr, r10, y_hi_ok & x_lo_ok, D, d, dmask).to(ACC)
            v11 = gather_rows(value_ptr, r10 + M, y_hi_ok & x_hi_ok, D, d, dmask).to(ACC)
            gx = 1.0 - fx
            gy = 1.0 - fy
            top = (weight * gy)[:, :, None] * (gx[:, :, None] * v00 + fx[:, :, None] * v01)
            bottom = (weight * fy)[:, :, None] * (gx[:, :, None] * v10 + fx[:, :, None] * v11)
            acc += tl.sum(top + bottom, axis=1)

    out = out_ptr + rows[:, None] * D + d[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=rmask[:, None] & dmask[None, :])


def _forward(value, spatial_shapes, level_start_index, sampling, attw, ref, fused: bool):
    N, S, M, D, Q, L, P, R = launch_shape(value, sampling)
    out = torch.empty((N, Q, M * D), device=value.device, dtype=value.dtype)
    meta, ref_levels, ref_arg = kernel_meta(value, sampling, ref, fused, out.numel())

    def launch(config):
        grid = (triton.cdiv(R, config["BLOCK_R"]),)
        _msda_forward_kernel[grid](
            value, spatial_shapes, level_start_index, sampling, attw, ref_arg, out, R, Q, S, M, D, L, P,
            **meta, **block_meta(config, P),
        )

    key = autotune.problem_key(value=value.dtype, coords=sampling.dtype, M=M, D=D, L=L, P=P,
                               fused=fused, ref_levels=ref_levels, rows=R)
    config = autotune.choose("msda_forward", KERNEL_VERSION, key, launch, value.device)
    launch(config)
    return out


def msda_forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Triton forward of :func:`cssformer_kernels.ms_deform_attn` (inputs contiguous and checked)."""
    return _forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, None, False)


def msda_fused_forward(value, spatial_shapes, level_start_index, reference_points, sampling_offsets,
                       attention_logits):
    """Triton forward of :func:`cssformer_kernels.ms_deform_attn_fused` (inputs contiguous and checked)."""
    return _forward(value, spatial_shapes, level_start_index, sampling_offsets, attention_logits,
                    reference_points, True)

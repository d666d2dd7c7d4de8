"""Forward Triton kernel of multi-scale deformable attention, canonical and fused forms.

One work item: ``BLOCK_R`` (query, head) rows x all ``D`` channels, the rows chosen by the work layout
(``LAYOUT``: rows, one-head strips, one-head 2-D query tiles; ``triton_common.layout_rows``). For each
level and chunk of ``P_BLOCK`` points it computes the locations (and, fused, the softmax weights), the
four corner weights once per point, gathers the 4 bilinear corners as contiguous ``D``-channel rows of
``value`` (unmasked: the indices are clamped into the map, a corner outside weighs 0) and accumulates
in fp32 (fp64 for fp64 inputs). Bytes per row: ``L*P`` locations and weights in, ``4*L*P`` corner rows
of ``D`` values gathered (mostly from L2), ``D`` outputs written.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import autotune
from .launch import block_meta, grid_size, kernel_meta, launch_shape
from .triton_common import (
    corner_axis,
    gather_chunks,
    layout_rows,
    level_dims,
    level_tiles,
    point_geometry,
    softmax_stats,
)

KERNEL_VERSION = 4


@triton.jit
def _forward_item(
    item, value_ptr, shapes_ptr, starts_ptr, loc_ptr, attw_ptr, ref_ptr, out_ptr, R, Q, S, M, D, L, P,
    REF_LEVELS: tl.constexpr, FUSED: tl.constexpr, INT64: tl.constexpr, ACC: tl.constexpr, LAYOUT: tl.constexpr,
    BLOCK_R: tl.constexpr, P_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, D_SPLIT: tl.constexpr,
    TILE_W: tl.constexpr, VEC_XY: tl.constexpr, EVEN_D: tl.constexpr, LP_POW2: tl.constexpr,
):
    """One work item (a block of rows, a head strip or a tile): all ``D`` channels of its rows."""
    LP = L * P
    rows, rmask, nq, n, m = layout_rows(item, R, Q, M, L, shapes_ptr, starts_ptr, LAYOUT, INT64, BLOCK_R, TILE_W)
    # The D row as D_SPLIT chunks on the outermost axis: a thread holds one 16-byte piece of every chunk,
    # so it owns D_SPLIT * 16 bytes of a row and the per-point maths is shared by fewer threads.
    DC: tl.constexpr = BLOCK_D // D_SPLIT
    dd = tl.arange(0, D_SPLIT)[:, None] * DC + tl.arange(0, DC)[None, :]
    d4 = dd[:, None, None, :]
    pb = tl.arange(0, P_BLOCK)[None, :]

    row_max = tl.zeros((BLOCK_R,), ACC)
    inv_denom = tl.zeros((BLOCK_R,), ACC)
    if FUSED:
        row_max, inv_denom = softmax_stats(attw_ptr, rows, rmask, LP, LP_POW2, ACC)

    vrow = n * S * M + m + tl.zeros((BLOCK_R,), rows.dtype)  # value row of (n, s=0, m), in rows of D
    sx = M * D
    acc = tl.zeros((D_SPLIT, BLOCK_R, P_BLOCK, DC), ACC)
    for l in range(L):
        H, W, Hf, Wf, start = level_dims(shapes_ptr, starts_ptr, l, INT64, ACC)
        base = ((vrow + start * M) * D)[:, None]
        sy = W * sx
        for p0 in range(0, P, P_BLOCK):
            pmask = rmask[:, None] & (p0 + pb < P)
            x_im, y_im, weight, nan = point_geometry(loc_ptr, attw_ptr, ref_ptr, rows, nq, rmask, pmask, l,
                                                     l * P + p0 + pb, W, H, Wf, Hf, row_max, inv_denom, LP,
                                                     REF_LEVELS, FUSED, VEC_XY, ACC)
            fx, okx0, okx1, ox0, ox1 = corner_axis(x_im, W, Wf, sx)
            fy, oky0, oky1, oy0, oy1 = corner_axis(y_im, H, Hf, sy)
            # The four corner weights, once per point (0 outside the map; NaN carried in).
            ay0 = tl.where(oky0, weight - weight * fy, 0.0) + nan
            ay1 = tl.where(oky1, weight * fy, 0.0) + nan
            ax0 = tl.where(okx0, 1.0 - fx, 0.0)
            ax1 = tl.where(okx1, fx, 0.0)
            top = base + oy0
            bottom = base + oy1
            acc += gather_chunks(value_ptr, top + ox0, d4, D, EVEN_D, ACC) * (ay0 * ax0)[None, :, :, None]
            acc += gather_chunks(value_ptr, top + ox1, d4, D, EVEN_D, ACC) * (ay0 * ax1)[None, :, :, None]
            acc += gather_chunks(value_ptr, bottom + ox0, d4, D, EVEN_D, ACC) * (ay1 * ax0)[None, :, :, None]
            acc += gather_chunks(value_ptr, bottom + ox1, d4, D, EVEN_D, ACC) * (ay1 * ax1)[None, :, :, None]

    out = out_ptr + rows[None, :, None] * D + dd[:, None, :]
    tl.store(out, tl.sum(acc, axis=2).to(out_ptr.dtype.element_ty), mask=rmask[None, :, None] & (dd < D)[:, None, :])


@triton.jit
def _msda_forward_kernel(
    value_ptr, shapes_ptr, starts_ptr, loc_ptr, attw_ptr, ref_ptr, out_ptr,
    R, Q, S, M, D, L, P, NPROG,
    REF_LEVELS: tl.constexpr, FUSED: tl.constexpr, INT64: tl.constexpr, ACC: tl.constexpr, LAYOUT: tl.constexpr,
    BLOCK_R: tl.constexpr, P_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, D_SPLIT: tl.constexpr,
    TILE_W: tl.constexpr, VEC_XY: tl.constexpr, EVEN_D: tl.constexpr, LP_POW2: tl.constexpr,
):
    if LAYOUT == 2:
        # 2-D tiles: the tile count depends on the level sizes, which only the device reads, so a fixed
        # number of programs (NPROG) walks the tiles.
        items = (R // (Q * M)) * M * level_tiles(shapes_ptr, L, BLOCK_R // TILE_W, TILE_W)
        for item in range(tl.program_id(0), items, NPROG):
            _forward_item(item, value_ptr, shapes_ptr, starts_ptr, loc_ptr, attw_ptr, ref_ptr, out_ptr,
                          R, Q, S, M, D, L, P, REF_LEVELS, FUSED, INT64, ACC, LAYOUT, BLOCK_R, P_BLOCK, BLOCK_D,
                          D_SPLIT, TILE_W, VEC_XY, EVEN_D, LP_POW2)
    else:
        _forward_item(tl.program_id(0), value_ptr, shapes_ptr, starts_ptr, loc_ptr, attw_ptr, ref_ptr, out_ptr,
                      R, Q, S, M, D, L, P, REF_LEVELS, FUSED, INT64, ACC, LAYOUT, BLOCK_R, P_BLOCK, BLOCK_D,
                      D_SPLIT, TILE_W, VEC_XY, EVEN_D, LP_POW2)


def _forward(value, spatial_shapes, level_start_index, sampling, attw, ref, fused: bool):
    N, S, M, D, Q, L, P, R = launch_shape(value, sampling)
    out = torch.empty((N, Q, M * D), device=value.device, dtype=value.dtype)
    meta, ref_levels, ref_arg = kernel_meta(value, sampling, ref, fused, out.numel())

    def launch(config):
        block = block_meta(config, P, Q == S, D)
        grid, nprog = grid_size(block, value.device, N, Q, M, S)
        _msda_forward_kernel[grid](
            value, spatial_shapes, level_start_index, sampling, attw, ref_arg, out, R, Q, S, M, D, L, P, nprog,
            **meta, **block,
        )

    key = autotune.problem_key(value=value.dtype, coords=sampling.dtype, M=M, D=D, L=L, P=P, positions=Q == S,
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

"""Backward Triton kernel of multi-scale deformable attention, canonical and fused forms.

One program owns ``BLOCK_R`` (query, head) rows, like the forward. It loads the rows' output gradient
``g`` once and, per level and chunk of points, gathers the 4 corners again and forms four dot products
``d_c = <g, v_c>``; from them, with ``w`` the attention weight and ``(fx, fy)`` the fractional position:

- ``dL/dw = sum_c b_c d_c`` (``b_c`` the bilinear weights),
- ``dL/dx_im = w ((1-fy)(d_tr - d_tl) + fy (d_br - d_bl))``, ``dL/dy_im`` likewise, then times
  ``W_l`` / ``H_l`` for normalised locations (fused: offsets are in pixels, factor 1),
- ``dL/dvalue[corner c] += w b_c g``: scattered with fp32 atomics, or, in deterministic mode, written
  out as (corner row, scale) pairs that :func:`_scatter_deterministic` sums in a fixed order.

Fused form: the logits' gradient is the softmax backward ``w_j (dL/dw_j - sum_k w_k dL/dw_k)``: the
``dL/dw_j`` are written to the logits' gradient as they come, then rewritten in a last pass over the
row's ``[BLOCK_R, L*P]`` tile. Reference points get the offsets' gradient summed over heads and
points (and levels, for shared points), scaled by ``(W_l, H_l)``, outside the kernel.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import autotune
from .launch import acc_dtype, block_meta, grid_size, kernel_meta, launch_shape
from .triton_common import (
    corner_axis,
    gather_chunks,
    layout_rows,
    level_dims,
    level_tiles,
    point_geometry,
    softmax_stats,
    store_pair,
)

KERNEL_VERSION = 4


@triton.jit
def _scatter_corner(grad_value_ptr, corner_ptr, scale_ptr, k, R, pmask, offset, scale, ok, g4, d4, D, rows,
                    DETERMINISTIC: tl.constexpr, EVEN_D: tl.constexpr):
    """Corner ``k`` (``4 * point + corner``) of each ``[BLOCK_R, P_BLOCK]`` point gets ``scale * g``
    (``offset``: the corner row's element offset, clamped into the map; ``scale`` is 0 outside it)."""
    if DETERMINISTIC:
        # pmask, not ok: an in-map corner of a real point is written, padding points (past P) are not.
        index = k * R + rows[:, None]
        tl.store(corner_ptr + index, tl.where(ok, offset // D, 0).to(tl.int64), mask=pmask)
        tl.store(scale_ptr + index, scale, mask=pmask)
    else:
        mask = ok[None, :, :, None]
        if not EVEN_D:
            mask = mask & (d4 < D)
        tl.atomic_add((grad_value_ptr + offset)[None, :, :, None] + d4,
                      (scale[None, :, :, None] * g4).to(grad_value_ptr.dtype.element_ty), mask=mask, sem="relaxed")


@triton.jit
def _backward_item(
    item, grad_out_ptr, value_ptr, shapes_ptr, starts_ptr, loc_ptr, attw_ptr, ref_ptr,
    grad_value_ptr, grad_loc_ptr, grad_attw_ptr, corner_ptr, scale_ptr, R, Q, S, M, D, L, P,
    REF_LEVELS: tl.constexpr, FUSED: tl.constexpr, DETERMINISTIC: tl.constexpr, INT64: tl.constexpr,
    ACC: tl.constexpr, LAYOUT: tl.constexpr, BLOCK_R: tl.constexpr, P_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
    D_SPLIT: tl.constexpr, TILE_W: tl.constexpr, VEC_XY: tl.constexpr, EVEN_D: tl.constexpr, LP_POW2: tl.constexpr,
):
    LP = L * P
    rows, rmask, nq, n, m = layout_rows(item, R, Q, M, L, shapes_ptr, starts_ptr, LAYOUT, INT64, BLOCK_R, TILE_W)
    DC: tl.constexpr = BLOCK_D // D_SPLIT
    dd = tl.arange(0, D_SPLIT)[:, None] * DC + tl.arange(0, DC)[None, :]
    d4 = dd[:, None, None, :]
    pb = tl.arange(0, P_BLOCK)[None, :]
    g4 = tl.load(grad_out_ptr + rows[None, :, None, None] * D + d4, mask=rmask[None, :, None, None] & (d4 < D),
                 other=0.0).to(ACC)

    row_max = tl.zeros((BLOCK_R,), ACC)
    inv_denom = tl.zeros((BLOCK_R,), ACC)
    weighted_grad_sum = tl.zeros((BLOCK_R,), ACC)  # fused: sum_j w_j dL/dw_j
    if FUSED:
        row_max, inv_denom = softmax_stats(attw_ptr, rows, rmask, LP, LP_POW2, ACC)

    vrow = n * S * M + m + tl.zeros((BLOCK_R,), rows.dtype)
    sx = M * D
    for l in range(L):
        H, W, Hf, Wf, start = level_dims(shapes_ptr, starts_ptr, l, INT64, ACC)
        base = ((vrow + start * M) * D)[:, None]
        sy = W * sx
        for p0 in range(0, P, P_BLOCK):
            pmask = rmask[:, None] & (p0 + pb < P)
            j = l * P + p0 + pb
            x_im, y_im, weight, nan = point_geometry(loc_ptr, attw_ptr, ref_ptr, rows, nq, rmask, pmask, l, j,
                                                     W, H, Wf, Hf, row_max, inv_denom, LP, REF_LEVELS, FUSED,
                                                     VEC_XY, ACC)
            fx, okx0, okx1, ox0, ox1 = corner_axis(x_im, W, Wf, sx)
            fy, oky0, oky1, oy0, oy1 = corner_axis(y_im, H, Hf, sy)
            o00 = base + oy0 + ox0
            o01 = base + oy0 + ox1
            o10 = base + oy1 + ox0
            o11 = base + oy1 + ox1
            ok00 = oky0 & okx0
            ok01 = oky0 & okx1
            ok10 = oky1 & okx0
            ok11 = oky1 & okx1
            # d_c = <g, v_c>: the chunks summed in-thread first, then across the threads of a row.
            d00 = tl.where(ok00, tl.sum(tl.sum(g4 * gather_chunks(value_ptr, o00, d4, D, EVEN_D, ACC), axis=0), axis=2), 0.0)
            d01 = tl.where(ok01, tl.sum(tl.sum(g4 * gather_chunks(value_ptr, o01, d4, D, EVEN_D, ACC), axis=0), axis=2), 0.0)
            d10 = tl.where(ok10, tl.sum(tl.sum(g4 * gather_chunks(value_ptr, o10, d4, D, EVEN_D, ACC), axis=0), axis=2), 0.0)
            d11 = tl.where(ok11, tl.sum(tl.sum(g4 * gather_chunks(value_ptr, o11, d4, D, EVEN_D, ACC), axis=0), axis=2), 0.0)
            gx = 1.0 - fx
            gy = 1.0 - fy
            grad_weight = gy * (gx * d00 + fx * d01) + fy * (gx * d10 + fx * d11) + nan
            grad_x = weight * (gy * (d01 - d00) + fy * (d11 - d10))
            grad_y = weight * (gx * (d10 - d00) + fx * (d11 - d01))
            if not FUSED:
                grad_x = grad_x * Wf
                grad_y = grad_y * Hf
            point = rows[:, None] * LP + j
            store_pair(grad_loc_ptr, point, grad_x + nan, grad_y + nan, pmask)
            tl.store(grad_attw_ptr + point, grad_weight, mask=pmask)
            if FUSED:
                weighted_grad_sum += tl.sum(tl.where(pmask, weight * grad_weight, 0.0), axis=1)
            ay0 = tl.where(oky0, weight * gy, 0.0)
            ay1 = tl.where(oky1, weight * fy, 0.0)
            ax0 = tl.where(okx0, gx, 0.0)
            ax1 = tl.where(okx1, fx, 0.0)
            _scatter_corner(grad_value_ptr, corner_ptr, scale_ptr, 4 * j + 0, R, pmask, o00, ay0 * ax0, ok00, g4, d4,
                            D, rows, DETERMINISTIC, EVEN_D)
            _scatter_corner(grad_value_ptr, corner_ptr, scale_ptr, 4 * j + 1, R, pmask, o01, ay0 * ax1, ok01, g4, d4,
                            D, rows, DETERMINISTIC, EVEN_D)
            _scatter_corner(grad_value_ptr, corner_ptr, scale_ptr, 4 * j + 2, R, pmask, o10, ay1 * ax0, ok10, g4, d4,
                            D, rows, DETERMINISTIC, EVEN_D)
            _scatter_corner(grad_value_ptr, corner_ptr, scale_ptr, 4 * j + 3, R, pmask, o11, ay1 * ax1, ok11, g4, d4,
                            D, rows, DETERMINISTIC, EVEN_D)

    if FUSED:
        # Softmax backward on the row's whole [BLOCK_R, L*P] tile: it reads back dL/dw that other threads
        # of this program wrote above, hence the barrier.
        tl.debug_barrier()
        cols = tl.arange(0, LP_POW2)
        lp_mask = rmask[:, None] & (cols[None, :] < LP)
        tile = rows[:, None] * LP + cols[None, :]
        logits = tl.load(attw_ptr + tile, mask=lp_mask, other=0.0).to(ACC)
        w_tile = tl.where(lp_mask, tl.exp(logits - row_max[:, None]) * inv_denom[:, None], 0.0)
        grad_w_tile = tl.load(grad_attw_ptr + tile, mask=lp_mask, other=0.0)
        tl.store(grad_attw_ptr + tile, w_tile * (grad_w_tile - weighted_grad_sum[:, None]), mask=lp_mask)
        # The next work item of this program (tile layout) must not overwrite what is read here first.
        tl.debug_barrier()


@triton.jit
def _msda_backward_kernel(
    grad_out_ptr, value_ptr, shapes_ptr, starts_ptr, loc_ptr, attw_ptr, ref_ptr,
    grad_value_ptr, grad_loc_ptr, grad_attw_ptr, corner_ptr, scale_ptr,
    R, Q, S, M, D, L, P, NPROG,
    REF_LEVELS: tl.constexpr, FUSED: tl.constexpr, DETERMINISTIC: tl.constexpr, INT64: tl.constexpr,
    ACC: tl.constexpr, LAYOUT: tl.constexpr, BLOCK_R: tl.constexpr, P_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
    D_SPLIT: tl.constexpr, TILE_W: tl.constexpr, VEC_XY: tl.constexpr, EVEN_D: tl.constexpr, LP_POW2: tl.constexpr,
):
    if LAYOUT == 2:
        items = (R // (Q * M)) * M * level_tiles(shapes_ptr, L, BLOCK_R // TILE_W, TILE_W)
        for item in range(tl.program_id(0), items, NPROG):
            _backward_item(item, grad_out_ptr, value_ptr, shapes_ptr, starts_ptr, loc_ptr, attw_ptr, ref_ptr,
                           grad_value_ptr, grad_loc_ptr, grad_attw_ptr, corner_ptr, scale_ptr, R, Q, S, M, D, L, P,
                           REF_LEVELS, FUSED, DETERMINISTIC, INT64, ACC, LAYOUT, BLOCK_R, P_BLOCK, BLOCK_D, D_SPLIT,
                           TILE_W, VEC_XY, EVEN_D, LP_POW2)
    else:
        _backward_item(tl.program_id(0), grad_out_ptr, value_ptr, shapes_ptr, starts_ptr, loc_ptr, attw_ptr, ref_ptr,
                       grad_value_ptr, grad_loc_ptr, grad_attw_ptr, corner_ptr, scale_ptr, R, Q, S, M, D, L, P,
                       REF_LEVELS, FUSED, DETERMINISTIC, INT64, ACC, LAYOUT, BLOCK_R, P_BLOCK, BLOCK_D, D_SPLIT,
                       TILE_W, VEC_XY, EVEN_D, LP_POW2)


def _scatter_deterministic(grad_value_rows: torch.Tensor, corner_rows: torch.Tensor, scales: torch.Tensor,
                           grad_rows: torch.Tensor) -> None:
    """``grad_value_rows[corner_rows[k, r]] += scales[k, r] * grad_rows[r]`` for all ``k, r``, in an order
    that does not change run to run: ``index_put_(accumulate=True)`` sorts its indices when deterministic
    algorithms are on (and runs serially on the CPU); chunks of ``k`` are added one after another."""
    K, R = scales.shape
    D = grad_rows.shape[1]
    chunk = max(1, min(K, (1 << 26) // max(1, R * D)))  # ~256 MB of fp32 contributions at a time
    for k0 in range(0, K, chunk):
        k1 = min(K, k0 + chunk)
        contrib = scales[k0:k1, :, None] * grad_rows[None]
        grad_value_rows.index_put_((corner_rows[k0:k1].reshape(-1),), contrib.reshape(-1, D), accumulate=True)


HALF_GRAD_VALUE_ENV = "CSSFORMER_MSDA_HALF_GRAD_VALUE"


def half_grad_value(value_dtype: torch.dtype, deterministic: bool) -> bool:
    """Whether ``grad_value`` is accumulated in the values' own 16-bit dtype: only as an opt-in
    (``CSSFORMER_MSDA_HALF_GRAD_VALUE=1``), for fp16/bf16 values, outside deterministic mode. Half the
    atomic traffic, at a precision cost (``docs/kernels.md``: measured error against float64)."""
    return (os.environ.get(HALF_GRAD_VALUE_ENV, "0") == "1" and not deterministic
            and value_dtype in (torch.float16, torch.bfloat16))


def _backward(grad_output, value, spatial_shapes, level_start_index, sampling, attw, ref, fused: bool,
              deterministic: bool):
    N, S, M, D, Q, L, P, R = launch_shape(value, sampling)
    acc = acc_dtype(value.dtype)
    half = half_grad_value(value.dtype, deterministic)
    grad_value = torch.zeros((N, S, M, D), device=value.device, dtype=value.dtype if half else acc)
    grad_loc = torch.empty(sampling.shape, device=value.device, dtype=acc)
    grad_attw = torch.empty(attw.shape, device=value.device, dtype=acc)
    if deterministic:
        corners = torch.empty((4 * L * P, R), device=value.device, dtype=torch.int64)
        scales = torch.empty((4 * L * P, R), device=value.device, dtype=acc)
    else:
        corners = scales = grad_value  # unused
    meta, ref_levels, ref_arg = kernel_meta(value, sampling, ref, fused, 4 * L * P * R)

    def launch(config):
        block = block_meta(config, P, Q == S, D)
        grid, nprog = grid_size(block, value.device, N, Q, M, S)
        _msda_backward_kernel[grid](
            grad_output, value, spatial_shapes, level_start_index, sampling, attw, ref_arg,
            grad_value, grad_loc, grad_attw, corners, scales, R, Q, S, M, D, L, P, nprog,
            **meta, DETERMINISTIC=deterministic, **block,
        )

    key = autotune.problem_key(value=value.dtype, coords=sampling.dtype, M=M, D=D, L=L, P=P, fused=fused,
                               positions=Q == S, ref_levels=ref_levels, deterministic=deterministic,
                               half_grad_value=half, rows=R)
    config = autotune.choose("msda_backward", KERNEL_VERSION, key, launch, value.device,
                             reset=grad_value.zero_)
    grad_value.zero_()
    launch(config)
    if deterministic:
        _scatter_deterministic(grad_value.view(-1, D), corners, scales, grad_output.view(R, D).to(acc))
    return grad_value.to(value.dtype), grad_loc, grad_attw


def msda_backward(grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                  *, deterministic: bool = False):
    """Gradients ``(value, sampling_locations, attention_weights)`` of :func:`cssformer_kernels.ms_deform_attn`."""
    grad_value, grad_loc, grad_attw = _backward(grad_output, value, spatial_shapes, level_start_index,
                                                sampling_locations, attention_weights, None, False, deterministic)
    return grad_value, grad_loc.to(sampling_locations.dtype), grad_attw.to(attention_weights.dtype)


def msda_fused_backward(grad_output, value, spatial_shapes, level_start_index, reference_points, sampling_offsets,
                        attention_logits, *, deterministic: bool = False):
    """Gradients ``(value, reference_points, sampling_offsets, attention_logits)`` of
    :func:`cssformer_kernels.ms_deform_attn_fused`."""
    grad_value, grad_off, grad_logits = _backward(grad_output, value, spatial_shapes, level_start_index,
                                                  sampling_offsets, attention_logits, reference_points, True,
                                                  deterministic)
    N, Q, M, L, P, _ = sampling_offsets.shape
    # x_im = ref_x * W_l + off_x - 0.5: the reference point's gradient is the offsets' times (W_l, H_l).
    scale = spatial_shapes.flip(-1).to(grad_off.dtype).view(1, 1, 1, L, 1, 2)
    grad_ref = (grad_off * scale).sum(dim=(2, 4))  # (N, Q, L, 2)
    if reference_points.dim() == 3:
        grad_ref = grad_ref.sum(2)
    return (grad_value, grad_ref.to(reference_points.dtype), grad_off.to(sampling_offsets.dtype),
            grad_logits.to(attention_logits.dtype))

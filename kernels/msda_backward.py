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

import torch
import triton
import triton.language as tl

from . import autotune
from .launch import acc_dtype, block_meta, kernel_meta, launch_shape
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
def _scatter_corner(grad_value_ptr, corner_ptr, scale_ptr, k, R, pmask, corner_row, scale, ok, g3, d, dmask, D,
                    rows, DETERMINISTIC: tl.constexpr):
    """Corner ``k`` (``4 * point + corner``) of each ``[BLOCK_R, P_BLOCK]`` point gets ``scale * g``."""
    scale = tl.where(ok, scale, 0.0)
    if DETERMINISTIC:
        # pmask, not ok: an in-map corner of a real point is written, padding points (past P) are not.
        offset = k * R + rows[:, None]
        tl.store(corner_ptr + offset, tl.where(ok, corner_row, 0).to(tl.int64), mask=pmask)
        tl.store(scale_ptr + offset, scale, mask=pmask)
    else:
        tl.atomic_add(grad_value_ptr + corner_row[:, :, None] * D + d[None, None, :], scale[:, :, None] * g3,
                      mask=ok[:, :, None] & dmask[None, None, :], sem="relaxed")


@triton.jit
def _msda_backward_kernel(
    grad_out_ptr, value_ptr, shapes_ptr, starts_ptr, loc_ptr, attw_ptr, ref_ptr,
    grad_value_ptr, grad_loc_ptr, grad_attw_ptr, corner_ptr, scale_ptr,
    R, Q, S, M, D, L, P,
    REF_LEVELS: tl.constexpr, FUSED: tl.constexpr, DETERMINISTIC: tl.constexpr, INT64: tl.constexpr,
    ACC: tl.constexpr, BLOCK_R: tl.constexpr, P_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
    LP_POW2: tl.constexpr,
):
    LP = L * P
    rows, rmask, m, nq, n = row_indices(tl.program_id(0), R, M, Q, INT64, BLOCK_R)
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    pb = tl.arange(0, P_BLOCK)[None, :]
    g = tl.load(grad_out_ptr + rows[:, None] * D + d[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
    g3 = g.to(ACC)[:, None, :]

    row_max = tl.zeros((BLOCK_R,), ACC)
    inv_denom = tl.zeros((BLOCK_R,), ACC)
    weighted_grad_sum = tl.zeros((BLOCK_R,), ACC)  # fused: sum_j w_j dL/dw_j
    if FUSED:
        row_max, inv_denom = softmax_stats(attw_ptr, rows, rmask, LP, LP_POW2, ACC)

    for l in range(L):
        H, W, Hf, Wf, row0 = level_geometry(shapes_ptr, starts_ptr, l, n, m, S, M, INT64, ACC)
        for p0 in range(0, P, P_BLOCK):
            pmask = rmask[:, None] & (p0 + pb < P)
            j = l * P + p0 + pb
            x_im, y_im, weight = point_locations(loc_ptr, attw_ptr, ref_ptr, rows, nq, rmask, pmask, l, j,
                                                 Wf, Hf, row_max, inv_denom, LP, REF_LEVELS, FUSED, ACC)
            x0, y0, fx, fy, x_lo_ok, x_hi_ok, y_lo_ok, y_hi_ok = bilinear_corners(x_im, y_im, W, H, Wf, Hf, pmask)
            r00 = row0[:, None] + (y0 * W + x0).to(row0.dtype) * M
            r01 = r00 + M
            r10 = r00 + W * M
            r11 = r10 + M
            ok00 = y_lo_ok & x_lo_ok
            ok01 = y_lo_ok & x_hi_ok
            ok10 = y_hi_ok & x_lo_ok
            ok11 = y_hi_ok & x_hi_ok
            d00 = tl.sum(g3 * gather_rows(value_ptr, r00, ok00, D, d, dmask).to(ACC), axis=2)
            d01 = tl.sum(g3 * gather_rows(value_ptr, r01, ok01, D, d, dmask).to(ACC), axis=2)
            d10 = tl.sum(g3 * gather_rows(value_ptr, r10, ok10, D, d, dmask).to(ACC), axis=2)
            d11 = tl.sum(g3 * gather_rows(value_ptr, r11, ok11, D, d, dmask).to(ACC), axis=2)
            gx = 1.0 - fx
            gy = 1.0 - fy
            grad_weight = gy * (gx * d00 + fx * d01) + fy * (gx * d10 + fx * d11)
            grad_x = weight * (gy * (d01 - d00) + fy * (d11 - d10))
            grad_y = weight * (gx * (d10 - d00) + fx * (d11 - d01))
            if not FUSED:
                grad_x = grad_x * Wf
                grad_y = grad_y * Hf
            point = rows[:, None] * LP + j
            tl.store(grad_loc_ptr + point * 2, grad_x, mask=pmask)
            tl.store(grad_loc_ptr + point * 2 + 1, grad_y, mask=pmask)
            tl.store(grad_attw_ptr + point, grad_weight, mask=pmask)
            if FUSED:
                weighted_grad_sum += tl.sum(tl.where(pmask, weight * grad_weight, 0.0), axis=1)
            _scatter_corner(grad_value_ptr, corner_ptr, scale_ptr, 4 * j + 0, R, pmask, r00, weight * gy * gx, ok00, g3, d, dmask, D,
                            rows, DETERMINISTIC)
            _scatter_corner(grad_value_ptr, corner_ptr, scale_ptr, 4 * j + 1, R, pmask, r01, weight * gy * fx, ok01, g3, d, dmask, D,
                            rows, DETERMINISTIC)
            _scatter_corner(grad_value_ptr, corner_ptr, scale_ptr, 4 * j + 2, R, pmask, r10, weight * fy * gx, ok10, g3, d, dmask, D,
                            rows, DETERMINISTIC)
            _scatter_corner(grad_value_ptr, corner_ptr, scale_ptr, 4 * j + 3, R, pmask, r11, weight * fy * fx, ok11, g3, d, dmask, D,
                            rows, DETERMINISTIC)

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


def _backward(grad_output, value, spatial_shapes, level_start_index, sampling, attw, ref, fused: bool,
              deterministic: bool):
    N, S, M, D, Q, L, P, R = launch_shape(value, sampling)
    acc = acc_dtype(value.dtype)
    grad_value = torch.zeros((N, S, M, D), device=value.device, dtype=acc)
    grad_loc = torch.empty(sampling.shape, device=value.device, dtype=acc)
    grad_attw = torch.empty(attw.shape, device=value.device, dtype=acc)
    if deterministic:
        corners = torch.empty((4 * L * P, R), device=value.device, dtype=torch.int64)
        scales = torch.empty((4 * L * P, R), device=value.device, dtype=acc)
    else:
        corners = scales = grad_value  # unused
    meta, ref_levels, ref_arg = kernel_meta(value, sampling, ref, fused, 4 * L * P * R)

    def launch(config):
        grid = (triton.cdiv(R, config["BLOCK_R"]),)
        _msda_backward_kernel[grid](
            grad_output, value, spatial_shapes, level_start_index, sampling, attw, ref_arg,
            grad_value, grad_loc, grad_attw, corners, scales, R, Q, S, M, D, L, P,
            **meta, DETERMINISTIC=deterministic, **block_meta(config, P),
        )

    key = autotune.problem_key(value=value.dtype, coords=sampling.dtype, M=M, D=D, L=L, P=P, fused=fused,
                               ref_levels=ref_levels, deterministic=deterministic, rows=R)
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

"""Backward Triton kernel of multi-scale deformable attention, canonical and fused forms.

One program owns ``BLOCK_R`` (query, head) rows, like the forward. It loads the rows' output gradient
``g`` once and, per level and point, gathers the 4 corners again and forms four dot products
``d_c = <g, v_c>``; from them, with ``w`` the attention weight and ``(fx, fy)`` the fractional position:

- ``dL/dw = sum_c b_c d_c`` (``b_c`` the bilinear weights),
- ``dL/dx_im = w ((1-fy)(d_tr - d_tl) + fy (d_br - d_bl))``, ``dL/dy_im`` likewise, then times
  ``W_l`` / ``H_l`` for normalised locations (fused: offsets are in pixels, factor 1),
- ``dL/dvalue[corner c] += w b_c g``: scattered with fp32 atomics, or, in deterministic mode, written
  out as (corner row, scale) pairs that :func:`_scatter_deterministic` sums in a fixed order.

Fused form: the logits' gradient is the softmax backward ``w_j (dL/dw_j - sum_k w_k dL/dw_k)``, done
on a ``[BLOCK_R, L*P]`` register tile at the end; reference points get the offsets' gradient summed
over heads and points (and levels, for shared points), scaled by ``(W_l, H_l)``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import autotune
from .msda_forward import acc_dtype, launch_shape, needs_int64
from .triton_common import bilinear_corners, point_location, softmax_stats

KERNEL_VERSION = 2


@triton.jit
def _scatter_corner(grad_value_ptr, corner_ptr, scale_ptr, k, R, rows, corner_row, scale, ok, g,
                    d, dmask, D, DETERMINISTIC: tl.constexpr):
    scale = tl.where(ok, scale, 0.0)
    if DETERMINISTIC:
        tl.store(corner_ptr + k * R + rows, tl.where(ok, corner_row, 0).to(tl.int64), mask=rows < R)
        tl.store(scale_ptr + k * R + rows, scale, mask=rows < R)
    else:
        tl.atomic_add(grad_value_ptr + corner_row[:, None] * D + d[None, :], scale[:, None] * g,
                      mask=ok[:, None] & dmask[None, :], sem="relaxed")


@triton.jit
def _msda_backward_kernel(
    grad_out_ptr, value_ptr, shapes_ptr, starts_ptr, loc_ptr, attw_ptr, ref_ptr,
    grad_value_ptr, grad_loc_ptr, grad_attw_ptr, corner_ptr, scale_ptr,
    R, Q, S, M, D, L, P,
    REF_LEVELS: tl.constexpr, FUSED: tl.constexpr, DETERMINISTIC: tl.constexpr, INT64: tl.constexpr,
    ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, LP_POW2: tl.constexpr,
):
    LP = L * P
    pid = tl.program_id(0)
    if INT64:
        rows = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    else:
        rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    m = rows % M
    nq = rows // M
    n = nq // Q
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    tile_mask = rmask[:, None] & dmask[None, :]
    g = tl.load(grad_out_ptr + rows[:, None] * D + d[None, :], mask=tile_mask, other=0.0).to(ACC)

    row_max = tl.zeros((BLOCK_R,), ACC)
    inv_denom = tl.zeros((BLOCK_R,), ACC)
    cols = tl.arange(0, LP_POW2)
    grad_w_tile = tl.zeros((BLOCK_R, LP_POW2), ACC)
    if FUSED:
        row_max, inv_denom = softmax_stats(attw_ptr, rows, rmask, LP, LP_POW2, ACC)

    for l in range(L):
        H = tl.load(shapes_ptr + 2 * l).to(tl.int32)
        W = tl.load(shapes_ptr + 2 * l + 1).to(tl.int32)
        start = tl.load(starts_ptr + l)
        if not INT64:
            start = start.to(tl.int32)
        Hf = H.to(ACC)
        Wf = W.to(ACC)
        row0 = (n * S + start) * M + m  # value row (n, level start, m) in units of D
        for p in range(P):
            j = l * P + p
            x_im, y_im, weight = point_location(loc_ptr, attw_ptr, ref_ptr, rows, nq, rmask, l, j, Wf, Hf,
                                                row_max, inv_denom, LP, REF_LEVELS, FUSED, ACC)
            x0, y0, fx, fy, x_lo_ok, x_hi_ok, y_lo_ok, y_hi_ok = bilinear_corners(x_im, y_im, W, H, Wf, Hf, rmask)
            r00 = row0 + (y0 * W + x0).to(row0.dtype) * M
            r01 = r00 + M
            r10 = r00 + W.to(row0.dtype) * M
            r11 = r10 + M
            ok00 = y_lo_ok & x_lo_ok
            ok01 = y_lo_ok & x_hi_ok
            ok10 = y_hi_ok & x_lo_ok
            ok11 = y_hi_ok & x_hi_ok
            v00 = tl.load(value_ptr + r00[:, None] * D + d[None, :], mask=ok00[:, None] & dmask[None, :], other=0.0)
            v01 = tl.load(value_ptr + r01[:, None] * D + d[None, :], mask=ok01[:, None] & dmask[None, :], other=0.0)
            v10 = tl.load(value_ptr + r10[:, None] * D + d[None, :], mask=ok10[:, None] & dmask[None, :], other=0.0)
            v11 = tl.load(value_ptr + r11[:, None] * D + d[None, :], mask=ok11[:, None] & dmask[None, :], other=0.0)
            d00 = tl.sum(g * v00.to(ACC), axis=1)
            d01 = tl.sum(g * v01.to(ACC), axis=1)
            d10 = tl.sum(g * v10.to(ACC), axis=1)
            d11 = tl.sum(g * v11.to(ACC), axis=1)
            gx = 1.0 - fx
            gy = 1.0 - fy
            grad_weight = gy * (gx * d00 + fx * d01) + fy * (gx * d10 + fx * d11)
            grad_x = weight * (gy * (d01 - d00) + fy * (d11 - d10))
            grad_y = weight * (gx * (d10 - d00) + fx * (d11 - d01))
            if not FUSED:
                grad_x = grad_x * Wf
                grad_y = grad_y * Hf
            gl = grad_loc_ptr + (rows * LP + j) * 2
            tl.store(gl, grad_x, mask=rmask)
            tl.store(gl + 1, grad_y, mask=rmask)
            if FUSED:
                grad_w_tile = tl.where(cols[None, :] == j, grad_weight[:, None], grad_w_tile)
            else:
                tl.store(grad_attw_ptr + rows * LP + j, grad_weight, mask=rmask)
            _scatter_corner(grad_value_ptr, corner_ptr, scale_ptr, 4 * j + 0, R, rows, r00, weight * gy * gx, ok00, g, d, dmask, D, DETERMINISTIC)
            _scatter_corner(grad_value_ptr, corner_ptr, scale_ptr, 4 * j + 1, R, rows, r01, weight * gy * fx, ok01, g, d, dmask, D, DETERMINISTIC)
            _scatter_corner(grad_value_ptr, corner_ptr, scale_ptr, 4 * j + 2, R, rows, r10, weight * fy * gx, ok10, g, d, dmask, D, DETERMINISTIC)
            _scatter_corner(grad_value_ptr, corner_ptr, scale_ptr, 4 * j + 3, R, rows, r11, weight * fy * fx, ok11, g, d, dmask, D, DETERMINISTIC)

    if FUSED:
        lp_mask = rmask[:, None] & (cols[None, :] < LP)
        logits = tl.load(attw_ptr + rows[:, None] * LP + cols[None, :], mask=lp_mask, other=0.0).to(ACC)
        w_tile = tl.where(lp_mask, tl.exp(logits - row_max[:, None]) * inv_denom[:, None], 0.0)
        dot = tl.sum(w_tile * grad_w_tile, axis=1)
        grad_logits = w_tile * (grad_w_tile - dot[:, None])
        tl.store(grad_attw_ptr + rows[:, None] * LP + cols[None, :], grad_logits, mask=lp_mask)


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
    acc = torch.float64 if value.dtype == torch.float64 else torch.float32
    grad_value = torch.zeros((N, S, M, D), device=value.device, dtype=acc)
    grad_loc = torch.empty(sampling.shape, device=value.device, dtype=acc)
    grad_attw = torch.empty(attw.shape, device=value.device, dtype=acc)
    if deterministic:
        corners = torch.empty((4 * L * P, R), device=value.device, dtype=torch.int64)
        scales = torch.empty((4 * L * P, R), device=value.device, dtype=acc)
    else:
        corners = scales = grad_value  # unused
    ref_levels = 1 if ref is None or ref.dim() == 3 else L
    meta = dict(
        REF_LEVELS=ref_levels, FUSED=fused, DETERMINISTIC=deterministic,
        INT64=needs_int64(value.numel(), sampling.numel(), 4 * L * P * R), ACC=acc_dtype(value.dtype),
        BLOCK_D=triton.next_power_of_2(D), LP_POW2=triton.next_power_of_2(L * P),
    )
    ref_arg = ref if ref is not None else sampling

    def launch(config):
        grid = (triton.cdiv(R, config["BLOCK_R"]),)
        _msda_backward_kernel[grid](
            grad_output, value, spatial_shapes, level_start_index, sampling, attw, ref_arg,
            grad_value, grad_loc, grad_attw, corners, scales, R, Q, S, M, D, L, P,
            **meta, BLOCK_R=config["BLOCK_R"], num_warps=config["num_warps"], num_stages=config["num_stages"],
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

"""Forward Triton kernel of multi-scale deformable attention, canonical and fused forms.

One program: ``BLOCK_R`` (query, head) rows x all ``D`` channels. For each level and point it computes
the location (and, fused, the softmax weight), gathers the 4 bilinear corners as contiguous
``D``-channel rows of ``value`` and accumulates in fp32 (fp64 for fp64 inputs). Bytes per row:
``L*P`` locations and weights in, ``4*L*P`` corner rows of ``D`` values gathered (mostly from L2),
``D`` outputs written.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import autotune
from .triton_common import bilinear_corners, corner_offsets, point_location, softmax_stats

KERNEL_VERSION = 2


@triton.jit
def _msda_forward_kernel(
    value_ptr, shapes_ptr, starts_ptr, loc_ptr, attw_ptr, ref_ptr, out_ptr,
    R, Q, S, M, D, L, P,
    REF_LEVELS: tl.constexpr, FUSED: tl.constexpr, INT64: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, LP_POW2: tl.constexpr,
):
    LP = L * P
    DM = D * M
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

    row_max = tl.zeros((BLOCK_R,), ACC)
    inv_denom = tl.zeros((BLOCK_R,), ACC)
    if FUSED:
        row_max, inv_denom = softmax_stats(attw_ptr, rows, rmask, LP, LP_POW2, ACC)

    acc = tl.zeros((BLOCK_R, BLOCK_D), ACC)
    for l in range(L):
        H = tl.load(shapes_ptr + 2 * l).to(tl.int32)
        W = tl.load(shapes_ptr + 2 * l + 1).to(tl.int32)
        start = tl.load(starts_ptr + l)
        if not INT64:
            start = start.to(tl.int32)
        Hf = H.to(ACC)
        Wf = W.to(ACC)
        value_row0 = ((n * S + start) * M + m) * D
        for p in range(P):
            j = l * P + p
            x_im, y_im, weight = point_location(loc_ptr, attw_ptr, ref_ptr, rows, nq, rmask, l, j, Wf, Hf,
                                                row_max, inv_denom, LP, REF_LEVELS, FUSED, ACC)
            x0, y0, fx, fy, x_lo_ok, x_hi_ok, y_lo_ok, y_hi_ok = bilinear_corners(x_im, y_im, W, H, Wf, Hf, rmask)
            o00, o01, o10, o11 = corner_offsets(value_row0, x0, y0, W, DM)
            v00 = tl.load(value_ptr + o00[:, None] + d[None, :], mask=(y_lo_ok & x_lo_ok)[:, None] & dmask[None, :], other=0.0)
            v01 = tl.load(value_ptr + o01[:, None] + d[None, :], mask=(y_lo_ok & x_hi_ok)[:, None] & dmask[None, :], other=0.0)
            v10 = tl.load(value_ptr + o10[:, None] + d[None, :], mask=(y_hi_ok & x_lo_ok)[:, None] & dmask[None, :], other=0.0)
            v11 = tl.load(value_ptr + o11[:, None] + d[None, :], mask=(y_hi_ok & x_hi_ok)[:, None] & dmask[None, :], other=0.0)
            gx = 1.0 - fx
            gy = 1.0 - fy
            acc += (weight * gy * gx)[:, None] * v00.to(ACC)
            acc += (weight * gy * fx)[:, None] * v01.to(ACC)
            acc += (weight * fy * gx)[:, None] * v10.to(ACC)
            acc += (weight * fy * fx)[:, None] * v11.to(ACC)

    out = out_ptr + rows[:, None] * D + d[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=rmask[:, None] & dmask[None, :])


def acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def needs_int64(*sizes: int) -> bool:
    """Whether any flat offset the kernels form can pass int32."""
    return max(sizes) >= 2**31 - 1


def launch_shape(value: torch.Tensor, sampling: torch.Tensor):
    """``(N, S, M, D, Q, L, P, R)`` from value ``(N, S, M, D)`` and locations/offsets ``(N, Q, M, L, P, 2)``."""
    N, S, M, D = value.shape
    Q, L, P = sampling.shape[1], sampling.shape[3], sampling.shape[4]
    return N, S, M, D, Q, L, P, N * Q * M


def _forward(value, spatial_shapes, level_start_index, sampling, attw, ref, fused: bool):
    N, S, M, D, Q, L, P, R = launch_shape(value, sampling)
    out = torch.empty((N, Q, M * D), device=value.device, dtype=value.dtype)
    ref_levels = 1 if ref is None or ref.dim() == 3 else L
    meta = dict(
        REF_LEVELS=ref_levels, FUSED=fused,
        INT64=needs_int64(value.numel(), sampling.numel(), out.numel()),
        ACC=acc_dtype(value.dtype), BLOCK_D=triton.next_power_of_2(D), LP_POW2=triton.next_power_of_2(L * P),
    )
    ref_arg = ref if ref is not None else sampling  # unused when not fused

    def launch(config):
        grid = (triton.cdiv(R, config["BLOCK_R"]),)
        _msda_forward_kernel[grid](
            value, spatial_shapes, level_start_index, sampling, attw, ref_arg, out, R, Q, S, M, D, L, P,
            **meta, BLOCK_R=config["BLOCK_R"], num_warps=config["num_warps"], num_stages=config["num_stages"],
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

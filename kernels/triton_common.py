"""Pieces shared by the forward and backward Triton kernels.

Row layout. Every kernel works on rows ``r = (n * Q + q) * M + m``: one row is one (query, head) pair,
the heads of a query in consecutive rows. A program owns ``BLOCK_R`` rows and a ``[BLOCK_R, BLOCK_D]``
tile of channels, so the ``D`` channels of a sampled corner are one contiguous load per row and the
heads of a query load together. Locations/offsets are ``(R, L*P, 2)``, weights/logits ``(R, L*P)``,
the output ``(R, D)``: all of them flat views of the public layouts.

Levels and points are loops at run time, not unrolled: ``M``, ``D``, ``L`` and ``P`` are plain
integer arguments, so one compiled kernel serves every layer shape with the same dtypes and block
sizes (unrolling 16 points x 4 corners made one compile take over a minute and autotuning impractical).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def softmax_stats(attw_ptr, rows, rmask, LP, LP_POW2: tl.constexpr, ACC: tl.constexpr):
    """Max and 1/sum(exp) of each row's ``L*P`` logits, from one coalesced ``[BLOCK_R, LP]`` tile."""
    cols = tl.arange(0, LP_POW2)
    tile_mask = rmask[:, None] & (cols[None, :] < LP)
    logits = tl.load(attw_ptr + rows[:, None] * LP + cols[None, :], mask=tile_mask, other=float("-inf"))
    logits = logits.to(ACC)
    row_max = tl.max(logits, axis=1)
    row_max = tl.where(rmask, row_max, 0.0)
    denom = tl.sum(tl.where(tile_mask, tl.exp(logits - row_max[:, None]), 0.0), axis=1)
    inv_denom = 1.0 / tl.where(rmask, denom, 1.0)
    return row_max, inv_denom


@triton.jit
def point_location(loc_ptr, attw_ptr, ref_ptr, rows, nq, rmask, l, j, Wf, Hf, row_max, inv_denom, LP,
                   REF_LEVELS: tl.constexpr, FUSED: tl.constexpr, ACC: tl.constexpr):
    """Pixel coordinates ``(x_im, y_im)`` and attention weight of point ``j = l * P + p`` of each row.

    Canonical: ``loc_ptr`` holds normalised locations, ``attw_ptr`` softmaxed weights.
    Fused: ``loc_ptr`` holds pixel offsets of level ``l``, ``ref_ptr`` reference points
    ``(N*Q, REF_LEVELS, 2)``, ``attw_ptr`` logits (softmax from ``row_max`` / ``inv_denom``).
    """
    loc = loc_ptr + (rows * LP + j) * 2
    ox = tl.load(loc, mask=rmask, other=0.0).to(ACC)
    oy = tl.load(loc + 1, mask=rmask, other=0.0).to(ACC)
    aw = tl.load(attw_ptr + rows * LP + j, mask=rmask, other=0.0).to(ACC)
    if FUSED:
        if REF_LEVELS == 1:
            ref = ref_ptr + nq * 2
        else:
            ref = ref_ptr + (nq * REF_LEVELS + l) * 2
        rx = tl.load(ref, mask=rmask, other=0.0).to(ACC)
        ry = tl.load(ref + 1, mask=rmask, other=0.0).to(ACC)
        # (ref + off / W) * W - 0.5 == ref * W + off - 0.5
        x_im = rx * Wf + ox - 0.5
        y_im = ry * Hf + oy - 0.5
        weight = tl.exp(aw - row_max) * inv_denom
    else:
        x_im = ox * Wf - 0.5
        y_im = oy * Hf - 0.5
        weight = aw
    return x_im, y_im, weight


@triton.jit
def bilinear_corners(x_im, y_im, W, H, Wf, Hf, rmask):
    """Top-left corner, fractional parts and in-map masks of the 4 bilinear corners.

    Coordinates are clamped to ``[-2, size + 1]`` first: a point that far out has all its corners
    outside either way, and the clamp keeps the integer conversion in range (also for inf / huge)."""
    x_im = tl.minimum(tl.maximum(x_im, -2.0), Wf + 1.0)
    y_im = tl.minimum(tl.maximum(y_im, -2.0), Hf + 1.0)
    x0f = tl.floor(x_im)
    y0f = tl.floor(y_im)
    fx = x_im - x0f
    fy = y_im - y0f
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    x_lo_ok = (x0 >= 0) & (x0 < W)
    x_hi_ok = (x0 + 1 >= 0) & (x0 + 1 < W)
    y_lo_ok = (y0 >= 0) & (y0 < H) & rmask
    y_hi_ok = (y0 + 1 >= 0) & (y0 + 1 < H) & rmask
    return x0, y0, fx, fy, x_lo_ok, x_hi_ok, y_lo_ok, y_hi_ok


@triton.jit
def corner_offsets(value_row0, x0, y0, W, DM):
    """Element offsets (into value) of the 4 corners' rows: top-left, top-right, bottom-left, bottom-right.
    ``value_row0`` is the offset of ``value[n, level_start, m, 0]``; one spatial step is ``M * D``."""
    tl_off = value_row0 + (y0 * W + x0).to(value_row0.dtype) * DM
    tr_off = tl_off + DM
    bl_off = tl_off + W.to(value_row0.dtype) * DM
    br_off = bl_off + DM
    return tl_off, tr_off, bl_off, br_off

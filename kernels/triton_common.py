"""Pieces shared by the forward and backward Triton kernels.

Row layout. Every kernel works on rows ``r = (n * Q + q) * M + m``: one row is one (query, head) pair,
the heads of a query in consecutive rows. Locations/offsets are ``(R, L*P, 2)``, weights/logits
``(R, L*P)``, the output ``(R, D)``: flat views of the public layouts.

Tiles. A program owns ``BLOCK_R`` rows. It walks the levels, and in each level the points in chunks of
``P_BLOCK``: per step it gathers the 4 bilinear corners of ``BLOCK_R x P_BLOCK`` points as a
``[BLOCK_R, P_BLOCK, BLOCK_D]`` tile (one contiguous ``D``-channel row of ``value`` per point and
corner), so ``4 * BLOCK_R * P_BLOCK`` independent row loads are in flight before the first is used.
Per-point quantities (coordinates, weights, masks, corner offsets) are ``[BLOCK_R, P_BLOCK]``.

Levels and point chunks are loops at run time, not unrolled: ``M``, ``D``, ``L`` and ``P`` are plain
integer arguments, so one compiled kernel serves every layer shape with the same dtypes and block
sizes (unrolling 16 points x 4 corners made one compile take over a minute).
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
def point_locations(loc_ptr, attw_ptr, ref_ptr, rows, nq, rmask, pmask, l, j, Wf, Hf, row_max, inv_denom, LP,
                    REF_LEVELS: tl.constexpr, FUSED: tl.constexpr, ACC: tl.constexpr):
    """Pixel coordinates ``(x_im, y_im)`` and attention weights ``[BLOCK_R, P_BLOCK]`` of points
    ``j = l * P + p`` (``j`` a ``[1, P_BLOCK]`` vector) of each row.

    Canonical: ``loc_ptr`` holds normalised locations, ``attw_ptr`` softmaxed weights.
    Fused: ``loc_ptr`` holds pixel offsets of level ``l``, ``ref_ptr`` reference points
    ``(N*Q, REF_LEVELS, 2)``, ``attw_ptr`` logits (softmax from ``row_max`` / ``inv_denom``).
    """
    point = rows[:, None] * LP + j
    ox = tl.load(loc_ptr + point * 2, mask=pmask, other=0.0).to(ACC)
    oy = tl.load(loc_ptr + point * 2 + 1, mask=pmask, other=0.0).to(ACC)
    aw = tl.load(attw_ptr + point, mask=pmask, other=0.0).to(ACC)
    if FUSED:
        if REF_LEVELS == 1:
            ref = ref_ptr + nq * 2
        else:
            ref = ref_ptr + (nq * REF_LEVELS + l) * 2
        rx = tl.load(ref, mask=rmask, other=0.0).to(ACC)
        ry = tl.load(ref + 1, mask=rmask, other=0.0).to(ACC)
        # (ref + off / W) * W - 0.5 == ref * W + off - 0.5
        x_im = (rx * Wf - 0.5)[:, None] + ox
        y_im = (ry * Hf - 0.5)[:, None] + oy
        weight = tl.exp(aw - row_max[:, None]) * inv_denom[:, None]
        weight = tl.where(pmask, weight, 0.0)
    else:
        x_im = ox * Wf - 0.5
        y_im = oy * Hf - 0.5
        weight = aw
    return x_im, y_im, weight


@triton.jit
def bilinear_corners(x_im, y_im, W, H, Wf, Hf, pmask):
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
    y_lo_ok = (y0 >= 0) & (y0 < H) & pmask
    y_hi_ok = (y0 + 1 >= 0) & (y0 + 1 < H) & pmask
    return x0, y0, fx, fy, x_lo_ok, x_hi_ok, y_lo_ok, y_hi_ok


@triton.jit
def gather_rows(value_ptr, row, ok, D, d, dmask):
    """The ``value`` rows ``row`` (``[BLOCK_R, P_BLOCK]``, in units of ``D`` elements) as a
    ``[BLOCK_R, P_BLOCK, BLOCK_D]`` tile; zero where ``ok`` is false."""
    return tl.load(value_ptr + row[:, :, None] * D + d[None, None, :], mask=ok[:, :, None] & dmask[None, None, :],
                   other=0.0)


@triton.jit
def row_indices(pid, R, M, Q, INT64: tl.constexpr, BLOCK_R: tl.constexpr):
    """The program's rows, their mask, head ``m``, query ``n * Q + q`` and batch ``n``."""
    if INT64:
        rows = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    else:
        rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    nq = rows // M
    return rows, rows < R, rows % M, nq, nq // Q


@triton.jit
def level_geometry(shapes_ptr, starts_ptr, l, n, m, S, M, INT64: tl.constexpr, ACC: tl.constexpr):
    """Height, width (int and float) of level ``l`` and each row's value row ``(n, start_l, m)``."""
    H = tl.load(shapes_ptr + 2 * l).to(tl.int32)
    W = tl.load(shapes_ptr + 2 * l + 1).to(tl.int32)
    start = tl.load(starts_ptr + l)
    if not INT64:
        start = start.to(tl.int32)
    return H, W, H.to(ACC), W.to(ACC), (n * S + start) * M + m

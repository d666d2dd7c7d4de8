"""Pieces shared by the forward and backward Triton kernels (kernel version 4).

Row layout. Every kernel works on rows ``r = (n * Q + q) * M + m``: one row is one (query, head) pair,
the heads of a query in consecutive rows. Locations/offsets are ``(R, L*P, 2)``, weights/logits
``(R, L*P)``, the output ``(R, D)``: flat views of the public layouts.

Work items. Which ``BLOCK_R`` rows a program (or, in the tile layout, one step of a program) owns is
the work layout (:func:`layout_rows`): consecutive rows, one head's strip of queries, or one head's
2-D tile of queries on their level's grid. The item walks the levels, and in each level the points in
chunks of ``P_BLOCK``: per step it gathers the 4 bilinear corners of ``BLOCK_R x P_BLOCK`` points as
``[D_SPLIT, BLOCK_R, P_BLOCK, BLOCK_D / D_SPLIT]`` tiles (one contiguous ``D``-channel row of ``value``
per point and corner, split in ``D_SPLIT`` chunks so that a thread owns ``D_SPLIT`` 16-byte pieces of
a row), so ``4 * BLOCK_R * P_BLOCK`` independent row loads are in flight before the first is used.
Per-point quantities (coordinates, weights, in-map tests, corner offsets) are ``[BLOCK_R, P_BLOCK]``.

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
def layout_rows(item, R, Q, M, L, shapes_ptr, starts_ptr, LAYOUT: tl.constexpr, INT64: tl.constexpr,
                BLOCK_R: tl.constexpr, TILE_W: tl.constexpr):
    """The rows ``(n * Q + q) * M + m`` that work item ``item`` owns (``LAYOUT`` is the index of the
    layout's name in ``launch.LAYOUTS``):

    - rows (0): ``BLOCK_R`` consecutive rows (several heads of consecutive queries);
    - strip (1): one head ``m`` of ``BLOCK_R`` consecutive queries (``item = (n * M + m) * nblocks + b``);
    - tile (2): one head of a ``(BLOCK_R / TILE_W) x TILE_W`` tile of queries on their own level's grid
      (``Q == S``, queries in pyramid order), ``item = (n * M + m) * tiles + t`` over all levels' tiles.

    Returns ``(rows, rmask, nq, n, m)`` with ``n, m`` per row (rows) or scalars (strip, tile)."""
    lane = tl.arange(0, BLOCK_R)
    if INT64:
        item = tl.cast(item, tl.int64)  # a Python int in the tile loop under the interpreter
        lane = lane.to(tl.int64)
    if LAYOUT == 0:
        rows = item * BLOCK_R + lane
        nq = rows // M
        return rows, rows < R, nq, nq // Q, rows % M
    elif LAYOUT == 1:
        nblocks = tl.cdiv(Q, BLOCK_R)
        nm = item // nblocks
        q = (item % nblocks) * BLOCK_R + lane
        n = nm // M
        nq = n * Q + q
        return nq * M + nm % M, q < Q, nq, n, nm % M
    else:
        TILE_H: tl.constexpr = BLOCK_R // TILE_W
        tiles = level_tiles(shapes_ptr, L, TILE_H, TILE_W)
        nm = item // tiles
        t = item % tiles
        # Find the tile's level: the last level whose first tile is <= t.
        first = t * 0
        lq = t * 0
        local = t
        for l in range(L):
            H = tl.load(shapes_ptr + 2 * l).to(tl.int32)
            W = tl.load(shapes_ptr + 2 * l + 1).to(tl.int32)
            here = t >= first
            lq = tl.where(here, l, lq)
            local = tl.where(here, t - first, local)
            first += tl.cdiv(H, TILE_H) * tl.cdiv(W, TILE_W)
        H = tl.load(shapes_ptr + 2 * lq).to(tl.int32)
        W = tl.load(shapes_ptr + 2 * lq + 1).to(tl.int32)
        start = tl.load(starts_ptr + lq)
        if not INT64:
            start = start.to(tl.int32)
        tiles_x = tl.cdiv(W, TILE_W)
        y = (local // tiles_x) * TILE_H + lane // TILE_W
        x = (local % tiles_x) * TILE_W + lane % TILE_W
        n = nm // M
        nq = n * Q + start + y * W + x
        return nq * M + nm % M, (y < H) & (x < W), nq, n, nm % M


@triton.jit
def level_tiles(shapes_ptr, L, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """Number of ``TILE_H x TILE_W`` tiles over all levels' grids."""
    tiles = 0
    for l in range(L):
        H = tl.load(shapes_ptr + 2 * l).to(tl.int32)
        W = tl.load(shapes_ptr + 2 * l + 1).to(tl.int32)
        tiles += tl.cdiv(H, TILE_H) * tl.cdiv(W, TILE_W)
    return tiles


@triton.jit
def load_pair(ptr, index, mask, VEC_XY: tl.constexpr, ACC: tl.constexpr):
    """``(ptr[2 * index], ptr[2 * index + 1])`` as ``ACC``; with ``VEC_XY`` one load of both (a 64-bit
    word for 32-bit coordinates, a 32-bit word for 16-bit ones; the launcher checks the alignment)."""
    if VEC_XY:
        if ptr.dtype.element_ty.primitive_bitwidth == 32:
            word = tl.load(ptr.to(tl.pointer_type(tl.int64), bitcast=True) + index, mask=mask, other=0)
            x = word.to(tl.int32).to(tl.float32, bitcast=True)
            y = (word >> 32).to(tl.int32).to(tl.float32, bitcast=True)
        else:
            word = tl.load(ptr.to(tl.pointer_type(tl.int32), bitcast=True) + index, mask=mask, other=0)
            x = word.to(tl.int16).to(ptr.dtype.element_ty, bitcast=True)
            y = (word >> 16).to(tl.int16).to(ptr.dtype.element_ty, bitcast=True)
        return x.to(ACC), y.to(ACC)
    else:
        x = tl.load(ptr + 2 * index, mask=mask, other=0.0).to(ACC)
        y = tl.load(ptr + 2 * index + 1, mask=mask, other=0.0).to(ACC)
        return x, y


@triton.jit
def corner_axis(x_im, W, Wf, stride):
    """One axis of the bilinear corners, for the instruction diet: the coordinate is clamped into
    ``[-2, W]`` (a point further out has both corners outside either way, and so has a clamped one: no
    value and no gradient; NaN goes to -2 on every platform, its NaN is carried separately), so the two
    corner indices ``x0, x0 + 1`` lie in ``[-2, W + 1]``; each bounds test is one unsigned compare; the
    indices used for the loads are clamped into the map (a corner outside has weight 0 and its load
    reads a neighbouring in-map row the program reads anyway), so the gathers need no masks.

    Returns ``(f, ok0, ok1, off0, off1)``: the fraction, the in-map tests and ``stride *`` the clamped
    corner indices."""
    x = tl.minimum(tl.where(x_im > -2.0, x_im, -2.0), Wf)
    x0f = tl.floor(x)
    f = x - x0f
    x0 = x0f.to(tl.int32)
    x1 = x0 + 1
    ok0 = x0.to(tl.uint32) < W.to(tl.uint32)
    ok1 = x1.to(tl.uint32) < W.to(tl.uint32)
    c1 = tl.minimum(tl.maximum(x1, 0), W - 1)
    c0 = tl.where(ok0, x0, c1)
    return f, ok0, ok1, c0 * stride, c1 * stride


@triton.jit
def point_geometry(loc_ptr, attw_ptr, ref_ptr, rows, nq, rmask, pmask, l, j, W, H, Wf, Hf, row_max, inv_denom, LP,
                   REF_LEVELS: tl.constexpr, FUSED: tl.constexpr, VEC_XY: tl.constexpr, ACC: tl.constexpr):
    """Per point of a ``[BLOCK_R, P_BLOCK]`` chunk: attention weight, fractions, in-map tests and corner
    offsets (in rows of ``D``: ``y * W * M + x * M``, times ``M`` by the caller's strides) and the NaN
    carrier ``nan = 0 * (x_im + y_im + weight)`` (NaN when a coordinate or the weight is NaN or
    infinite, as ``grid_sample`` returns NaN there; else 0)."""
    point = rows[:, None] * LP + j
    ox, oy = load_pair(loc_ptr, point, pmask, VEC_XY, ACC)
    aw = tl.load(attw_ptr + point, mask=pmask, other=0.0).to(ACC)
    if FUSED:
        if REF_LEVELS == 1:
            ref = nq
        else:
            ref = nq * REF_LEVELS + l
        rx, ry = load_pair(ref_ptr, ref, rmask, VEC_XY, ACC)
        x_im = (rx * Wf - 0.5)[:, None] + ox
        y_im = (ry * Hf - 0.5)[:, None] + oy
        weight = tl.exp(aw - row_max[:, None]) * inv_denom[:, None]
        weight = tl.where(pmask, weight, 0.0)
    else:
        x_im = ox * Wf - 0.5
        y_im = oy * Hf - 0.5
        weight = aw
    nan = (x_im + y_im + weight) * 0.0
    return x_im, y_im, weight, nan


@triton.jit
def level_dims(shapes_ptr, starts_ptr, l, INT64: tl.constexpr, ACC: tl.constexpr):
    """Height, width (int and float) and first flat position of level ``l``."""
    H = tl.load(shapes_ptr + 2 * l).to(tl.int32)
    W = tl.load(shapes_ptr + 2 * l + 1).to(tl.int32)
    start = tl.load(starts_ptr + l)
    if not INT64:
        start = start.to(tl.int32)
    return H, W, H.to(ACC), W.to(ACC), start


@triton.jit
def gather_chunks(value_ptr, offset, d4, D, EVEN_D: tl.constexpr, ACC: tl.constexpr):
    """The ``value`` rows at element offsets ``offset`` (``[BLOCK_R, P_BLOCK]``, always inside ``value``)
    as a ``[D_SPLIT, BLOCK_R, P_BLOCK, DC]`` tile; masked only when ``D`` is not a power of two."""
    # Row pointer first, then the channel offsets: they become immediate offsets of the loads.
    ptrs = (value_ptr + offset)[None, :, :, None] + d4
    if EVEN_D:
        return tl.load(ptrs).to(ACC)
    else:
        return tl.load(ptrs, mask=d4 < D, other=0.0).to(ACC)


@triton.jit
def store_pair(ptr, index, x, y, mask):
    """``ptr[2 * index] = x``, ``ptr[2 * index + 1] = y``; one 64-bit store for fp32 (the buffers the
    backward allocates are aligned)."""
    if ptr.dtype.element_ty == tl.float32:
        word = x.to(tl.int32, bitcast=True).to(tl.uint32).to(tl.int64) | (y.to(tl.int32, bitcast=True).to(tl.int64) << 32)
        tl.store(ptr.to(tl.pointer_type(tl.int64), bitcast=True) + index, word, mask=mask)
    else:
        tl.store(ptr + 2 * index, x, mask=mask)
        tl.store(ptr + 2 * index + 1, y, mask=mask)

"""Launch helpers shared by the forward and backward Triton launchers, and the one accumulation-dtype
rule every implementation (kernels and reference) follows.

Nothing here imports Triton at module level: the reference path imports :func:`acc_dtype` on machines
without Triton.
"""
from __future__ import annotations

import torch

__all__ = ["acc_dtype", "needs_int64", "launch_shape", "block_meta", "grid_size", "kernel_meta", "next_power_of_2",
           "LAYOUTS"]

# Work layouts (the ``LAYOUT`` key of an autotune config; the kernels' ``LAYOUT`` constexpr is the index):
# "rows": BLOCK_R consecutive (query, head) rows, several heads per program (the layout of kernel v3);
# "strip": one head of BLOCK_R consecutive queries; "tile": one head of a (BLOCK_R / TILE_W) x TILE_W
# tile of queries on their own level's grid, for Q == S (queries are the pyramid positions); a "tile"
# config runs as "strip" when Q != S.
LAYOUTS = ("rows", "strip", "tile")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """What sums are accumulated in: float64 for float64 inputs, float32 for every other float."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def next_power_of_2(n: int) -> int:
    """Smallest power of two ``>= n`` (``triton.next_power_of_2`` without importing Triton)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def needs_int64(*sizes: int) -> bool:
    """Whether any flat offset the kernels form can pass int32."""
    return max(sizes) >= 2**31 - 1


def launch_shape(value: torch.Tensor, sampling: torch.Tensor):
    """``(N, S, M, D, Q, L, P, R)`` from value ``(N, S, M, D)`` and locations/offsets ``(N, Q, M, L, P, 2)``."""
    N, S, M, D = value.shape
    Q, L, P = sampling.shape[1], sampling.shape[3], sampling.shape[4]
    return N, S, M, D, Q, L, P, N * Q * M


def block_meta(config: dict, P: int, queries_are_positions: bool = False, D: int = 1) -> dict:
    """Launch meta-parameters of a config: the point chunk never exceeds the points there are, a row is
    split into at most ``next_power_of_2(D)`` chunks, and a "tile" config runs as "strip" unless the
    queries are the pyramid positions (``Q == S``). Configs without the keys of kernel v4 (``LAYOUT``,
    ``D_SPLIT``, ``TILE_W``) are the v3 kind: "rows", ``D_SPLIT=1``."""
    layout = config.get("LAYOUT", "rows")
    if layout not in LAYOUTS:
        raise ValueError(f"autotune config: got LAYOUT={layout!r}, expected one of {LAYOUTS}")
    if layout == "tile" and not queries_are_positions:
        layout = "strip"
    block_r = config["BLOCK_R"]
    tile_w = min(config.get("TILE_W", 8), block_r) if layout == "tile" else 1
    return dict(LAYOUT=LAYOUTS.index(layout), BLOCK_R=block_r, P_BLOCK=min(config["P_BLOCK"], next_power_of_2(P)),
                D_SPLIT=min(config.get("D_SPLIT", 1), next_power_of_2(D)), TILE_W=tile_w,
                num_warps=config["num_warps"], num_stages=config["num_stages"])


# Programs per SM that walk the tiles of the "tile" layout (its tile count is only known on the device).
TILE_PROGRAMS_PER_SM = 8
# Under the interpreter (CPU tensors) programs run one after another: a few, each walking several tiles.
TILE_PROGRAMS_CPU = 3


def grid_size(block: dict, device, N: int, Q: int, M: int, S: int):
    """``(grid, NPROG)`` of a launch: one program per work item, except the "tile" layout, where
    ``NPROG`` programs walk all tiles (at most one per position: ``N * M * S`` bounds the tile count)."""
    import torch

    b = block["BLOCK_R"]
    layout = LAYOUTS[block["LAYOUT"]]
    if layout == "rows":
        return (-(-N * Q * M // b),), 1
    if layout == "strip":
        return (N * M * -(-Q // b),), 1
    if device.type == "cuda":
        cap = torch.cuda.get_device_properties(device).multi_processor_count * TILE_PROGRAMS_PER_SM
    else:
        cap = TILE_PROGRAMS_CPU
    nprog = max(1, min(N * M * S, cap))
    return (nprog,), nprog


def kernel_meta(value, sampling, ref, fused: bool, *flat_sizes: int):
    """What both kernels are compiled for: ``(constexprs, ref_levels, ref argument)``. ``flat_sizes`` are
    the largest flat sizes the kernel indexes besides value and the locations (64-bit indexing test).
    The level sizes are not among them: the kernels read ``(H_l, W_l)`` and the level starts from the
    level tensors on the device, so a launch needs no host copy of them."""
    import triton.language as tl

    D, L, P = value.shape[3], sampling.shape[3], sampling.shape[4]
    ref_levels = 1 if ref is None or ref.dim() == 3 else L
    acc = {torch.float64: tl.float64, torch.float32: tl.float32}[acc_dtype(value.dtype)]
    coords = [sampling] if ref is None else [sampling, ref]
    meta = dict(
        REF_LEVELS=ref_levels, FUSED=fused, INT64=needs_int64(value.numel(), sampling.numel(), *flat_sizes),
        ACC=acc, BLOCK_D=next_power_of_2(D), LP_POW2=next_power_of_2(L * P), EVEN_D=next_power_of_2(D) == D,
        # (x, y) read as one word: 32-bit and 16-bit coordinates whose pairs are aligned to the word size.
        VEC_XY=all(t.element_size() <= 4 and t.data_ptr() % (2 * t.element_size()) == 0 for t in coords),
    )
    return meta, ref_levels, ref if ref is not None else sampling  # the ref argument is unused when not fused

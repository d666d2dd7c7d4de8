"""Launch helpers shared by the forward and backward Triton launchers, and the one accumulation-dtype
rule every implementation (kernels and reference) follows.

Nothing here imports Triton at module level: the reference path imports :func:`acc_dtype` on machines
without Triton.
"""
from __future__ import annotations

import torch

__all__ = ["acc_dtype", "needs_int64", "launch_shape", "block_meta", "kernel_meta", "next_power_of_2"]


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


def block_meta(config: dict, P: int) -> dict:
    """Launch meta-parameters of a config: the point chunk never exceeds the points there are."""
    return dict(BLOCK_R=config["BLOCK_R"], P_BLOCK=min(config["P_BLOCK"], next_power_of_2(P)),
                num_warps=config["num_warps"], num_stages=config["num_stages"])


def kernel_meta(value, sampling, ref, fused: bool, *flat_sizes: int):
    """What both kernels are compiled for: ``(constexprs, ref_levels, ref argument)``. ``flat_sizes`` are
    the largest flat sizes the kernel indexes besides value and the locations (64-bit indexing test).
    The level sizes are not among them: the kernels read ``(H_l, W_l)`` and the level starts from the
    level tensors on the device, so a launch needs no host copy of them."""
    import triton.language as tl

    D, L, P = value.shape[3], sampling.shape[3], sampling.shape[4]
    ref_levels = 1 if ref is None or ref.dim() == 3 else L
    acc = {torch.float64: tl.float64, torch.float32: tl.float32}[acc_dtype(value.dtype)]
    meta = dict(
        REF_LEVELS=ref_levels, FUSED=fused, INT64=needs_int64(value.numel(), sampling.numel(), *flat_sizes),
        ACC=acc, BLOCK_D=next_power_of_2(D), LP_POW2=next_power_of_2(L * P),
    )
    return meta, ref_levels, ref if ref is not None else sampling  # the ref argument is unused when not fused

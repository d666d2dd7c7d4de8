"""Named problem shapes (benchmarks, autotune presets) and random inputs for them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch

__all__ = ["ProblemShape", "PRESETS", "make_inputs", "level_tensors"]


def level_tensors(spatial_shapes: Union[torch.Tensor, Sequence[Sequence[int]]]):
    """``(spatial_shapes (L, 2) int64, level_start_index (L,) int64)``, on the CPU when given as a list
    (which costs the op no host synchronisation). The one place the level starts are computed."""
    if not isinstance(spatial_shapes, torch.Tensor):
        sizes = [v for hw in spatial_shapes for v in hw]
        if any(isinstance(v, torch.SymInt) for v in sizes):  # torch.export with a free input size: the
            # sizes are computed in the graph, not baked in
            spatial_shapes = torch.stack([torch.scalar_tensor(v, dtype=torch.long) for v in sizes]).view(-1, 2)
        else:
            spatial_shapes = torch.as_tensor([int(v) for v in sizes], dtype=torch.long).view(-1, 2)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))
    return spatial_shapes, level_start_index


@dataclass(frozen=True)
class ProblemShape:
    """One sampling problem: batch ``N``, pyramid ``levels`` ``[(H_l, W_l)]``, heads ``M``, head dim ``D``,
    points ``P`` and queries ``Q`` (``None``: one query per pyramid position, as in an encoder)."""

    N: int
    levels: tuple
    M: int = 8
    D: int = 32
    P: int = 4
    Q: int | None = None

    @property
    def S(self) -> int:
        return sum(h * w for h, w in self.levels)

    @property
    def L(self) -> int:
        return len(self.levels)

    @property
    def num_queries(self) -> int:
        return self.S if self.Q is None else self.Q

    def describe(self) -> str:
        lv = ",".join(f"{h}x{w}" for h, w in self.levels)
        return f"N={self.N} Q={self.num_queries} M={self.M} D={self.D} P={self.P} levels={lv}"


PRESETS = {
    # Deformable DETR encoder at ~800x1333.
    "detr_enc": ProblemShape(N=2, levels=((100, 167), (50, 84), (25, 42), (13, 21))),
    # CSSFormer decoder at 512x512 on Swin (strides 4..32).
    "seg512": ProblemShape(N=4, levels=((128, 128), (64, 64), (32, 32), (16, 16))),
}


def make_inputs(shape: ProblemShape, *, dtype=torch.float32, device="cpu", seed: int = 0, fused: bool = False,
                outside: float = 0.1, requires_grad: bool = False):
    """Random inputs. Locations spread a little past ``[0, 1]`` (``outside``) so that border and outside
    corners are exercised. Returns ``(value, spatial_shapes, level_start_index, locations, weights)`` or,
    with ``fused=True``, ``(value, spatial_shapes, level_start_index, reference_points, offsets, logits)``."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    N, M, D, P, L, Q, S = shape.N, shape.M, shape.D, shape.P, shape.L, shape.num_queries, shape.S
    spatial_shapes, level_start_index = level_tensors(shape.levels)

    def rand(*size, lo=0.0, hi=1.0):
        return torch.rand(*size, generator=g) * (hi - lo) + lo

    value = torch.randn(N, S, M, D, generator=g)
    if fused:
        ref = rand(N, Q, L, 2)
        offsets = torch.randn(N, Q, M, L, P, 2, generator=g) * 3.0
        logits = torch.randn(N, Q, M, L, P, generator=g)
        tensors = [value, ref, offsets, logits]
    else:
        locations = rand(N, Q, M, L, P, 2, lo=-outside, hi=1.0 + outside)
        weights = torch.rand(N, Q, M, L, P, generator=g)
        weights = weights / weights.sum((-1, -2), keepdim=True)
        tensors = [value, locations, weights]
    tensors = [t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for t in tensors]
    spatial_shapes, level_start_index = spatial_shapes.to(device), level_start_index.to(device)
    return (tensors[0], spatial_shapes, level_start_index, *tensors[1:])


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_shape(text: str) -> ProblemShape:
    """``N,Q,M,D,P,H1xW1[,H2xW2...]``; ``Q`` may be ``S`` (one query per pyramid position)."""
    parts = text.split(",")
    ok = len(parts) >= 6 and all(p.isdigit() for p in parts[:5] if p.upper() != "S") and all(
        len(lv.split("x")) == 2 and all(v.isdigit() and int(v) > 0 for v in lv.split("x")) for lv in parts[5:])
    if not ok:
        raise ValueError(f"shape: got {text!r}, expected N,Q,M,D,P,H1xW1[,H2xW2...] (Q may be S)")
    N, Q, M, D, P = (None if p.upper() == "S" else int(p) for p in parts[:5])
    if N is None or M is None or D is None or P is None:
        raise ValueError(f"shape: got {text!r}, only Q may be S")
    levels = tuple(tuple(int(v) for v in lv.split("x")) for lv in parts[5:])
    return ProblemShape(N=N, levels=levels, M=M, D=D, P=P, Q=Q)

"""Sampling inputs of the benchmarks by distribution: ``uniform``, ``local`` and ``recorded``.

- ``uniform``: anywhere on the maps (``cssformer_kernels.shapes.make_inputs``: locations
  ``U(-0.1, 1.1)``; fused form: reference points ``U(0, 1)``, offsets ``N(0, 3 px)``).
- ``local``: each query at its own pyramid position (``Q == S``, queries in pyramid order), offsets
  ``N(0, 2 px)`` in each level's pixels, logits ``N(0, 1)``: what an encoder and the CSSFormer decoder
  do once trained.
- ``recorded``: reference points, offsets and logits captured at the sampling op from a real forward.
  ``cssformer`` shapes: cssformer-swin-t at 512x512, **random initialisation** (no trained weights
  here), one random image (batch 1, repeated for larger batches), both deformable layers (MSFE, CSF).
  ``detr_enc``: one Deformable-DETR encoder attention layer (``MSDeformAttn``, 256 channels, 8 heads,
  4 levels, 4 points) at its initialisation, random queries at the pyramid positions. At Deformable
  DETR's initialisation the offsets' weights are zero, so the offsets are its initial rings (head ``m``
  in direction ``2 pi m / M``, point ``p`` at ``p + 1`` px), whatever the input.

Everything here is built in fp32 on the CPU; callers cast and move.
"""
from __future__ import annotations

import torch

import benchlib

INPUTS = ("uniform", "local", "recorded")
LOCAL_SIGMA_PX = 2.0


def query_grid(shape):
    """``(level, y, x)`` of every query in pyramid order (one query per pyramid token)."""
    lv, ys, xs = [], [], []
    for i, (h, w) in enumerate(shape.levels):
        y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        lv.append(torch.full((h * w,), i))
        ys.append(y.reshape(-1))
        xs.append(x.reshape(-1))
    return torch.cat(lv), torch.cat(ys), torch.cat(xs)


def pyramid_reference_points(shape) -> torch.Tensor:
    """``(Q, 2)`` normalised ``(x, y)`` of each query's own pixel centre (``Q == S``)."""
    if shape.Q is not None and shape.Q != shape.S:
        raise ValueError(f"queries at their pyramid positions need Q == S, got Q={shape.Q}, S={shape.S}")
    lv, ys, xs = query_grid(shape)
    hw = torch.tensor(shape.levels, dtype=torch.float32)  # (L, 2): (H, W)
    return torch.stack(((xs.float() + 0.5) / hw[lv, 1], (ys.float() + 0.5) / hw[lv, 0]), -1)


def local_fused(shape, seed: int = 0, sigma_px: float = LOCAL_SIGMA_PX):
    """``(reference_points (N, Q, 2), offsets (N, Q, M, L, P, 2) px, logits (N, Q, M, L, P))``."""
    g = torch.Generator().manual_seed(seed)
    N, Q, M, L, P = shape.N, shape.num_queries, shape.M, shape.L, shape.P
    ref = pyramid_reference_points(shape)[None].expand(N, -1, -1).contiguous()
    offsets = torch.randn(N, Q, M, L, P, 2, generator=g) * sigma_px
    logits = torch.randn(N, Q, M, L, P, generator=g)
    return ref, offsets, logits


def record_cssformer(size: int = 512, seed: int = 0) -> list[tuple[str, tuple, tuple]]:
    """``[(layer, levels, (reference_points, offsets, logits))]`` of cssformer-swin-t's deformable
    layers at random initialisation on one random image, captured at the fused op the layers call."""
    import cssformer_kernels.module as kmodule
    from cssformer.models.registry import build_model

    torch.manual_seed(seed)
    model = build_model("cssformer-swin-t", 150, img_size=size).eval()
    captured = []
    original = kmodule.ms_deform_attn_fused

    def spy(value, spatial_shapes, level_start_index, reference_points, offsets, logits, **kwargs):
        levels = tuple(tuple(int(v) for v in hw) for hw in spatial_shapes.tolist())
        captured.append((levels, tuple(t.detach().float().clone() for t in (reference_points, offsets, logits))))
        return original(value, spatial_shapes, level_start_index, reference_points, offsets, logits, **kwargs)

    kmodule.ms_deform_attn_fused = spy
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, size, size))
    finally:
        kmodule.ms_deform_attn_fused = original
    names = ["msfe", "csf"] if len(captured) == 2 else [f"layer{i}" for i in range(len(captured))]
    return [(name, levels, tensors) for name, (levels, tensors) in zip(names, captured)]


def record_detr_encoder(shape, seed: int = 0) -> list[tuple[str, tuple, tuple]]:
    """One Deformable-DETR encoder attention layer at its initialisation, queries at the pyramid positions."""
    from cssformer_kernels import MSDeformAttn

    torch.manual_seed(seed)
    C = shape.M * shape.D
    layer = MSDeformAttn(C, shape.L, shape.M, shape.P)
    query = torch.randn(1, shape.S, C)
    with torch.no_grad():
        offsets = layer.sampling_offsets(query).view(1, shape.S, shape.M, shape.L, shape.P, 2)
        logits = layer.attention_weights(query).view(1, shape.S, shape.M, shape.L, shape.P)
    return [("encoder", tuple(shape.levels), (pyramid_reference_points(shape)[None], offsets, logits))]


_RECORDINGS: dict = {}


def recorded_fused(shape_name: str, shape, seed: int = 0) -> list[tuple[str, tuple]]:
    """``[(layer, (reference_points, offsets, logits))]`` recorded for a shape, batch repeated to ``N``;
    ``[]`` when nothing is recorded for it (cssformer-swin-t's levels at 512x512, or ``detr_enc``)."""
    key = ("cssformer" if shape_name in benchlib.MODEL_PRESETS else shape_name, seed)
    if key not in _RECORDINGS:
        if key[0] == "cssformer":
            _RECORDINGS[key] = record_cssformer(seed=seed)
        elif shape_name == "detr_enc":
            _RECORDINGS[key] = record_detr_encoder(shape, seed)
        else:
            _RECORDINGS[key] = []
    out = []
    for layer, levels, (ref, offsets, logits) in _RECORDINGS[key]:
        if tuple(levels) != tuple(shape.levels) or offsets.shape[2:5] != (shape.M, shape.L, shape.P):
            continue
        reps = -(-shape.N // ref.shape[0])
        out.append((layer, tuple(t.repeat(reps, *([1] * (t.dim() - 1)))[:shape.N] for t in (ref, offsets, logits))))
    return out


def fused_sets(inputs: str, shape_name: str, shape, seed: int = 0) -> list[tuple[str | None, tuple]]:
    """``[(layer, (reference_points, offsets, logits))]`` in fp32 for ``local`` / ``recorded`` inputs."""
    if inputs == "local":
        return [(None, local_fused(shape, seed))]
    if inputs == "recorded":
        return recorded_fused(shape_name, shape, seed)
    raise ValueError(f"inputs: got {inputs!r}, expected local or recorded here")


def locations(inputs: str, shape_name: str, shape, seed: int = 0) -> list[tuple[str | None, torch.Tensor]]:
    """``[(layer, normalised locations (N, Q, M, L, P, 2))]`` in fp32."""
    from cssformer_kernels import fused_locations_and_weights
    from cssformer_kernels.shapes import level_tensors

    if inputs == "uniform":
        g = torch.Generator().manual_seed(seed)
        return [(None, torch.rand(shape.N, shape.num_queries, shape.M, shape.L, shape.P, 2, generator=g) * 1.2 - 0.1)]
    spatial_shapes, _ = level_tensors(shape.levels)
    return [(layer, fused_locations_and_weights(spatial_shapes, *tensors)[0])
            for layer, tensors in fused_sets(inputs, shape_name, shape, seed)]

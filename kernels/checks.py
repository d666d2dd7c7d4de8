"""Input checks for the sampling ops: every failure is a ``ValueError`` naming the argument, what it got
and what was expected, raised before any kernel runs.

Level tensors on a GPU. Checking their values needs them on the host, a copy that waits for the GPU.
Drop-in users (Deformable DETR, Mask2Former, DINO) keep them on the GPU, so :func:`check_levels` reads
them once per distinct tensor: a pair that passed is remembered by its storage address, version counter
(bumped by every in-place change), shape, stride, dtype and device, with ``value.shape[1]``; the next
call with that pair reads nothing from the GPU. Level tensors on the CPU are read on every call (no
sync, and no chance to trust a new tensor that happens to reuse a freed address).

This module is the one owner of the level tensors: :func:`check_levels` checks them and
:func:`levels_on` gives the op its int64 copies on value's device, both through the one cache
``_VALIDATED_LEVELS`` (pairs that passed; copies of CPU levels on value's device, one per distinct
value, so a model that keeps its shapes on the CPU triggers no copy and no sync per call).

Dtypes. ``value`` sets the dtype: weights (and logits) in another floating dtype are cast to it, as
mmcv's ``MultiScaleDeformableAttnFunction`` does (under autocast the softmax before the op runs in
float32); coordinates in value's dtype or float32 are taken as they are (float32 is the more precise
choice next to half values), in any other floating dtype they are cast to value's dtype. Sums are
accumulated in float32 (float64 for float64 values) whatever the inputs. :func:`coords_like_value`
and :func:`weights_like_value` are the rule; the checks accept every floating dtype.
"""
from __future__ import annotations

import os

import torch

from .shapes import level_tensors

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fail(name: str, got, expected: str) -> None:
    raise ValueError(f"{name}: got {got}, expected {expected}")


def _shape(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}"


def _check_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        _fail(name, type(t).__name__, "a torch.Tensor")


def _check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in _FLOATS:
        _fail(name, f"dtype {t.dtype}", "a floating dtype (float16, bfloat16, float32 or float64)")


def _check_rank(name: str, t: torch.Tensor, rank: int, layout: str) -> None:
    if t.dim() != rank:
        _fail(name, _shape(t), f"{rank} dimensions {layout}")


def _check_dims(name: str, t: torch.Tensor, expected: tuple, layout: str) -> None:
    if tuple(t.shape) != tuple(expected):
        _fail(name, _shape(t), f"{tuple(expected)} {layout}")


def _level_data_check_wanted(spatial_shapes: torch.Tensor) -> bool:
    """Checks that read the level tensors' values are free on CPU. On a GPU they cost one tiny copy to
    the host (once per distinct tensor, see the module docstring), so they are skipped under CUDA-graph
    capture, torch.compile, or ``CSSFORMER_TRUST_LEVELS=1``; also while torch.jit traces (fvcore), where
    the values would be baked into the trace."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if spatial_shapes.device.type == "cpu":
        return True
    if os.environ.get("CSSFORMER_TRUST_LEVELS", "0") == "1":
        return False
    if spatial_shapes.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return False
    return True


# The one level cache: ("checked", _level_key(...)) of level tensors off the CPU that passed -> True, and
# ("copy", device, shapes, starts) of level tensors given on the CPU -> their int64 copies on ``device``.
_VALIDATED_LEVELS: dict = {}
_CACHE_SIZE = 256


def _remember(key: tuple, entry):
    if len(_VALIDATED_LEVELS) >= _CACHE_SIZE:
        _VALIDATED_LEVELS.clear()
    _VALIDATED_LEVELS[key] = entry
    return entry


def _reads_levels_for_free(t: torch.Tensor) -> bool:
    return t.device.type == "cpu"


def _level_key(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor) -> tuple:
    """What a passed check of this pair stays valid for. Inference tensors have no version counter:
    one changed in place inside ``torch.inference_mode`` keeps its key."""
    return (value.shape[1],) + tuple(
        (t.device, t.data_ptr(), None if t.is_inference() else t._version, tuple(t.shape), t.stride(), t.dtype)
        for t in (spatial_shapes, level_start_index))


def _host_levels(spatial_shapes: torch.Tensor, level_start_index: torch.Tensor):
    """``([[H_l, W_l]], [start_l])`` as Python ints: one device-to-host copy for both tensors."""
    if _reads_levels_for_free(spatial_shapes) and _reads_levels_for_free(level_start_index):
        return spatial_shapes.tolist(), level_start_index.tolist()
    flat = torch.cat((spatial_shapes.reshape(-1).long(), level_start_index.long().to(spatial_shapes.device)))
    flat = flat.tolist()
    L = spatial_shapes.shape[0]
    return [flat[2 * i:2 * i + 2] for i in range(L)], flat[2 * L:]


def check_levels(value: torch.Tensor, spatial_shapes, level_start_index) -> None:
    _check_tensor("spatial_shapes", spatial_shapes)
    _check_tensor("level_start_index", level_start_index)
    if spatial_shapes.dtype.is_floating_point or spatial_shapes.dtype.is_complex or spatial_shapes.dtype == torch.bool:
        _fail("spatial_shapes", f"dtype {spatial_shapes.dtype}", "an integer dtype (int64) holding (H_l, W_l)")
    if level_start_index.dtype.is_floating_point or level_start_index.dtype.is_complex or level_start_index.dtype == torch.bool:
        _fail("level_start_index", f"dtype {level_start_index.dtype}", "an integer dtype (int64)")
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2 or spatial_shapes.shape[0] < 1:
        _fail("spatial_shapes", _shape(spatial_shapes), "(L, 2) with L >= 1, rows (H_l, W_l)")
    L = spatial_shapes.shape[0]
    _check_dims("level_start_index", level_start_index, (L,), "(L,) with L = spatial_shapes.shape[0]")
    for name, t in (("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index)):
        if t.device.type != "cpu" and t.device != value.device:
            _fail(name, f"device {t.device}", f"the device of value ({value.device}) or the CPU")
    if not _level_data_check_wanted(spatial_shapes):
        return
    cached = not (_reads_levels_for_free(spatial_shapes) and _reads_levels_for_free(level_start_index))
    key = ("checked", _level_key(value, spatial_shapes, level_start_index)) if cached else None
    if cached and key in _VALIDATED_LEVELS:
        return
    _check_level_values(value.shape[1], *_host_levels(spatial_shapes, level_start_index))
    if cached:
        _remember(key, True)


def levels_on(device: torch.device, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor):
    """The level tensors as the op takes them: int64, contiguous, on ``device``. Levels given on the CPU
    for tensors elsewhere are copied once per distinct value (the level cache); under ``torch.compile``
    the copy is part of the graph."""
    if spatial_shapes.device == device and level_start_index.device == device:
        return spatial_shapes.long().contiguous(), level_start_index.long().contiguous()
    if torch.compiler.is_compiling():
        return (spatial_shapes.to(device=device, dtype=torch.long).contiguous(),
                level_start_index.to(device=device, dtype=torch.long).contiguous())
    shapes, starts = _host_levels(spatial_shapes, level_start_index)
    key = ("copy", str(device), tuple(v for hw in shapes for v in hw), tuple(starts))
    hit = _VALIDATED_LEVELS.get(key)
    if hit is None:
        hit = _remember(key, (spatial_shapes.to(device=device, dtype=torch.long).contiguous(),
                              level_start_index.to(device=device, dtype=torch.long).contiguous()))
    return hit


def _check_level_values(S: int, shapes: list, starts: list) -> None:
    expect_start = 0
    for lid, ((h, w), start) in enumerate(zip(shapes, starts)):
        if h < 1 or w < 1:
            _fail("spatial_shapes", f"level {lid} of size {h}x{w}", "every H_l, W_l >= 1")
        if start != expect_start:
            _fail("level_start_index", f"{starts}", f"the running sum of H_l*W_l of spatial_shapes, "
                  f"{level_tensors(shapes)[1].tolist()}")
        expect_start += h * w
    if expect_start != S:
        _fail("spatial_shapes", f"levels {shapes} adding up to {expect_start} positions",
              f"sum of H_l*W_l equal to value.shape[1] = {S}")


def check_value(value) -> None:
    _check_tensor("value", value)
    _check_float("value", value)
    _check_rank("value", value, 4, "(N, S, M, D)")
    N, S, M, D = value.shape
    if N == 0:
        _fail("value", _shape(value), "a non-empty batch (N >= 1) in (N, S, M, D)")
    if S == 0 or M == 0 or D == 0:
        _fail("value", _shape(value), "S, M, D >= 1 in (N, S, M, D)")


def _check_same_device(name: str, t: torch.Tensor, value: torch.Tensor) -> None:
    if t.device != value.device:
        _fail(name, f"device {t.device}", f"the device of value ({value.device})")


def coords_like_value(value: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """The dtype rule for coordinates (module docstring): kept in value's dtype or float32 (fp32
    coordinates with bf16 values are the common mixed-precision setting: bf16 has 8 bits of mantissa, a
    quarter pixel at 128 wide), else cast to value's dtype. The cast is differentiable: gradients come
    back in the caller's dtype."""
    return coords if coords.dtype in (value.dtype, torch.float32) else coords.to(value.dtype)


def weights_like_value(value: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The dtype rule for attention weights and logits: value's dtype (mmcv's rule)."""
    return weights if weights.dtype == value.dtype else weights.to(value.dtype)


def _check_points(value, L: int, coords_name: str, coords, weights_name: str, weights) -> tuple[int, int]:
    """Checks the per-point tensors ``(N, Q, M, L, P, 2)`` and ``(N, Q, M, L, P)``; returns ``(Q, P)``."""
    N, _, M, _ = value.shape
    for name, t in ((coords_name, coords), (weights_name, weights)):
        _check_tensor(name, t)
    _check_float(coords_name, coords)
    _check_float(weights_name, weights)
    layout = "(N, Q, M, L, P, 2)"
    _check_rank(coords_name, coords, 6, layout)
    Q, P = coords.shape[1], coords.shape[4]
    if Q == 0:
        _fail(coords_name, _shape(coords), f"at least one query (Q >= 1) in {layout}")
    if P == 0:
        _fail(coords_name, _shape(coords), f"at least one point (P >= 1) in {layout}")
    _check_dims(coords_name, coords, (N, Q, M, L, P, 2), f"{layout} from value (N={N}, M={M}) and L={L} levels")
    _check_dims(weights_name, weights, (N, Q, M, L, P), "(N, Q, M, L, P)")
    for name, t in ((coords_name, coords), (weights_name, weights)):
        _check_same_device(name, t, value)
    return Q, P


def check_ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) -> None:
    if torch.jit.is_tracing():  # fvcore's FLOP count: shapes are traced values; the eager run checked them
        return
    check_value(value)
    check_levels(value, spatial_shapes, level_start_index)
    _check_points(value, spatial_shapes.shape[0], "sampling_locations", sampling_locations, "attention_weights",
                  attention_weights)


def check_ms_deform_attn_fused(value, spatial_shapes, level_start_index, reference_points, sampling_offsets,
                               attention_logits) -> None:
    if torch.jit.is_tracing():
        return
    check_value(value)
    check_levels(value, spatial_shapes, level_start_index)
    L = spatial_shapes.shape[0]
    Q, _ = _check_points(value, L, "sampling_offsets", sampling_offsets, "attention_logits", attention_logits)
    N = value.shape[0]
    _check_tensor("reference_points", reference_points)
    _check_float("reference_points", reference_points)
    if reference_points.dim() == 3:
        _check_dims("reference_points", reference_points, (N, Q, 2), f"(N, Q, 2) or {(N, Q, L, 2)} (N, Q, L, 2)")
    else:
        _check_dims("reference_points", reference_points, (N, Q, L, 2), f"(N, Q, L, 2) or {(N, Q, 2)} (N, Q, 2)")
    _check_same_device("reference_points", reference_points, value)


def check_points_per_level(points_per_level, spatial_shapes, sampling_locations, attention_weights) -> list[int]:
    """Checks the per-level form's point counts and tensors ``(N, Q, M, sum P_l, 2)`` / ``(N, Q, M, sum P_l)``
    against ``spatial_shapes``; returns the counts as ints (the rest is checked by the canonical op)."""
    _check_tensor("spatial_shapes", spatial_shapes)
    L = spatial_shapes.shape[0] if spatial_shapes.dim() >= 1 else 0
    try:
        points = [int(p) for p in points_per_level]
        exact = all(p == q for p, q in zip(points, points_per_level))
    except (TypeError, ValueError):
        points, exact = [], False
    if not exact or len(points) != L or min(points, default=0) < 1:
        _fail("points_per_level", repr(points_per_level), f"{L} integers >= 1, one per level of spatial_shapes")
    total = sum(points)
    for name, t, layout in (("sampling_locations", sampling_locations, (total, 2)),
                            ("attention_weights", attention_weights, (total,))):
        _check_tensor(name, t)
        if t.dim() != 3 + len(layout) or tuple(t.shape[3:]) != layout:
            dims = "(N, Q, M, sum P_l, 2)" if len(layout) == 2 else "(N, Q, M, sum P_l)"
            _fail(name, _shape(t), f"{dims} with sum P_l = {total} (points_per_level {points})")
    if tuple(attention_weights.shape[:3]) != tuple(sampling_locations.shape[:3]):
        _fail("attention_weights", _shape(attention_weights),
              f"the (N, Q, M) of sampling_locations, {tuple(sampling_locations.shape[:3])}")
    return points

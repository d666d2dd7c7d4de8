"""Input checks for the sampling ops: every failure is a ``ValueError`` naming the argument, what it got
and what was expected, raised before any kernel runs.

Level tensors on a GPU. Checking their values needs them on the host, a copy that waits for the GPU.
Drop-in users (Deformable DETR, Mask2Former, DINO) keep them on the GPU, so :func:`check_levels` reads
them once per distinct tensor: a pair that passed is remembered by its storage address, version counter
(bumped by every in-place change), shape, stride, dtype and device, with ``value.shape[1]``; the next
call with that pair reads nothing from the GPU. Level tensors on the CPU are read on every call (no
sync, and no chance to trust a new tensor that happens to reuse a freed address).
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


_VALIDATED_LEVELS: dict = {}  # _level_key(...) of level tensors off the CPU that passed -> True


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
    key = _level_key(value, spatial_shapes, level_start_index) if cached else None
    if cached and key in _VALIDATED_LEVELS:
        return
    _check_level_values(value.shape[1], *_host_levels(spatial_shapes, level_start_index))
    if cached:
        if len(_VALIDATED_LEVELS) >= 256:
            _VALIDATED_LEVELS.clear()
        _VALIDATED_LEVELS[key] = True


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


def _check_coord_dtype(name: str, t: torch.Tensor, value: torch.Tensor) -> None:
    """Coordinates may be in value's dtype or in a wider float (fp32 coordinates with bf16 values are the
    common mixed-precision setting: bf16 has 8 bits of mantissa, a quarter pixel at 128 wide)."""
    _check_float(name, t)
    if t.dtype != value.dtype and t.dtype != torch.float32:
        _fail(name, f"dtype {t.dtype} with value {value.dtype}", f"{value.dtype} or torch.float32")


def _check_weight_dtype(name: str, t: torch.Tensor, value: torch.Tensor) -> None:
    _check_float(name, t)
    if t.dtype != value.dtype:
        _fail(name, f"dtype {t.dtype} with value {value.dtype}", f"the dtype of value ({value.dtype})")


def _check_points(value, L: int, coords_name: str, coords, weights_name: str, weights) -> tuple[int, int]:
    """Checks the per-point tensors ``(N, Q, M, L, P, 2)`` and ``(N, Q, M, L, P)``; returns ``(Q, P)``."""
    N, _, M, _ = value.shape
    for name, t in ((coords_name, coords), (weights_name, weights)):
        _check_tensor(name, t)
    _check_coord_dtype(coords_name, coords, value)
    _check_weight_dtype(weights_name, weights, value)
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
    _check_coord_dtype("reference_points", reference_points, value)
    if reference_points.dim() == 3:
        _check_dims("reference_points", reference_points, (N, Q, 2), f"(N, Q, 2) or {(N, Q, L, 2)} (N, Q, L, 2)")
    else:
        _check_dims("reference_points", reference_points, (N, Q, L, 2), f"(N, Q, L, 2) or {(N, Q, 2)} (N, Q, 2)")
    _check_same_device("reference_points", reference_points, value)

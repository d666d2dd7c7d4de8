"""Drop-in gaps: mixed floating dtypes (mmcv's rule), box references in MSDeformAttn, the per-level-points
form, and one owner each for the backend and the level tensors. Checked against a float64 reference."""
import pytest
import torch

import cssformer_kernels as K
from cssformer_kernels import checks, op
from cssformer_kernels.reference import ms_deform_attn_reference
from cssformer_kernels.shapes import ProblemShape, level_tensors, make_inputs
from msda_cases import SEED, TOLERANCE, rel_err

SHAPE = ProblemShape(N=2, levels=((5, 4), (3, 3), (1, 1)), M=2, D=12, P=2, Q=7)


def _backend(device):
    return "triton" if device == "cpu" else "auto"  # on a CPU: the Triton interpreter, the reference elsewhere


@pytest.mark.parametrize("value_dtype,coord_dtype,weight_dtype", [
    (torch.bfloat16, torch.float32, torch.float32),  # autocast: fp32 softmax next to bf16 values
    (torch.float16, torch.bfloat16, torch.float32),
    (torch.float32, torch.float64, torch.float16),
])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_mixed_dtypes_are_cast_to_value_and_match_float64(value_dtype, coord_dtype, weight_dtype, backend, device):
    value, ss, lsi, loc, w = make_inputs(SHAPE, seed=SEED, device=device)
    value = value.to(value_dtype).requires_grad_()
    loc = loc.to(coord_dtype).requires_grad_()
    w = w.to(weight_dtype).requires_grad_()
    if backend == "triton" and device != "cpu":
        backend = "auto"
    out = K.ms_deform_attn(value, ss, lsi, loc, w, backend=backend)
    assert out.dtype == value_dtype
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(SEED)).to(device)
    grads = torch.autograd.grad(out, (value, loc, w), grad_out.to(out.dtype))
    assert [g.dtype for g in grads] == [value_dtype, coord_dtype, weight_dtype]  # back in the callers' dtypes
    # The float64 oracle on what the rule hands the op: fp32 coordinates kept, the rest in value's dtype.
    kept = coord_dtype if coord_dtype == torch.float32 else value_dtype
    ref_in = [value.detach().double().requires_grad_(), loc.detach().to(kept).double().requires_grad_(),
              w.detach().to(value_dtype).double().requires_grad_()]
    ref = ms_deform_attn_reference(ref_in[0], ss, lsi, ref_in[1], ref_in[2])
    ref_grads = torch.autograd.grad(ref, ref_in, grad_out.double())
    tol = TOLERANCE[value_dtype]
    assert rel_err(out, ref) < tol, f"seed {SEED}"
    for g, r in zip(grads, ref_grads):  # a gradient is also rounded to its own dtype
        assert rel_err(g, r) < 4 * max(tol, TOLERANCE[g.dtype]), f"seed {SEED}"


def test_mixed_dtypes_in_the_fused_form(device):
    value, ss, lsi, ref, off, logits = make_inputs(SHAPE, seed=SEED, fused=True, device=device)
    value = value.bfloat16()
    out = K.ms_deform_attn_fused(value, ss, lsi, ref.double(), off, logits)  # fp64 refs -> bf16, fp32 logits -> bf16
    expected = K.ms_deform_attn_fused(value, ss, lsi, ref.bfloat16(), off, logits.bfloat16())
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)


def _box_layer(device, dtype=torch.float64):
    torch.manual_seed(SEED)
    layer = K.MSDeformAttn(d_model=24, n_levels=3, n_heads=2, n_points=3).to(device=device, dtype=dtype)
    with torch.no_grad():
        layer.sampling_offsets.weight.normal_(0, 0.5)
        layer.attention_weights.weight.normal_(0, 0.5)
    return layer


def _box_reference(layer, query, boxes, flat, levels):
    """Deformable DETR's box form written out in float64 on the reference op."""
    N, Q, _ = query.shape
    M, L, P = layer.n_heads, layer.n_levels, layer.n_points
    ss, lsi = level_tensors(levels)
    value = layer.value_proj(flat).view(N, -1, M, layer.head_dim)
    off = layer.sampling_offsets(query).view(N, Q, M, L, P, 2)
    w = layer.attention_weights(query).view(N, Q, M, L * P).softmax(-1).view(N, Q, M, L, P)
    b = boxes if boxes.dim() == 4 else boxes[:, :, None].expand(N, Q, L, 4)
    loc = b[:, :, None, :, None, :2] + off / P * b[:, :, None, :, None, 2:] * 0.5
    return layer.output_proj(ms_deform_attn_reference(value, ss, lsi, loc, w))


@pytest.mark.parametrize("per_level", [True, False])
def test_box_references_follow_deformable_detr(per_level, device):
    layer = _box_layer(device)
    levels = [(5, 4), (3, 3), (1, 1)]
    g = torch.Generator().manual_seed(SEED)
    query = torch.randn(2, 6, 24, generator=g, dtype=torch.float64).to(device)
    flat = torch.randn(2, 30, 24, generator=g, dtype=torch.float64).to(device)
    shape = (2, 6, 3, 4) if per_level else (2, 6, 4)
    boxes = torch.cat([torch.rand(*shape[:-1], 2, generator=g), 0.1 + 0.8 * torch.rand(*shape[:-1], 2, generator=g)],
                      -1).double().to(device)
    layer.backend = _backend(device)
    out = layer(query, boxes, flat, levels)
    grads = torch.autograd.grad(out.square().sum(), list(layer.parameters()))
    layer.backend = "reference"
    expected = _box_reference(layer, query, boxes, flat, levels)
    expected_grads = torch.autograd.grad(expected.square().sum(), list(layer.parameters()))
    assert rel_err(out, expected) < 1e-12
    for a, b in zip(grads, expected_grads):
        assert rel_err(a, b) < 1e-10


def test_bad_boxes_are_one_clear_line():
    layer = K.MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=1)
    with pytest.raises(ValueError, match=r"reference_points: got shape \(2, 3, 3, 4\), expected boxes \(2, 3, 4\) "
                                         r"or \(2, 3, 2, 4\)"):
        layer(torch.randn(2, 3, 16), torch.rand(2, 3, 3, 4), torch.randn(2, 5, 16), [(2, 2), (1, 1)])


def _per_level_inputs(points, device, dtype=torch.float64):
    levels = [(5, 4), (3, 3), (1, 2)]
    ss, lsi = level_tensors(levels)
    g = torch.Generator().manual_seed(SEED)
    N, Q, M, D = 2, 5, 2, 6
    value = torch.randn(N, int(ss.prod(1).sum()), M, D, generator=g, dtype=dtype).to(device)
    loc = (torch.rand(N, Q, M, sum(points), 2, generator=g, dtype=dtype) * 1.4 - 0.2).to(device)
    w = torch.rand(N, Q, M, sum(points), generator=g, dtype=dtype).softmax(-1).to(device)
    return value, ss, lsi, loc, w


def _per_level_reference(value, ss, loc, w, points):
    """Level by level on the float64 reference, each level with its own point count."""
    out, start = 0, 0
    for (h, wd), locs, ws in zip(ss.tolist(), loc.split(points, 3), w.split(points, 3)):
        one_ss, one_lsi = level_tensors([(h, wd)])
        out = out + ms_deform_attn_reference(value[:, start:start + h * wd], one_ss, one_lsi, locs[:, :, :, None],
                                             ws[:, :, :, None])
        start += h * wd
    return out


@pytest.mark.parametrize("points", [[3, 1, 2], [2, 2, 2]])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_per_level_points_match_float64(points, backend, device):
    value, ss, lsi, loc, w = (t.requires_grad_() if t.is_floating_point() else t
                              for t in _per_level_inputs(points, device))
    if backend == "triton" and device != "cpu":
        backend = "auto"
    out = K.ms_deform_attn_per_level(value, ss, lsi, loc, w, points, backend=backend)
    expected = _per_level_reference(value, ss, loc, w, points)
    assert rel_err(out, expected) < 1e-12
    grad_out = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(SEED)).to(device)
    for a, b in zip(torch.autograd.grad(out, (value, loc, w), grad_out),
                    torch.autograd.grad(expected, (value, loc, w), grad_out)):
        assert rel_err(a, b) < 1e-10


@pytest.mark.parametrize("mutate,message", [
    (lambda a: a.update(method="discrete"), "method: got 'discrete', expected 'default'"),
    (lambda a: a.update(points_per_level=[3, 3]), r"points_per_level: got \[3, 3\], expected 3 integers >= 1"),
    (lambda a: a.update(points_per_level=[3, 0, 3]), r"points_per_level: got \[3, 0, 3\]"),
    (lambda a: a.update(points_per_level=[2, 2, 1]), r"sampling_locations: got shape \(2, 5, 2, 6, 2\), expected "
                                                     r"\(N, Q, M, sum P_l, 2\) with sum P_l = 5 \(points_per_level"),
    (lambda a: a.update(attention_weights=a["attention_weights"][:, :3]), r"attention_weights: got shape \(2, 3, 2, 6\)"),
])
def test_per_level_bad_input_is_one_clear_line(mutate, message):
    points = [3, 1, 2]
    value, ss, lsi, loc, w = _per_level_inputs(points, "cpu")
    kwargs = dict(points_per_level=points, attention_weights=w)
    mutate(kwargs)
    with pytest.raises(ValueError, match=message):
        K.ms_deform_attn_per_level(value, ss, lsi, loc, **kwargs)


def test_backend_is_resolved_once_per_call(monkeypatch):
    calls = []
    resolve = op.resolve_backend
    monkeypatch.setattr(op, "resolve_backend", lambda *a: calls.append(a) or resolve(*a))
    value, ss, lsi, loc, w = make_inputs(SHAPE, seed=SEED, requires_grad=True)
    K.ms_deform_attn(value, ss, lsi, loc, w).sum().backward()
    assert len(calls) == 1
    value, ss, lsi, ref, off, logits = make_inputs(SHAPE, seed=SEED, fused=True, requires_grad=True)
    K.ms_deform_attn_fused(value, ss, lsi, ref, off, logits).sum().backward()
    assert len(calls) == 2


def test_one_level_cache_for_checks_and_device_copies(monkeypatch):
    monkeypatch.setattr(checks, "_VALIDATED_LEVELS", {})
    ss, lsi = level_tensors(SHAPE.levels)
    meta = torch.device("meta")  # another device than the levels' (no GPU needed to see the copy cached)
    first = checks.levels_on(meta, ss, lsi)
    assert first[0].device == meta and first[0].dtype == torch.long
    again = checks.levels_on(meta, ss.clone(), lsi.clone())  # same values: the cached copy
    assert again[0] is first[0] and again[1] is first[1]
    assert list(checks._VALIDATED_LEVELS) == [("copy", "meta", (5, 4, 3, 3, 1, 1), (0, 20, 29))]
    same_device = checks.levels_on(torch.device("cpu"), ss.int(), lsi)
    assert same_device[0].dtype == torch.long and torch.equal(same_device[0], ss)
    assert len(checks._VALIDATED_LEVELS) == 1

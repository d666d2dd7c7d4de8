"""The sampling ops (Triton through the interpreter on CPU, or on CUDA) against a float64 reference."""
import pytest
import torch

import cssformer_kernels as K
from cssformer_kernels.shapes import ProblemShape, make_inputs
from msda_cases import CASES, SEED, TOLERANCE, off_pixel_centres, rel_err

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _float64(tensors):
    return [t.detach().double().requires_grad_(True) if t.is_floating_point() else t for t in tensors]


def _outputs_and_grads(fn, inputs, grad_out, **kw):
    inputs = [t.detach().requires_grad_(True) if t.is_floating_point() else t for t in inputs]
    out = fn(*inputs, **kw)
    floats = [t for t in inputs if t.is_floating_point()]
    return out, torch.autograd.grad(out, floats, grad_out.to(out.dtype))


def _check_against_float64(fn, ref_fn, inputs, dtype, names):
    out_shape = (inputs[0].shape[0], inputs[3].shape[1], inputs[0].shape[2] * inputs[0].shape[3])
    grad_out = torch.randn(out_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(SEED))
    grad_out = grad_out.to(dtype).to(inputs[0].device)
    out, grads = _outputs_and_grads(fn, inputs, grad_out, backend="triton")
    ref_inputs = [t.detach().cpu() for t in _float64(inputs)]
    ref, ref_grads = _outputs_and_grads(ref_fn, ref_inputs, grad_out.double().cpu())
    assert out.dtype == dtype and out.shape == ref.shape
    tol = TOLERANCE[dtype]
    assert rel_err(out, ref) <= tol, f"output: rel err {rel_err(out, ref):.2e} > {tol} (seed {SEED})"
    for name, g, rg, t in zip(names, grads, ref_grads, [t for t in inputs if t.is_floating_point()]):
        assert g.dtype == t.dtype and g.shape == t.shape, name
        assert torch.isfinite(g).all(), f"grad {name} not finite (seed {SEED})"
        err = rel_err(g, rg)
        assert err <= tol, f"grad {name}: rel err {err:.2e} > {tol} (seed {SEED})"


# Every case in fp32; the half dtypes on the fixed cases (the interpreter is slow).
CASE_DTYPES = [pytest.param(case, dtype, id=f"{case}-{str(dtype)[6:]}") for case in CASES for dtype in DTYPES
               if dtype == torch.float32 or not case.startswith("random")]


@pytest.mark.parametrize("case,dtype", CASE_DTYPES)
def test_canonical_forward_and_grads_match_float64(case, dtype, device):
    shape = CASES[case]
    inputs = make_inputs(shape, dtype=torch.float64, device=device, seed=SEED, outside=0.25)
    inputs = off_pixel_centres([t.to(dtype) if t.is_floating_point() else t for t in inputs], fused=False)
    _check_against_float64(K.ms_deform_attn, K.ms_deform_attn_reference, inputs, dtype,
                           ["value", "sampling_locations", "attention_weights"])


@pytest.mark.parametrize("case,dtype", CASE_DTYPES)
def test_fused_forward_and_grads_match_float64(case, dtype, device):
    shape = CASES[case]
    inputs = make_inputs(shape, dtype=torch.float64, device=device, seed=SEED + 1, fused=True)
    inputs = [t.to(dtype) if t.is_floating_point() else t for t in inputs]
    if case == "odd-1x1-d24":  # one reference point shared by all levels
        inputs[3] = inputs[3][:, :, 0].contiguous()
    inputs = off_pixel_centres(inputs, fused=True)
    _check_against_float64(K.ms_deform_attn_fused, K.ms_deform_attn_fused_reference, inputs, dtype,
                           ["value", "reference_points", "sampling_offsets", "attention_logits"])


def test_fp32_coordinates_with_half_values(device):
    """Mixed precision: bf16 values and logits with fp32 reference points and offsets."""
    shape = CASES["odd-1x1-d24"]
    inputs = list(make_inputs(shape, dtype=torch.float32, device=device, seed=SEED + 2, fused=True))
    inputs[0] = inputs[0].bfloat16()
    inputs[5] = inputs[5].bfloat16()
    inputs = off_pixel_centres(inputs, fused=True)
    _check_against_float64(K.ms_deform_attn_fused, K.ms_deform_attn_fused_reference, inputs, torch.bfloat16,
                           ["value", "reference_points", "sampling_offsets", "attention_logits"])


@pytest.mark.parametrize("shared_ref", [False, True])
def test_fused_equals_canonical_on_locations_computed_the_slow_way(shared_ref, device):
    shape = CASES["four-levels-d32"]
    value, ss, lsi, ref, offsets, logits = make_inputs(shape, device=device, seed=SEED + 3, fused=True)
    if shared_ref:
        ref = ref[:, :, 0].contiguous()
    fused = K.ms_deform_attn_fused(value, ss, lsi, ref, offsets, logits, backend="triton")
    locations, weights = K.fused_locations_and_weights(ss, ref, offsets, logits)
    canonical = K.ms_deform_attn(value, ss, lsi, locations, weights, backend="triton")
    assert rel_err(fused, canonical) <= 1e-5, f"seed {SEED}"


def _edge_case_inputs(device, where: str):
    shape = ProblemShape(N=2, levels=((5, 7), (1, 1), (4, 3)), M=2, D=24, P=4, Q=6)
    value, ss, lsi, loc, w = make_inputs(shape, dtype=torch.float64, device=device, seed=SEED + 4)
    sizes = ss.flip(-1).double().view(1, 1, 1, -1, 1, 2).to(device)  # (W_l, H_l)
    g = torch.Generator().manual_seed(SEED + 5)
    if where == "pixel-centres":
        # Centres of the map's pixels and of the pixels just outside it (x_im = -1 and x_im = W).
        idx = torch.randint(0, 1000, loc.shape, generator=g).double().to(device)
        loc = (idx % (sizes + 2) - 1 + 0.5) / sizes
    elif where == "borders":
        # The map's edges: x = 0 or 1 is x_im = -0.5 or W - 0.5, half a pixel past the outer centres.
        edge = torch.randint(0, 2, loc.shape, generator=g).double().to(device)
        loc = torch.where(torch.rand(loc.shape, generator=g).to(device) < 0.6, edge, loc)
    elif where == "far-outside":
        loc[:, :, :, :, :2] = torch.tensor([1e6, -1e6]).double().to(device)
        loc[:, 1::2] = -3.0
    return [value, ss, lsi, loc, w]


@pytest.mark.parametrize("where", ["pixel-centres", "borders", "far-outside"])
def test_edge_locations(where, device):
    inputs = _edge_case_inputs(device, where)
    inputs = [t.float() if t.is_floating_point() else t for t in inputs]
    grad_out = torch.randn(2, 6, 48, generator=torch.Generator().manual_seed(SEED)).to(device)
    out, grads = _outputs_and_grads(K.ms_deform_attn, inputs, grad_out, backend="triton")
    ref, ref_grads = _outputs_and_grads(K.ms_deform_attn_reference, [t.cpu() for t in _float64(inputs)],
                                        grad_out.double().cpu())
    assert rel_err(out, ref) <= 1e-5, f"{where}: output (seed {SEED})"
    assert rel_err(grads[0], ref_grads[0]) <= 1e-5, f"{where}: grad value (seed {SEED})"
    assert rel_err(grads[2], ref_grads[2]) <= 1e-5, f"{where}: grad weights (seed {SEED})"
    if where != "pixel-centres":
        # On a pixel centre the location gradient is one-sided (the bilinear kink), and which side
        # depends on rounding in x * W - 0.5; elsewhere it must match.
        assert rel_err(grads[1], ref_grads[1]) <= 1e-5, f"{where}: grad locations (seed {SEED})"
    if where == "far-outside":
        far = (slice(None), slice(None), slice(None), slice(None), slice(0, 2))
        assert torch.all(grads[1][far] == 0) and torch.all(grads[2][far] == 0)


def test_int64_indexing_path_gives_the_same_result(device, monkeypatch):
    import cssformer_kernels.launch as launch

    inputs = make_inputs(CASES["odd-1x1-d24"], device=device, seed=SEED + 6, fused=True)
    grad_out = torch.randn(2, 13, 72, generator=torch.Generator().manual_seed(SEED)).to(device)
    out32, grads32 = _outputs_and_grads(K.ms_deform_attn_fused, inputs, grad_out, backend="triton")
    monkeypatch.setattr(launch, "needs_int64", lambda *sizes: True)  # kernel_meta decides for both kernels
    out64, grads64 = _outputs_and_grads(K.ms_deform_attn_fused, inputs, grad_out, backend="triton")
    assert torch.allclose(out32, out64, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads32, grads64):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_non_contiguous_inputs_are_accepted(device):
    value, ss, lsi, loc, w = make_inputs(CASES["four-levels-d32"], device=device, seed=SEED + 7)
    expected = K.ms_deform_attn(value, ss, lsi, loc, w, backend="triton")
    value_nc = value.transpose(1, 2).contiguous().transpose(1, 2)
    loc_nc = loc.permute(5, 0, 1, 2, 3, 4).contiguous().permute(1, 2, 3, 4, 5, 0)
    w_nc = w.transpose(0, 1).contiguous().transpose(0, 1)
    assert not (value_nc.is_contiguous() or loc_nc.is_contiguous() or w_nc.is_contiguous())
    value_nc.requires_grad_(True)
    out = K.ms_deform_attn(value_nc, ss, lsi, loc_nc, w_nc, backend="triton")
    assert torch.allclose(out, expected, rtol=1e-6, atol=1e-6)
    out.sum().backward()
    assert value_nc.grad.shape == value.shape


def test_deterministic_backward_is_bit_identical(device):
    inputs = make_inputs(CASES["odd-1x1-d24"], device=device, seed=SEED + 8, fused=True)
    grad_out = torch.randn(2, 13, 72, generator=torch.Generator().manual_seed(SEED)).to(device)
    _, fast = _outputs_and_grads(K.ms_deform_attn_fused, inputs, grad_out, backend="triton")
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [_outputs_and_grads(K.ms_deform_attn_fused, inputs, grad_out, backend="triton")[1] for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b, f in zip(runs[0], runs[1], fast):
        assert torch.equal(a, b)
        assert torch.allclose(a, f, rtol=1e-5, atol=1e-6)


def test_auto_backend_on_cpu_is_the_reference():
    value, ss, lsi, loc, w = make_inputs(CASES["one-level-batch1"], seed=SEED)
    assert torch.equal(K.ms_deform_attn(value, ss, lsi, loc, w),
                       K.ms_deform_attn_reference(value, ss, lsi, loc, w))


@pytest.mark.parametrize("config", [dict(BLOCK_R=16, P_BLOCK=1), dict(BLOCK_R=32, P_BLOCK=2), dict(BLOCK_R=8, P_BLOCK=4)],
                         ids=lambda c: f"R{c['BLOCK_R']}-P{c['P_BLOCK']}")
@pytest.mark.parametrize("deterministic", [False, True])
def test_every_block_config_gives_the_same_result(config, deterministic, device, monkeypatch):
    """Each autotune config (rows per program, points per step; P=3 leaves partial point chunks) computes
    the same function: the kernels are launched with it whatever the device."""
    from cssformer_kernels import autotune

    config = dict(config, num_warps=4, num_stages=1)
    monkeypatch.setattr(autotune, "choose", lambda *args, **kwargs: config)
    shape = ProblemShape(N=2, levels=((5, 6), (3, 3), (1, 2)), M=3, D=24, P=3, Q=7)
    inputs = off_pixel_centres(make_inputs(shape, device=device, seed=SEED + 9, fused=True), fused=True)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        _check_against_float64(K.ms_deform_attn_fused, K.ms_deform_attn_fused_reference, inputs,
                               torch.float32, ["value", "reference_points", "sampling_offsets", "attention_logits"])
    finally:
        torch.use_deterministic_algorithms(previous)


def _with_edge_points(inputs, seed):
    """A third of the points on pixel centres (in and just outside the map), a third on the map's edges
    (normalised 0 or 1), the rest as given (off the centres); returns the inputs and the mask of points
    whose location gradient is two-sided (not on a centre)."""
    inputs = list(inputs)
    loc = inputs[3].detach().double().cpu()
    sizes = inputs[1].cpu().flip(-1).double().view(1, 1, 1, -1, 1, 2)
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(0, 3, loc.shape[:-1], generator=g)[..., None].expand_as(loc)
    centres = (torch.randint(0, 1000, loc.shape, generator=g).double() % (sizes + 2) - 1 + 0.5) / sizes
    edges = torch.randint(0, 2, loc.shape, generator=g).double()
    loc = torch.where(which == 0, centres, torch.where(which == 1, edges, loc))
    inputs[3] = loc.to(device=inputs[3].device, dtype=inputs[3].dtype)
    return inputs, (which[..., 0] != 0)


LAYOUT_CONFIGS = {
    # P_BLOCK 4 >= P: one step per level (partial point chunks: test_every_block_config_gives_the_same_result).
    "strip": dict(BLOCK_R=16, P_BLOCK=4, LAYOUT="strip", D_SPLIT=2),
    "tile4x4": dict(BLOCK_R=16, P_BLOCK=4, LAYOUT="tile", D_SPLIT=2, TILE_W=4),
    "tile1x8": dict(BLOCK_R=8, P_BLOCK=4, LAYOUT="tile", D_SPLIT=1, TILE_W=8),
    "rows-dsplit2": dict(BLOCK_R=16, P_BLOCK=4, LAYOUT="rows", D_SPLIT=2),
}
# Queries at the pyramid positions (Q == S, as in an encoder): the case the "tile" layout is for.
LAYOUT_SHAPES = {
    "batch2-d24": ProblemShape(N=2, levels=((3, 5), (2, 2), (1, 1)), M=2, D=24, P=3),
    "batch1-d8": ProblemShape(N=1, levels=((4, 3), (1, 2)), M=3, D=8, P=2),
}


# Every layout in the canonical form at batch 2; the tiles also fused and at batch 1 (interpreter time).
LAYOUT_RUNS = [("strip", "batch2-d24", False), ("tile4x4", "batch2-d24", False), ("tile1x8", "batch2-d24", False),
               ("rows-dsplit2", "batch2-d24", False), ("tile4x4", "batch2-d24", True), ("tile1x8", "batch1-d8", True),
               ("strip", "batch1-d8", True)]


@pytest.mark.parametrize("layout,shape_name,fused", LAYOUT_RUNS,
                         ids=[f"{a}-{b}-{'fused' if c else 'canonical'}" for a, b, c in LAYOUT_RUNS])
def test_every_layout_matches_float64(layout, shape_name, fused, device, monkeypatch):
    """Each work layout (autotune candidates: head strips, 2-D query tiles walked by a fixed number of
    programs, rows with 32-byte pieces per thread) computes the same function as the float64 reference:
    odd level sizes, a 1x1 level, head dims 24 and 8, batch 1 and 2, points outside the map, on its
    edges and exactly on pixel centres."""
    from cssformer_kernels import autotune

    config = dict(LAYOUT_CONFIGS[layout], num_warps=4, num_stages=1)
    monkeypatch.setattr(autotune, "choose", lambda *args, **kwargs: config)
    shape = LAYOUT_SHAPES[shape_name]
    seed = SEED + 20
    inputs = off_pixel_centres(make_inputs(shape, dtype=torch.float64, device=device, seed=seed, outside=0.3),
                               fused=False)
    inputs, two_sided = _with_edge_points(inputs, seed)
    if fused:  # the same sampling points through the fused form: reference points and pixel offsets
        value, ss, lsi, loc, w = inputs
        wh = ss.flip(-1).double().view(1, 1, 1, -1, 1, 2).to(device)
        ref = torch.rand(shape.N, shape.num_queries, shape.L, 2, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(seed)).to(device)
        offsets = (loc - ref[:, :, None, :, None, :]) * wh
        inputs = [value, ss, lsi, ref, offsets, torch.log(w)]
    inputs = [t.float() if t.is_floating_point() else t for t in inputs]
    fn = K.ms_deform_attn_fused if fused else K.ms_deform_attn
    ref_fn = K.ms_deform_attn_fused_reference if fused else K.ms_deform_attn_reference
    grad_out = torch.randn(shape.N, shape.num_queries, shape.M * shape.D, generator=torch.Generator().manual_seed(seed))
    out, grads = _outputs_and_grads(fn, inputs, grad_out.to(device), backend="triton")
    ref, ref_grads = _outputs_and_grads(ref_fn, [t.cpu() for t in _float64(inputs)], grad_out.double())
    assert rel_err(out, ref) <= 1e-5, f"{layout}: output (seed {SEED})"
    coords = 2 if fused else 1
    for i, (g, rg) in enumerate(zip(grads, ref_grads)):
        if i == coords:  # one-sided on the pixel centres: compared off them
            g, rg = g[two_sided], rg[two_sided]
        elif fused and i == 1:  # reference points: sums over points, some of them on centres
            continue
        assert rel_err(g, rg) <= 1e-5, f"{layout}: grad {i}: {rel_err(g, rg):.2e} (seed {SEED})"


@pytest.mark.parametrize("fused", [False, True], ids=["canonical", "fused"])
def test_nan_and_inf_locations_propagate_like_the_reference(fused, device):
    """A NaN (or infinite) sampling location or offset gives NaN in that row's output, as grid_sample
    (the reference) does, instead of being dropped as a point outside the map; gradients stay NaN-free
    for value and NaN for the weights of the rows that are NaN."""
    shape = ProblemShape(N=1, levels=((4, 5), (2, 2)), M=2, D=8, P=2, Q=5)
    inputs = list(make_inputs(shape, device=device, seed=SEED + 30, fused=fused))
    coords = inputs[4 if fused else 3].clone()
    coords[0, 1, 0, 0, 1, 0] = float("nan")   # query 1, head 0: x NaN
    coords[0, 3, 1, 1, 0, 1] = float("inf")   # query 3, head 1: y infinite
    coords[0, 4, 1, 0, 0, 0] = -float("inf")  # query 4, head 1
    inputs[4 if fused else 3] = coords
    fn = K.ms_deform_attn_fused if fused else K.ms_deform_attn
    ref_fn = K.ms_deform_attn_fused_reference if fused else K.ms_deform_attn_reference
    grad_out = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(SEED)).to(device)
    out, grads = _outputs_and_grads(fn, inputs, grad_out, backend="triton")
    ref, ref_grads = _outputs_and_grads(ref_fn, [t.cpu() for t in _float64(inputs)], grad_out.double().cpu())
    nan_rows = ref.isnan()
    assert nan_rows.any() and torch.equal(out.isnan().cpu(), nan_rows), f"NaN pattern differs (seed {SEED})"
    assert rel_err(out.cpu()[~nan_rows], ref[~nan_rows]) <= 1e-5
    # value: finite and equal; weights (logits): NaN exactly where the reference's are.
    assert torch.isfinite(grads[0]).all() and rel_err(grads[0], ref_grads[0]) <= 1e-5
    w_grad, ref_w_grad = grads[-1].cpu(), ref_grads[-1]
    assert torch.equal(w_grad.isnan(), ref_w_grad.isnan()) and ref_w_grad.isnan().any()
    assert rel_err(w_grad[~ref_w_grad.isnan()], ref_w_grad[~ref_w_grad.isnan()]) <= 1e-5


def test_half_grad_value_is_opt_in_and_within_fp16_tolerance(device, monkeypatch):
    """CSSFORMER_MSDA_HALF_GRAD_VALUE=1 accumulates grad_value in fp16 atomics (bf16 atomics do not run
    under the interpreter; on a GPU the same path serves bf16): off by default, within fp16's tolerance
    against float64 when on, and a different (16-bit) sum than the default fp32 accumulation."""
    from cssformer_kernels import msda_backward

    shape = ProblemShape(N=1, levels=((6, 6), (3, 3)), M=1, D=32, P=4, Q=20)
    inputs = [t.half() if t.is_floating_point() else t
              for t in make_inputs(shape, dtype=torch.float64, device=device, seed=SEED + 40, fused=True)]
    grad_out = torch.randn(1, 20, 32, generator=torch.Generator().manual_seed(SEED)).half().to(device)
    assert not msda_backward.half_grad_value(torch.float16, False)
    default = msda_backward.msda_fused_backward(grad_out, *inputs)[0]
    monkeypatch.setenv(msda_backward.HALF_GRAD_VALUE_ENV, "1")
    assert msda_backward.half_grad_value(torch.float16, False) and not msda_backward.half_grad_value(torch.float16, True)
    assert not msda_backward.half_grad_value(torch.float32, False)
    half = msda_backward.msda_fused_backward(grad_out, *inputs)[0]
    from cssformer_kernels.reference import ms_deform_attn_fused_reference_backward
    ref = ms_deform_attn_fused_reference_backward(grad_out.double().cpu(), *[t.double().cpu() if t.is_floating_point()
                                                                             else t.cpu() for t in inputs])[0]
    assert half.dtype == torch.float16 and not torch.equal(half, default)
    assert rel_err(half, ref) <= TOLERANCE[torch.float16], f"{rel_err(half, ref):.2e} (seed {SEED})"


def test_int64_indexing_in_the_tile_layout_gives_the_same_result(device, monkeypatch):
    """The tile layout's work loop with 64-bit indexing (its item counter is widened in-kernel)."""
    import cssformer_kernels.launch as launch
    from cssformer_kernels import autotune

    config = dict(LAYOUT_CONFIGS["tile4x4"], num_warps=4, num_stages=1)
    monkeypatch.setattr(autotune, "choose", lambda *args, **kwargs: config)
    inputs = make_inputs(LAYOUT_SHAPES["batch1-d8"], device=device, seed=SEED + 50, fused=True)
    grad_out = torch.randn(1, 14, 24, generator=torch.Generator().manual_seed(SEED)).to(device)
    out32, grads32 = _outputs_and_grads(K.ms_deform_attn_fused, inputs, grad_out, backend="triton")
    monkeypatch.setattr(launch, "needs_int64", lambda *sizes: True)
    out64, grads64 = _outputs_and_grads(K.ms_deform_attn_fused, inputs, grad_out, backend="triton")
    assert torch.allclose(out32, out64, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads32, grads64):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)

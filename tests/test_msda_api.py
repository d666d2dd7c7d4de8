"""The op's contract around the numbers: input checks, the layer, torch.library integration, autotune."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import cssformer_kernels as K
from cssformer_kernels import autotune
from cssformer_kernels.shapes import ProblemShape, make_inputs
from msda_cases import SEED, rel_err

SHAPE = ProblemShape(N=2, levels=((4, 5), (2, 3)), M=2, D=8, P=3, Q=6)


def _canonical():
    return list(make_inputs(SHAPE, seed=SEED))


def _fused():
    return list(make_inputs(SHAPE, seed=SEED, fused=True))


BAD_CANONICAL = {
    "value rank": (lambda a: a.__setitem__(0, a[0][0]), "value: got shape (26, 2, 8), expected 4 dimensions"),
    "value int": (lambda a: a.__setitem__(0, a[0].long()), "value: got dtype torch.int64"),
    "levels do not add up": (lambda a: a.__setitem__(1, torch.tensor([[4, 5], [2, 2]])),
                             "spatial_shapes: got levels [[4, 5], [2, 2]] adding up to 24"),
    "bad start index": (lambda a: a.__setitem__(2, torch.tensor([0, 21])), "level_start_index: got [0, 21]"),
    "float shapes": (lambda a: a.__setitem__(1, a[1].float()), "spatial_shapes: got dtype torch.float32"),
    "shapes rank": (lambda a: a.__setitem__(1, a[1].view(-1)), "spatial_shapes: got shape (4,), expected (L, 2)"),
    "start length": (lambda a: a.__setitem__(2, a[2][:1]), "level_start_index: got shape (1,), expected (2,)"),
    "locations levels": (lambda a: a.__setitem__(3, a[3][:, :, :, :1]), "sampling_locations: got shape (2, 6, 2, 1, 3, 2)"),
    "locations heads": (lambda a: a.__setitem__(3, a[3][:, :, :1]), "expected (2, 6, 2, 2, 3, 2)"),
    "weights points": (lambda a: a.__setitem__(4, a[4][..., :2]), "attention_weights: got shape (2, 6, 2, 2, 2)"),
    "int weights": (lambda a: a.__setitem__(4, a[4].int()), "attention_weights: got dtype torch.int32"),
    # mixed floating dtypes are cast to value's (tests/test_dropin.py)
    "empty batch": (lambda a: (a.__setitem__(0, a[0][:0]), a.__setitem__(3, a[3][:0]), a.__setitem__(4, a[4][:0])),
                    "value: got shape (0, 26, 2, 8), expected a non-empty batch"),
    "zero queries": (lambda a: (a.__setitem__(3, a[3][:, :0]), a.__setitem__(4, a[4][:, :0])),
                     "sampling_locations: got shape (2, 0, 2, 2, 3, 2), expected at least one query"),
    "mixed devices": (lambda a: a.__setitem__(4, a[4].to("meta")), "attention_weights: got device meta"),
    "not a tensor": (lambda a: a.__setitem__(3, a[3].tolist()), "sampling_locations: got list"),
}


@pytest.mark.parametrize("case", list(BAD_CANONICAL))
def test_bad_input_canonical_names_the_argument(case):
    args = _canonical()
    mutate, message = BAD_CANONICAL[case]
    mutate(args)
    with pytest.raises(ValueError) as err:
        K.ms_deform_attn(*args)
    assert message in str(err.value)


LEVEL_CASES = ["levels do not add up", "bad start index"]


@pytest.fixture
def levels_as_on_a_gpu(monkeypatch):
    """CPU level tensors checked the way GPU ones are (read once per distinct tensor); counts host reads."""
    from cssformer_kernels import checks

    reads = []
    host_levels = checks._host_levels

    def counting(spatial_shapes, level_start_index):
        reads.append(1)
        return host_levels(spatial_shapes, level_start_index)

    monkeypatch.setattr(checks, "_reads_levels_for_free", lambda t: False)
    monkeypatch.setattr(checks, "_host_levels", counting)
    monkeypatch.setattr(checks, "_VALIDATED_LEVELS", {})
    return reads


@pytest.mark.parametrize("case", LEVEL_CASES)
def test_bad_levels_off_the_cpu_are_the_same_clear_errors(case, levels_as_on_a_gpu):
    args = _canonical()
    mutate, message = BAD_CANONICAL[case]
    mutate(args)
    for _ in range(2):  # a pair that failed is not remembered: it fails again
        with pytest.raises(ValueError) as err:
            K.ms_deform_attn(*args)
        assert message in str(err.value)
    assert len(levels_as_on_a_gpu) == 2


def test_levels_off_the_cpu_are_read_once_per_distinct_tensor(levels_as_on_a_gpu, monkeypatch):
    args = _canonical()
    K.ms_deform_attn(*args)
    tolist = torch.Tensor.tolist

    def no_host_reads(self):
        raise AssertionError("the level tensors were read again")

    monkeypatch.setattr(torch.Tensor, "tolist", no_host_reads)
    monkeypatch.setattr(torch.Tensor, "item", no_host_reads)
    monkeypatch.setattr(torch.Tensor, "cpu", no_host_reads)
    from cssformer_kernels import checks
    for _ in range(3):
        checks.check_ms_deform_attn(*args)
    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    assert len(levels_as_on_a_gpu) == 1
    K.ms_deform_attn(*args)
    assert len(levels_as_on_a_gpu) == 1
    args[2][1] = 21  # an in-place change bumps the version counter: read and checked again
    with pytest.raises(ValueError, match=r"level_start_index: got \[0, 21\]"):
        K.ms_deform_attn(*args)
    assert len(levels_as_on_a_gpu) == 2


def test_levels_on_the_cpu_are_checked_on_every_call(monkeypatch):
    from cssformer_kernels import checks

    reads = []
    host_levels = checks._host_levels
    monkeypatch.setattr(checks, "_host_levels", lambda *a: reads.append(1) or host_levels(*a))
    args = _canonical()
    K.ms_deform_attn(*args)
    K.ms_deform_attn(*args)
    assert len(reads) == 2


BAD_FUSED = {
    "int logits": (lambda a: a.__setitem__(5, a[5].int()), "attention_logits: got dtype torch.int32"),
    "reference rank": (lambda a: a.__setitem__(3, a[3][0]), "reference_points: got shape (6, 2, 2), expected (2, 6, 2) (N, Q, 2) or (2, 6, 2, 2)"),
    "reference levels": (lambda a: a.__setitem__(3, a[3][:, :, :1]), "reference_points: got shape (2, 6, 1, 2)"),
    "offsets rank": (lambda a: a.__setitem__(4, a[4][..., 0]), "sampling_offsets: got shape (2, 6, 2, 2, 3), expected 6 dimensions"),
    "logits shape": (lambda a: a.__setitem__(5, a[5][:, :3]), "attention_logits: got shape (2, 3, 2, 2, 3)"),
}


@pytest.mark.parametrize("case", list(BAD_FUSED))
def test_bad_input_fused_names_the_argument(case):
    args = _fused()
    mutate, message = BAD_FUSED[case]
    mutate(args)
    with pytest.raises(ValueError) as err:
        K.ms_deform_attn_fused(*args)
    assert message in str(err.value)


def test_bad_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="backend: got 'cuda'"):
        K.ms_deform_attn(*_canonical(), backend="cuda")


def test_triton_backend_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        K.ms_deform_attn(*_canonical(), backend="triton")


def test_reference_gradcheck_in_float64():
    value, ss, lsi, loc, w = make_inputs(ProblemShape(N=1, levels=((3, 4), (1, 2)), M=2, D=3, P=2, Q=3),
                                         dtype=torch.float64, seed=SEED, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, l, a: K.ms_deform_attn(v, ss, lsi, l, a, backend="reference"),
                                    (value, loc, w))


@pytest.mark.parametrize("fused", [False, True])
def test_custom_op_registration_passes_opcheck(fused):
    """Fake (meta) implementation, schema and autograd registration of the torch.library ops."""
    op = torch.ops.cssformer.ms_deform_attn_fused if fused else torch.ops.cssformer.ms_deform_attn
    inputs = make_inputs(SHAPE, seed=SEED, fused=fused, requires_grad=True)
    torch.library.opcheck(op, (*inputs, "reference"))


def test_torch_compile_sees_one_op_and_matches_eager():
    value, ss, lsi, ref, off, logits = make_inputs(SHAPE, seed=SEED, fused=True, requires_grad=True)

    def f(v, r, o, lg):
        return K.ms_deform_attn_fused(v, ss, lsi, r, o, lg).square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    eager_grads = torch.autograd.grad(f(value, ref, off, logits), (value, ref, off, logits))
    compiled_grads = torch.autograd.grad(compiled(value, ref, off, logits), (value, ref, off, logits))
    for a, b in zip(eager_grads, compiled_grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_jit_trace_records_the_custom_op():
    """fvcore traces with torch.jit: our op must show up as one node it can count."""
    value, ss, lsi, loc, w = _canonical()
    graph = torch.jit.trace(lambda v, l, a: K.ms_deform_attn(v, ss, lsi, l, a), (value, loc, w)).graph
    kinds = [node.kind() for node in graph.nodes()]
    assert "cssformer::ms_deform_attn" in kinds
    assert not any(k.startswith("aten::grid_sampler") for k in kinds)


def test_module_triton_and_reference_agree(device):
    torch.manual_seed(SEED)
    layer = K.MSDeformAttn(d_model=48, n_levels=3, n_heads=2, n_points=2).to(device)
    with torch.no_grad():  # move off the zero-weight init so that offsets and logits depend on the query
        layer.sampling_offsets.weight.normal_(0, 0.05)
        layer.attention_weights.weight.normal_(0, 0.05)
    levels = [(5, 4), (3, 2), (1, 1)]
    query = torch.randn(2, 7, 48, device=device)
    flat = torch.randn(2, 27, 48, device=device)
    ref = torch.rand(2, 7, 3, 2, device=device)
    outs = {}
    for backend in ("triton", "reference"):
        layer.backend = backend
        layer.zero_grad()
        out = layer(query, ref, flat, levels)
        out.square().sum().backward()
        outs[backend] = (out.detach(), [p.grad.clone() for p in layer.parameters()])
    assert outs["triton"][0].shape == (2, 7, 48)
    assert rel_err(outs["triton"][0], outs["reference"][0]) < 1e-5
    for a, b in zip(outs["triton"][1], outs["reference"][1]):
        assert rel_err(a, b) < 1e-4


def test_module_initialisation_follows_deformable_detr():
    layer = K.MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=3)
    assert torch.all(layer.sampling_offsets.weight == 0)
    assert torch.all(layer.attention_weights.weight == 0) and torch.all(layer.attention_weights.bias == 0)
    bias = layer.sampling_offsets.bias.view(4, 2, 3, 2)
    # Head 0 looks along +x, head 1 along +y (angles 0 and pi/2), point p at distance p + 1.
    assert torch.allclose(bias[0, :, :, 0], torch.tensor([1.0, 2.0, 3.0]).expand(2, 3))
    assert torch.allclose(bias[1, :, :, 1], torch.tensor([1.0, 2.0, 3.0]).expand(2, 3))
    assert torch.allclose(bias[0, :, :, 1], torch.zeros(2, 3), atol=1e-6)


def test_module_rejects_bad_config_and_input():
    with pytest.raises(ValueError, match="d_model: got 30, expected a multiple of n_heads"):
        K.MSDeformAttn(d_model=30, n_heads=8)
    layer = K.MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=1)
    with pytest.raises(ValueError, match=r"query: got shape \(2, 3, 8\), expected \(N, Q, 16\)"):
        layer(torch.randn(2, 3, 8), torch.rand(2, 3, 2), torch.randn(2, 5, 16), [(2, 2), (1, 1)])
    with pytest.raises(ValueError, match="input_spatial_shapes: got 1 levels, expected n_levels = 2"):
        layer(torch.randn(2, 3, 16), torch.rand(2, 3, 2), torch.randn(2, 4, 16), [(2, 2)])


def test_autotune_key_and_config_space():
    key_small = autotune.problem_key(rows=1000, M=8, D=32, value=torch.bfloat16)
    key_large = autotune.problem_key(rows=300000, M=8, D=32, value=torch.bfloat16)
    assert key_small != key_large and "value=bfloat16" in key_small
    assert autotune.problem_key(rows=1000, M=8) == autotune.problem_key(rows=1020, M=8)
    assert autotune.problem_key(rows=1000, positions=True) != autotune.problem_key(rows=1000, positions=False)
    assert len(autotune.CONFIG_SPACE) >= 4
    assert all(c["BLOCK_R"] & (c["BLOCK_R"] - 1) == 0 and c["P_BLOCK"] & (c["P_BLOCK"] - 1) == 0
               for c in autotune.CONFIG_SPACE)
    # Every layout is a candidate; the untuned default stays the layout of kernel v3.
    assert {c.get("LAYOUT", "rows") for c in autotune.CONFIG_SPACE} == {"rows", "strip", "tile"}
    assert autotune.DEFAULT_CONFIG["LAYOUT"] == "rows" and autotune.INTERPRETER_CONFIG["LAYOUT"] == "rows"
    # v3's configs keep their four keys (and names); missing keys mean rows, D_SPLIT=1.
    assert {"BLOCK_R": 32, "P_BLOCK": 1, "num_warps": 4, "num_stages": 1} in autotune.CONFIG_SPACE
    assert all(c["BLOCK_R"] % c["TILE_W"] == 0 for c in autotune.CONFIG_SPACE if c.get("LAYOUT") == "tile")


def test_autotune_config_space_from_environment(monkeypatch):
    monkeypatch.setenv("CSSFORMER_AUTOTUNE_CONFIGS", "32x1x4x1,128x4x8x2,64x2x4x1xtilex2x8")
    assert autotune.config_space() == [
        {"BLOCK_R": 32, "P_BLOCK": 1, "num_warps": 4, "num_stages": 1},
        {"BLOCK_R": 128, "P_BLOCK": 4, "num_warps": 8, "num_stages": 2},
        {"BLOCK_R": 64, "P_BLOCK": 2, "num_warps": 4, "num_stages": 1, "LAYOUT": "tile", "D_SPLIT": 2, "TILE_W": 8}]
    for bad in ("32x4x1", "32x4x4x1xdiagonal"):
        monkeypatch.setenv("CSSFORMER_AUTOTUNE_CONFIGS", bad)
        with pytest.raises(ValueError, match=f"CSSFORMER_AUTOTUNE_CONFIGS: got item '{bad}'"):
            autotune.config_space()


def test_autotune_cache_round_trip_across_processes(tmp_path):
    """A tuned choice is saved under the cache folder and a new process reuses it without tuning."""
    script = textwrap.dedent("""
        import json, sys, torch
        def fake_ms(c):
            return 1.0 + abs(c["BLOCK_R"] - 64) + c["num_warps"] + 1 / c["P_BLOCK"]
        from cssformer_kernels import autotune
        autotune.gpu_key = lambda device: "Fake GPU | triton test"
        autotune.tuning_enabled = lambda device: True
        calls = []
        def fake_benchmark(launch, reset=None, configs=None):
            calls.append(1)
            return [(c, fake_ms(c)) for c in autotune.CONFIG_SPACE]
        autotune.benchmark = fake_benchmark
        cfg = autotune.choose("msda_forward", 1, "M=8,rows<=1024", None, torch.device("cuda"))
        print(json.dumps({"config": cfg, "benchmarked": len(calls)}))
    """)
    env = dict(os.environ, CSSFORMER_CACHE_DIR=str(tmp_path))
    runs = [json.loads(subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True,
                                      text=True).stdout) for _ in range(2)]
    fastest = min(autotune.CONFIG_SPACE, key=lambda c: 1.0 + abs(c["BLOCK_R"] - 64) + c["num_warps"] + 1 / c["P_BLOCK"])
    assert runs[0] == {"config": fastest, "benchmarked": 1}
    assert runs[1] == {"config": runs[0]["config"], "benchmarked": 0}
    saved = json.loads((tmp_path / "autotune.json").read_text())
    assert saved["Fake GPU | triton test"]["msda_forward@v1"]["M=8,rows<=1024"] == runs[0]["config"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: host synchronisation")
def test_levels_on_the_gpu_sync_only_on_the_first_call():
    """Drop-in callers pass the level tensors on the GPU: checked once, then no host round trip."""
    inputs = [t.cuda() for t in make_inputs(SHAPE, seed=SEED, fused=True)]
    K.ms_deform_attn_fused(*inputs)  # first call: compiles, reads the levels once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = K.ms_deform_attn_fused(*inputs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.shape == (2, 6, 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: CUDA-graph capture")
def test_cuda_graph_capture_and_replay():
    """No host synchronisation inside the op: it can be captured in a CUDA graph and replayed on new data."""
    static = [t.cuda() for t in make_inputs(SHAPE, seed=SEED, fused=True)]
    static[1], static[2] = static[1].cpu(), static[2].cpu()  # level tensors on the CPU: no copies to sync on
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        K.ms_deform_attn_fused(*static)  # warm-up: compiles, fills the level cache
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = K.ms_deform_attn_fused(*static)
    fresh = make_inputs(SHAPE, seed=SEED + 1, fused=True)
    for i in (0, 3, 4, 5):
        static[i].copy_(fresh[i])
    graph.replay()
    expected = K.ms_deform_attn_fused(*static)
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-6)

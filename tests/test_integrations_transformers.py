"""``cssformer_kernels.integrations.transformers``: stock Hugging Face models on our op.

Tiny models built from config objects (no downloads) of four families: Deformable DETR (two-stage with
box refinement: module class, 2- and 4-coordinate references), Mask2Former (the function), RT-DETR
(module class) and D-FINE (the per-level-points function, stored on its instances, with 3/1/2 points
per level). Their sampling layers are moved off their special initialisation so that points leave the
maps; outputs and every parameter gradient of the patched model are compared with transformers' own
path on the same weights and inputs.

The seed is fixed: two-stage Deformable DETR picks its proposals by top-k, and an fp32 rounding
difference may flip a near tie (then the outputs differ for a reason that is not a wrong result).
"""
import importlib
import sys

import pytest
import torch
from torch import nn
from transformers import (
    DeformableDetrConfig,
    DeformableDetrForObjectDetection,
    DFineConfig,
    DFineForObjectDetection,
    Mask2FormerConfig,
    Mask2FormerModel,
    ResNetConfig,
    RTDetrConfig,
    RTDetrForObjectDetection,
    RTDetrResNetConfig,
    SwinConfig,
)

import cssformer_kernels as K
import cssformer_kernels.integrations.transformers as hf

SEED = 20261201
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: a second intra-op thread only adds barrier waits (30x slower on a busy 2-core CI)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def never_left_patched():
    yield
    hf.unpatch()


def _resnet(cls=ResNetConfig):
    return cls(num_channels=3, embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1], layer_type="basic",
               out_features=["stage2", "stage3", "stage4"])


def deformable_detr():
    return DeformableDetrForObjectDetection(DeformableDetrConfig(
        backbone_config=_resnet(), d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=5, two_stage_num_proposals=5,
        two_stage=True, with_box_refine=True, num_feature_levels=3, encoder_n_points=2, decoder_n_points=3,
        num_labels=3))


def mask2former():
    swin = SwinConfig(image_size=32, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=2,
                      out_features=["stage1", "stage2", "stage3", "stage4"])
    return Mask2FormerModel(Mask2FormerConfig(
        backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=16,
        encoder_layers=1, decoder_layers=2, num_attention_heads=2, dim_feedforward=16, num_queries=4, num_labels=3))


def _rt_detr_family(config_cls, **extra):
    return config_cls(
        backbone_config=_resnet(RTDetrResNetConfig), encoder_in_channels=[8, 8, 8], encoder_hidden_dim=16,
        encoder_ffn_dim=16, encoder_attention_heads=2, d_model=16, decoder_in_channels=[16, 16, 16],
        decoder_ffn_dim=16, decoder_layers=2, decoder_attention_heads=2, num_queries=5, num_denoising=0,
        num_labels=3, **extra)


def rt_detr():
    return RTDetrForObjectDetection(_rt_detr_family(RTDetrConfig, decoder_n_points=2))


def d_fine():
    return DFineForObjectDetection(_rt_detr_family(DFineConfig, decoder_n_points=[3, 1, 2], lqe_hidden_dim=8,
                                                   max_num_bins=4, hidden_expansion=0.5))


MODELS = {"deformable-detr": deformable_detr, "mask2former": mask2former, "rt-detr": rt_detr, "d-fine": d_fine}
# What each family must have routed (module, attribute), besides whatever else the installed version has.
EXPECTED = {
    "deformable-detr": "deformable_detr.modeling_deformable_detr.MultiScaleDeformableAttention.forward",
    "mask2former": "mask2former.modeling_mask2former.multi_scale_deformable_attention",
    "rt-detr": "rt_detr.modeling_rt_detr.MultiScaleDeformableAttention.forward",
    "d-fine": "d_fine.modeling_d_fine.DFineMultiscaleDeformableAttention.ms_deformable_attn_core",
}


def _build(family: str, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(SEED)
    model = MODELS[family]().to(dtype).eval()  # eval: no dropout; gradients flow all the same
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():  # off the zero-weight / ring initialisation: offsets depend on the query, points leave the maps
        for module in model.modules():
            for name, std, bias_std in (("sampling_offsets", 0.3, 6.0), ("attention_weights", 0.3, 1.0)):
                layer = getattr(module, name, None)
                if isinstance(layer, nn.Linear):
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * std)
                    layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * bias_std)
    return model


def _tensors(out) -> list:
    if torch.is_tensor(out):
        return [out] if out.is_floating_point() else []
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _tensors(item)]
    if hasattr(out, "to_tuple"):
        return _tensors(out.to_tuple())
    return []


def _run(model: nn.Module, pixel_values: torch.Tensor):
    model.zero_grad(set_to_none=True)
    outputs = _tensors(model(pixel_values=pixel_values))
    gen = torch.Generator().manual_seed(SEED + 1)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)).sum() for t in outputs)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return [t.detach().clone() for t in outputs], grads


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    err = (a.double() - b.double()).norm().item()
    return 0.0 if err == 0 else err / max(b.double().norm().item(), 1e-300)


@pytest.fixture
def op_calls(monkeypatch):
    """The sampling locations of every call the patched entry points make to our op."""
    seen = []
    for name in ("ms_deform_attn", "ms_deform_attn_per_level"):
        original = getattr(hf, name)

        def recording(value, spatial_shapes, level_start_index, locations, *args, _original=original, **kwargs):
            seen.append(locations.detach())
            return _original(value, spatial_shapes, level_start_index, locations, *args, **kwargs)

        monkeypatch.setattr(hf, name, recording)
    return seen


# Every family on the reference backend in both dtypes and on the Triton kernels (the interpreter on a
# CPU) in float64, the strict check; float32 Triton on one family (the kernel tests cover it widely).
CASES = [(family, backend, dtype) for family in MODELS for backend, dtype in
         (("reference", torch.float64), ("reference", torch.float32), ("triton", torch.float64))]
CASES.append(("deformable-detr", "triton", torch.float32))


@pytest.mark.parametrize("family,backend,dtype", CASES, ids=[f"{f}-{b}-{str(d)[6:]}" for f, b, d in CASES])
def test_patched_model_matches_transformers(family, backend, dtype, op_calls, device):
    model = _build(family, dtype).to(device)  # CPU: Triton through the interpreter
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(SEED + 2), dtype=dtype).to(device)
    expected_out, expected_grads = _run(model, pixel_values)
    assert not op_calls
    with K.use_backend(backend), hf.patched() as names:
        assert any(n.endswith(EXPECTED[family]) for n in names), names
        out, grads = _run(model, pixel_values)
    assert op_calls, "the patched model did not call our op"
    outside = sum(int(((loc < 0) | (loc > 1)).sum()) for loc in op_calls)
    assert outside > 0, "no sampling point left the maps: the test would not see the border handling"
    tol = TOLERANCE[dtype]
    assert len(out) == len(expected_out)
    for i, (a, b) in enumerate(zip(out, expected_out)):
        assert a.shape == b.shape and _rel(a, b) <= tol, f"output {i}: rel err {_rel(a, b):.2e}"
    assert grads.keys() == expected_grads.keys()
    # Some gradients are zero in exact arithmetic (a conv bias right before a GroupNorm): both paths give
    # rounding noise there, so those are held to the noise level of the whole gradient instead.
    noise = 1e3 * torch.finfo(dtype).eps * torch.cat([g.flatten() for g in expected_grads.values()]).norm().item()
    for name, expected in expected_grads.items():
        if expected.norm().item() <= noise:
            assert grads[name].norm().item() <= noise, f"grad {name}: {grads[name].norm():.2e}, zero expected"
        else:
            assert _rel(grads[name], expected) <= tol, f"grad {name}: rel err {_rel(grads[name], expected):.2e}"


def _resolve(qualified: str):
    """(owner, attribute) of a name patch() returned."""
    parts = qualified.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:-1]:
            owner = getattr(owner, attr)
        return owner, parts[-1]
    raise AssertionError(qualified)


def test_patch_finds_every_form_and_unpatch_restores_the_originals_exactly():
    names = hf.patch()
    owners = [_resolve(n) for n in names]
    hf.unpatch()
    before = [(owner, attr, attr in vars(owner), vars(owner).get(attr)) for owner, attr in owners]
    assert hf.patch() == names and hf.patch() == names  # idempotent
    assert hf.is_patched()
    kinds = {"module class": 0, "function": 0, "per-level function": 0, "instance attribute": 0}
    for owner, attr, had, old in before:
        new = vars(owner)[attr]
        assert new is not old
        if isinstance(new, hf._Routed):
            kinds["instance attribute"] += 1
            assert not had
        elif attr == "forward":
            kinds["module class"] += 1
        else:
            kinds["per-level function" if "num_points_list" in new.__wrapped__.__code__.co_varnames else "function"] += 1
    assert all(kinds.values()), kinds  # all four ways of reaching the op exist in the installed version
    assert hf.unpatch() == names and not hf.is_patched()
    for owner, attr, had, old in before:
        assert (attr in vars(owner)) == had and vars(owner).get(attr) is old


def test_instances_built_before_during_and_after_patching(op_calls):
    """D-FINE keeps the function on its instances: all of them run our op while patched, transformers'
    function after unpatch(), and their __dict__ never holds ours."""
    from transformers.models.d_fine import modeling_d_fine as dfine_module

    before = _build("d-fine", torch.float64)
    with hf.patched():
        during = _build("d-fine", torch.float64)
        x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
        for model in (before, during):
            n = len(op_calls)
            model(pixel_values=x)
            assert len(op_calls) > n
    after = _build("d-fine", torch.float64)
    for model in (before, during, after):
        layers = [m for m in model.modules() if isinstance(m, dfine_module.DFineMultiscaleDeformableAttention)]
        assert layers and all(m.ms_deformable_attn_core is dfine_module.multi_scale_deformable_attention_v2
                              for m in layers)
    n = len(op_calls)
    during(pixel_values=x)
    assert len(op_calls) == n


def test_state_dict_and_from_pretrained_are_unchanged(tmp_path):
    model = _build("deformable-detr", torch.float32)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(SEED))  # batch 1: GroupNorm of a 1x1 level fails
    with torch.no_grad():
        expected = model(pixel_values=x).pred_boxes
    state = model.state_dict()
    model.save_pretrained(tmp_path)
    with hf.patched():
        assert model.state_dict().keys() == state.keys()
        loaded = DeformableDetrForObjectDetection.from_pretrained(tmp_path).eval()
        assert loaded.state_dict().keys() == state.keys()
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
        with torch.no_grad():
            got = loaded(pixel_values=x).pred_boxes
    assert _rel(got, expected) <= 1e-5


def test_discrete_method_keeps_transformers_path(op_calls):
    from transformers.models.rt_detr_v2 import modeling_rt_detr_v2 as v2

    value = torch.randn(1, 20 + 5, 2, 4, dtype=torch.float64)
    locations = torch.rand(1, 3, 2, 5, 2, dtype=torch.float64)
    weights = torch.rand(1, 3, 2, 5, dtype=torch.float64).softmax(-1)
    args = (value, [(4, 5), (1, 5)], locations, weights, [3, 2])
    expected = v2.multi_scale_deformable_attention_v2(*args, "discrete")
    with hf.patched():
        got = v2.multi_scale_deformable_attention_v2(*args, "discrete")
        assert not op_calls
        bilinear = v2.multi_scale_deformable_attention_v2(*args)
        assert len(op_calls) == 1
    assert torch.equal(got, expected)
    assert _rel(bilinear, v2.multi_scale_deformable_attention_v2(*args)) <= 1e-12


def test_unknown_version_is_one_clear_line(monkeypatch):
    # sys.modules' entry: transformers' lazy loading may have replaced the module this file imported
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "6.0.0")
    with pytest.raises(RuntimeError) as err:
        hf.patch()
    message = str(err.value)
    assert "\n" not in message and message.startswith("transformers 6.0.0: ") and "5.x" in message
    assert "check_version=False" in message and not hf.is_patched()
    assert hf.patch(check_version=False)  # the signatures still find the entry points


def test_torch_compile_has_no_graph_break_from_the_op():
    """Mask2Former's pixel decoder (all its deformable attention) compiled in one graph (``fullgraph``)
    with a tracing backend (nothing is compiled to code): our op is a node of that graph, and the
    compiled decoder gives what the eager patched one gives."""
    model = _build("mask2former", torch.float32)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        features = model.pixel_level_module.encoder(x).feature_maps
    graphs = []

    def tracing_backend(gm, example_inputs):
        graphs.append(gm.code)
        return gm.forward

    decoder = model.pixel_level_module.decoder
    torch._dynamo.reset()
    with hf.patched():
        compiled = torch.compile(decoder, backend=tracing_backend, fullgraph=True)(features)
        eager = decoder(features)
    torch._dynamo.reset()
    assert len(graphs) == 1 and "cssformer.ms_deform_attn" in graphs[0] and "grid_sampler" not in graphs[0]
    assert _rel(compiled.mask_features, eager.mask_features) <= 1e-6


def test_bench_hf_smoke_writes_both_paths(tmp_path):
    """bench/bench_hf.py on a tiny config: a row per path, outputs of the two paths agree."""
    import json

    from bench_scripts import load

    out = tmp_path / "hf.json"
    assert load("bench_hf").main(["--smoke", "--device", "cpu", "--model", "rt-detr", "--dtype", "fp32",
                                  "--warmup", "0", "--reps", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["impl"] for r in rows] == ["default", "cssformer"]
    assert all(r["forward_ms"] > 0 and r["forward_backward_ms"] > 0 for r in rows)
    assert rows[1]["max_rel_diff_vs_default"] <= 1e-5 and not hf.is_patched()

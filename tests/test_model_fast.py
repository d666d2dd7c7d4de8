"""The model's fast paths (fused attention, CIA in a few products, caches per input size, a loss without
host syncs) against the former forms, the FLOPs report they must not change, and torch.compile graphs."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from cssformer.models import SegmentationLoss, build_model, set_fast_paths
from cssformer.models.cia import CIA
from cssformer.models.csf import SpatialReductionAttention
from cssformer.models.layers import pyramid_positions


def _nano(**kw):
    torch.manual_seed(0)
    return build_model("cssformer-nano", 5, img_size=64, **kw)


def _step(model, loss_fn, images, masks):
    torch.manual_seed(1)  # the classifier's dropout draws the same mask in both runs
    loss, _ = loss_fn(model(images), masks)
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    return loss, grads


def test_fast_paths_give_the_former_outputs_and_gradients(size=(64, 96)):
    model = _nano().double()
    loss_fn = SegmentationLoss()
    images = torch.randn(2, 3, *size, dtype=torch.float64)
    masks = torch.randint(0, 5, (2, *size))
    masks[0, :5] = 255
    model.eval()
    fast_eval = model(images)
    fast_eval_again = model(images)  # from the caches
    model.train()
    fast_loss, fast_grads = _step(model, loss_fn, images, masks)
    assert set_fast_paths(model, False) > 0 and set_fast_paths(loss_fn, False) == 1
    model.eval()
    old_eval = model(images)
    model.train()
    old_loss, old_grads = _step(model, loss_fn, images, masks)
    torch.testing.assert_close(fast_eval, old_eval, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast_eval_again, old_eval, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast_loss, old_loss, rtol=1e-10, atol=1e-10)
    for fast, old in zip(fast_grads, old_grads):
        assert (fast is None) == (old is None)
        if fast is not None:
            torch.testing.assert_close(fast, old, rtol=1e-8, atol=1e-10)


def test_fast_paths_agree_in_fp32_and_bf16_autocast():
    model = _nano().eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        fast = model(images)
        with torch.autocast("cpu", torch.bfloat16):
            fast_bf16 = model(images)
        set_fast_paths(model, False)
        old = model(images)
        with torch.autocast("cpu", torch.bfloat16):
            old_bf16 = model(images)
    torch.testing.assert_close(fast, old, rtol=1e-4, atol=1e-4)
    scale = old_bf16.float().abs().max()
    assert (fast_bf16.float() - old_bf16.float()).abs().max() <= 0.05 * scale


@pytest.mark.parametrize("size", [(1, 1), (5, 9), (6, 6), (13, 7)])
def test_cia_branches_in_products_equal_pools_and_interpolation(size):
    torch.manual_seed(0)
    cia = CIA(24, (1, 2, 3, 6), reweight="significance").double()
    x = torch.randn(2, 24, *size, dtype=torch.float64, requires_grad=True)
    fast = cia(x)
    (g_fast,) = torch.autograd.grad(fast.square().sum(), x)
    cia.fast = False
    old = cia(x)
    (g_old,) = torch.autograd.grad(old.square().sum(), x)
    torch.testing.assert_close(fast, old, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_fast, g_old, rtol=1e-12, atol=1e-12)


def test_sdpa_self_attention_keeps_the_reduced_keys_values():
    torch.manual_seed(0)
    sa = SpatialReductionAttention(24, 3, sr=2).double().eval()   # head dim 8, keys from a 2x2-strided conv
    x = torch.randn(2, 24, 6, 10, dtype=torch.float64)
    pos = torch.randn(60, 24, dtype=torch.float64)
    fast = sa(x, pos)
    sa.fused_attn = False
    torch.testing.assert_close(fast, sa(x, pos), rtol=1e-12, atol=1e-12)


def test_cached_positions_equal_computed_ones_and_follow_the_size():
    embed = torch.randn(3, 16, requires_grad=True)
    cache = {}
    for size in ((8, 8), (8, 12), (8, 8)):
        feats = [torch.zeros(2, 16, size[0] // 2 ** i, size[1] // 2 ** i) for i in range(3)]
        shapes, pos, ref = pyramid_positions(feats, embed, cache)
        shapes0, pos0, ref0 = pyramid_positions(feats, embed)
        assert shapes == shapes0
        torch.testing.assert_close(pos, pos0, rtol=0, atol=0)
        torch.testing.assert_close(ref, ref0, rtol=0, atol=0)
        assert pos.requires_grad
    assert len(cache) == 2


class _Syncs(TorchDispatchMode):
    """Counts the ops that read a tensor's value on the host."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default,
                    torch.ops.aten.nonzero.default):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("weighted", [False, True])
def test_loss_without_host_sync_has_the_former_values(weighted):
    torch.manual_seed(0)
    weight = torch.rand(4) + 0.05 if weighted else None
    fast, old = SegmentationLoss(class_weight=weight), SegmentationLoss(class_weight=weight)
    old.fast = False
    target = torch.randint(0, 4, (2, 7, 9))
    target[:, :3] = 255
    for t in (target, torch.full_like(target, 255)):  # the second: every pixel ignored
        logits = torch.randn(2, 4, 7, 9, requires_grad=True)
        aux = torch.randn(2, 4, 7, 9, requires_grad=True)
        with _Syncs() as syncs:
            total, parts = fast({"logits": logits, "aux_logits": aux}, t)
        assert syncs.count == 0
        grads = torch.autograd.grad(total, (logits, aux))
        total0, parts0 = old({"logits": logits, "aux_logits": aux}, t)
        grads0 = torch.autograd.grad(total0, (logits, aux))
        torch.testing.assert_close(total, total0)
        torch.testing.assert_close(parts["loss_aux"], parts0["loss_aux"])
        for g, g0 in zip(grads, grads0):
            torch.testing.assert_close(g, g0)
        assert torch.isfinite(total)
    assert total.item() == 0.0


def test_flops_report_is_the_same_with_fused_attention():
    from cssformer.analysis.flops import _build, flop_analysis

    model = _build("cssformer-nano", 5, img_size=(64, 64))
    x = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        fast = flop_analysis(model, (x,))
        fast_modules, fast_ops = dict(fast.by_module()), dict(fast.by_operator())
        set_fast_paths(model, False)
        old = flop_analysis(model, (x,))
        old_modules = dict(old.by_module())
    assert "scaled_dot_product_attention" in fast_ops and "scaled_dot_product_attention" not in old.by_operator()
    for name in ("", "backbone", "decoder", "decoder.csf", "decoder.cia"):
        assert fast_modules[name] == pytest.approx(old_modules[name], rel=1e-9), name


def _compiled_train_step(backend: str):
    """A cssformer-nano forward + loss compiled with ``fullgraph=True`` (an error on any graph break),
    then its backward (AOTAutograd's second graph under ``aot_eager``); returns the model."""
    import torch._dynamo as dynamo

    model = build_model("cssformer-nano", 3, img_size=64).train()
    loss_fn = SegmentationLoss()
    images, masks = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))

    def forward_loss(images, masks):
        return loss_fn(model(images), masks)[0]

    dynamo.reset()
    loss = torch.compile(forward_loss, backend=backend, fullgraph=True, dynamic=False)(images, masks)
    loss.backward()
    assert torch.isfinite(loss) and model.decoder.msfe.layers[0].attn.sampling_offsets.weight.grad is not None
    return model


def test_train_forward_and_loss_trace_as_one_graph():
    # CUDA graphs (mode="reduce-overhead") need one graph without breaks (the sampling op is one custom
    # op; the caches step aside while dynamo traces).
    _compiled_train_step("eager")
    torch._dynamo.reset()


@pytest.mark.slow
def test_train_step_and_inference_compile_with_aot_autograd():
    # python -m pytest -m slow tests/test_model_fast.py  (about 1.5 min of CPU)
    model = _compiled_train_step("aot_eager").eval()
    with torch.no_grad():
        out = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)(torch.randn(1, 3, 64, 64))
    torch._dynamo.reset()
    assert out.shape == (1, 3, 64, 64)

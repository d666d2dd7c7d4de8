"""Acceptance checks of issue 3 on the CPU: Swin-T forward/backward with gradients everywhere, and the
Triton (interpreter) and reference backends giving the same logits."""
import pytest
import torch

import cssformer_kernels.module as msda_module
from cssformer.models import SegmentationLoss, build_model
from cssformer_kernels import use_backend


def _run_and_check_gradients(model, size, monkeypatch):
    op_inputs = []
    original = msda_module.ms_deform_attn_fused

    def recording_op(value, shapes, start, reference_points, offsets, logits, **kw):
        for t in (value, offsets, logits):
            t.retain_grad()
        op_inputs.append((value, offsets, logits))
        return original(value, shapes, start, reference_points, offsets, logits, **kw)

    monkeypatch.setattr(msda_module, "ms_deform_attn_fused", recording_op)
    model.train()
    images = torch.randn(1, 3, *size)
    target = torch.randint(0, model.num_classes, (1, *size))
    out = model(images)
    assert out["logits"].shape == out["aux_logits"].shape == (1, model.num_classes, *size)
    loss, _ = SegmentationLoss()(out, target)
    loss.backward()

    assert len(op_inputs) == 2  # MSFE and CSF
    for value, offsets, logits in op_inputs:
        for name, t in (("value", value), ("sampling_offsets", offsets), ("attention_logits", logits)):
            assert t.grad is not None and t.grad.abs().sum() > 0, f"no gradient reaches the op's {name}"

    def has_grad(module):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    parts = {"backbone.patch_embed": model.backbone.body.patch_embed,
             "backbone.last_stage": model.backbone.body.layers_3, "aux_head": model.aux_head}
    for name in ("input_proj", "cia", "msfe", "csf", "head"):
        parts[f"decoder.{name}"] = getattr(model.decoder, name)
    parts.update({f"decoder.cia.{i}": m for i, m in enumerate(model.decoder.cia)})
    parts.update({f"decoder.csf.self_attn.{i}": m for i, m in enumerate(model.decoder.csf.self_attn)})
    missing = [name for name, module in parts.items() if not has_grad(module)]
    assert not missing, f"no gradient in {missing}"


def test_swin_t_forward_backward_small_input(monkeypatch):
    torch.manual_seed(0)
    model = build_model("cssformer-swin-t", num_classes=150)
    _run_and_check_gradients(model, (64, 96), monkeypatch)


@pytest.mark.slow
def test_swin_t_forward_backward_512(monkeypatch):
    """The issue's acceptance shape (about 2-3 minutes and 8 GB on a 2-core CPU with the reference op)."""
    torch.manual_seed(0)
    model = build_model("cssformer-swin-t", num_classes=150)
    _run_and_check_gradients(model, (512, 512), monkeypatch)


def test_swin_t_odd_input_size_eval():
    torch.manual_seed(0)
    model = build_model("cssformer-swin-t", num_classes=150, img_size=224).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 67, 101))
    assert out.shape == (1, 150, 67, 101)


def test_triton_interpreter_and_reference_backends_give_the_same_logits():
    """Runs the Triton kernels on CPU tensors through the interpreter (tests/conftest.py sets
    TRITON_INTERPRET=1 without a GPU); on a GPU it compares CUDA Triton with the reference."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = build_model("cssformer-nano", num_classes=4).eval().to(device)
    images = torch.randn(1, 3, 32, 64, device=device)
    with torch.no_grad():
        with use_backend("reference"):
            expected = model(images)
        with use_backend("triton"):
            got = model(images)
    assert got.shape == (1, 4, 32, 64)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)

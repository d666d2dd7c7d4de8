"""Baseline decoders (UperNet, Semantic FPN, SegFormer head, Mask2Former's pixel decoder + per-pixel head) on the same Swin."""
import pytest
import torch

from cssformer.models import SegmentationLoss, build_model, list_models

BASELINES = ["upernet", "fpn", "segformer", "msdeform-fpn"]


@pytest.mark.parametrize("decoder", BASELINES)
def test_every_size_has_a_baseline_preset(decoder):
    for size in ("nano", "swin-t", "swin-s", "swin-b", "swin-l"):
        assert f"{decoder}-{size}" in list_models()


@pytest.mark.parametrize("decoder", BASELINES)
def test_baseline_trains_and_predicts_at_input_size(decoder):
    torch.manual_seed(0)
    model = build_model(f"{decoder}-nano", num_classes=4)
    model.train()
    out = model(torch.randn(2, 3, 40, 72))
    assert out["logits"].shape == out["aux_logits"].shape == (2, 4, 40, 72)
    loss, _ = SegmentationLoss()(out, torch.randint(0, 4, (2, 40, 72)))
    loss.backward()
    # Mask2Former adds its level embedding to the queries only, which reach the loss through the offset /
    # weight projections; Deformable DETR initialises those to zero, so its first gradient is zero.
    dead = [n for n, p in model.decoder.named_parameters()
            if (p.grad is None or not p.grad.abs().sum() > 0) and n != "level_embed"]
    assert not dead, f"decoder parameters without gradient: {dead[:5]}"
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 33, 47)).shape == (1, 4, 33, 47)


def test_baseline_overrides_are_their_own_fields():
    model = build_model("upernet-nano", num_classes=3, channels=32, pool_scales=(1, 2))
    assert model.decoder.cls.in_channels == 32 and len(model.decoder.ppm) == 2
    with pytest.raises(ValueError, match="unknown override.*n_points"):
        build_model("upernet-nano", num_classes=3, n_points=4)
    with pytest.raises(ValueError, match="dim: got 66"):
        build_model("msdeform-fpn-nano", num_classes=3, dim=66)


def test_msdeform_fpn_uses_the_sampling_op_on_strides_8_to_32():
    model = build_model("msdeform-fpn-nano", num_classes=3, num_layers=3)
    assert len(model.decoder.encoder) == 3
    attn = model.decoder.encoder[0].attn
    assert attn.n_levels == 3 and attn.backend is None  # follows the library setting


@pytest.mark.parametrize("decoder", ["cssformer", "upernet", "fpn", "segformer", "msdeform-fpn"])
def test_every_decoder_ends_in_the_shared_classifier(decoder):
    from cssformer.models.heads import Classifier

    model = build_model(f"{decoder}-nano", num_classes=3)
    classifiers = [name for name, m in model.named_modules() if isinstance(m, Classifier)]
    assert classifiers == [("decoder.head.cls" if decoder == "cssformer" else "decoder.cls"), "aux_head.cls"]
    assert not any(isinstance(m, torch.nn.Dropout2d) for m in model.modules())


def test_old_mask2former_name_is_a_deprecated_alias_that_still_builds_and_loads():
    new = build_model("msdeform-fpn-nano", num_classes=3)
    with pytest.warns(DeprecationWarning, match="msdeform-fpn-nano"):
        old = build_model("mask2former-nano", num_classes=3)
    assert "mask2former-nano" not in list_models()
    assert old.build_args["name"] == "mask2former-nano"  # a checkpoint of the old name rebuilds as it was
    old.load_state_dict(new.state_dict())  # same architecture, same keys

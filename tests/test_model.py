"""The assembled model: presets, outputs and their sizes, loss, rebuild from build_args, bad configs."""
import pytest
import torch

import cssformer
from cssformer.models import SegmentationLoss, build_model, list_models


@pytest.fixture(scope="module")
def nano():
    torch.manual_seed(0)
    return build_model("cssformer-nano", num_classes=5)


def test_list_models_names_every_size_and_decoder():
    names = list_models()
    for size in ("nano", "swin-t", "swin-s", "swin-b", "swin-l"):
        assert f"cssformer-{size}" in names
    assert cssformer.list_models() == names
    assert cssformer.build_model is build_model


def test_train_mode_returns_logits_and_aux_at_input_size(nano):
    nano.train()
    out = nano(torch.randn(2, 3, 64, 96))
    assert set(out) == {"logits", "aux_logits"}
    assert out["logits"].shape == (2, 5, 64, 96)
    assert out["aux_logits"].shape == (2, 5, 64, 96)


@pytest.mark.parametrize("size", [(61, 77), (33, 40), (128, 32)])
def test_eval_mode_returns_logits_tensor_at_any_input_size(nano, size):
    nano.eval()
    with torch.no_grad():
        out = nano(torch.randn(1, 3, *size))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 5, *size)
    assert torch.isfinite(out).all()


def test_eval_mode_is_deterministic(nano):
    nano.eval()
    x = torch.randn(1, 3, 45, 70)
    with torch.no_grad():
        a, b = nano(x), nano(x)
    assert torch.equal(a, b)


def test_padding_does_not_leak_into_the_crop(nano):
    """The logits of a 64x64 input equal those of the same pixels when the input was already 64x64:
    padding a 50x64 input must give logits that depend on the input only (and are cropped to 50x64)."""
    nano.eval()
    x = torch.randn(1, 3, 50, 64)
    with torch.no_grad():
        out = nano(x)
        full = nano(torch.nn.functional.pad(x, (0, 0, 0, 14)))
    assert out.shape[-2:] == (50, 64)
    # the model zero-pads internally, so an explicitly zero-padded input gives the same map
    torch.testing.assert_close(out, full[..., :50, :], rtol=1e-4, atol=1e-4)


def test_forward_backward_trains_every_part(nano):
    nano.train()
    nano.zero_grad()
    x = torch.randn(2, 3, 64, 64)
    target = torch.randint(0, 5, (2, 64, 64))
    target[0, :8] = 255
    loss, parts = SegmentationLoss()(nano(x), target)
    loss.backward()
    assert torch.isclose(loss.detach(), parts["loss_ce"] + 0.4 * parts["loss_aux"])
    no_grad = [n for n, p in nano.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not no_grad, f"parameters without gradient: {no_grad[:10]}"


def test_build_args_rebuild_the_same_architecture(nano):
    model = build_model("cssformer-nano", num_classes=3, n_points=2, img_size=(96, 64))
    assert model.num_classes == 3 and model.model_name == "cssformer-nano"
    assert model.build_args == {"name": "cssformer-nano", "num_classes": 3, "n_points": 2, "img_size": [96, 64]}
    again = build_model(**model.build_args)
    assert again.load_state_dict(model.state_dict()) is not None
    assert [n for n, _ in again.named_parameters()] == [n for n, _ in model.named_parameters()]


def test_no_decay_parameter_names_keep_timm_names(nano):
    names = [n for n, _ in nano.named_parameters()]
    assert any("relative_position_bias_table" in n for n in names)


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown preset 'cssformer-swin-xl'.*cssformer-swin-t"):
        build_model("cssformer-swin-xl", num_classes=3)


def test_unknown_override_names_the_key_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown override\(s\) n_pionts.*valid:.*n_points"):
        build_model("cssformer-nano", num_classes=3, n_pionts=4)


@pytest.mark.parametrize("overrides, match", [
    (dict(dim=62), "dim: got 62"),
    (dict(csf_sr_ratios=(4, 2, 1)), "csf_sr_ratios"),
    (dict(n_points=0), "n_points: got 0"),
    (dict(num_heads=(1, 2, 4, 7)), "num_heads: stage 3 has 256 channels"),
    (dict(cia_reweight="both"), "cia_reweight"),
    (dict(img_size=16), "img_size"),
])
def test_bad_configs_are_clear_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        build_model("cssformer-nano", num_classes=3, **overrides)


def test_bad_inputs_are_clear_errors(nano):
    with pytest.raises(ValueError, match=r"images: got shape \(1, 1, 32, 32\), expected \(N, 3, H, W\)"):
        nano(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="num_classes"):
        build_model("cssformer-nano", num_classes=0)


def test_nano_learns_a_simple_labelling():
    """A few AdamW steps on one batch whose labels follow the first channel: the loss falls and the
    eval-mode prediction recovers the labels (catches dead gradients and train/eval mismatches)."""
    torch.manual_seed(0)
    model = build_model("cssformer-nano", num_classes=3).train()
    target = torch.zeros(2, 64, 64, dtype=torch.long)
    target[:, 16:48, 16:48] = 1
    target[:, :, :8] = 2
    images = torch.randn(2, 3, 64, 64)
    images[:, 0] += target.float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = SegmentationLoss()
    losses = []
    for _ in range(25):
        loss, _ = loss_fn(model(images), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.4 * losses[0]
    model.eval()
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == target).float().mean().item()
    assert accuracy > 0.9

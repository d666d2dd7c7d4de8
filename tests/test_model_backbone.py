"""Swin backbone: NCHW pyramid at strides 4/8/16/32 and weights from local files in every format."""
import re

import pytest
import timm
import torch

from cssformer.models import build_model
from cssformer.models.backbone import SWIN_ARCHS, SwinBackbone

NANO = SWIN_ARCHS["swin-nano"]


def _timm_swin(**arch):
    """A plain timm Swin (with classifier head), as a user's downloaded timm checkpoint would hold."""
    torch.manual_seed(1)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=128, num_classes=10, **arch)


def _assert_loaded(backbone, reference_state):
    own = backbone.body.state_dict()
    for key, value in reference_state.items():
        if key.startswith(("head.", "norm.")) or "relative_position_index" in key:
            continue
        mapped = re.sub(r"^layers\.(\d+)", r"layers_\1", key)
        torch.testing.assert_close(own[mapped], value, msg=f"{key} was not loaded")


def test_pyramid_is_nchw_at_strides_4_to_32():
    backbone = SwinBackbone(**NANO, img_size=128)
    feats = backbone(torch.randn(2, 3, 96, 160))
    assert backbone.out_channels == [32, 64, 128, 256]
    assert [tuple(f.shape) for f in feats] == [(2, 32 * 2 ** i, 96 // s, 160 // s)
                                               for i, s in enumerate((4, 8, 16, 32))]


def test_loads_timm_state_dict(tmp_path):
    ref = _timm_swin(**NANO).state_dict()
    path = tmp_path / "swin_timm.pth"
    torch.save(ref, path)
    backbone = SwinBackbone(**NANO, img_size=128, pretrained=str(path))
    _assert_loaded(backbone, ref)


def test_loads_original_swin_checkpoint(tmp_path):
    """Microsoft's format: {"model": ...}, downsampling at the end of stage i (timm: start of i + 1)."""
    ref = _timm_swin(**NANO).state_dict()
    original = {}
    for key, value in ref.items():
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        original[key.replace("head.fc.", "head.")] = value
    assert "layers.0.downsample.reduction.weight" in original
    path = tmp_path / "swin_original.pth"
    torch.save({"model": original}, path)
    backbone = SwinBackbone(**NANO, img_size=128, pretrained=str(path))
    _assert_loaded(backbone, ref)


def test_loads_mmseg_style_backbone_prefix_through_build_model(tmp_path):
    ref = _timm_swin(**NANO).state_dict()
    path = tmp_path / "mmseg.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in ref.items() if not k.startswith("head.")}}, path)
    model = build_model("cssformer-nano", num_classes=3, pretrained=str(path))
    _assert_loaded(model.backbone, ref)
    assert "pretrained" not in model.build_args


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file .*never downloaded"):
        build_model("cssformer-nano", num_classes=3, pretrained=str(tmp_path / "absent.pth"))


def test_weights_of_another_swin_are_a_clear_error(tmp_path):
    path = tmp_path / "swin_wider.pth"
    torch.save(_timm_swin(**dict(NANO, embed_dim=48)).state_dict(), path)
    with pytest.raises(ValueError, match="does not fit this Swin"):
        SwinBackbone(**NANO, img_size=128, pretrained=str(path))


def test_file_without_tensors_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.pth"
    torch.save({"epoch": 3}, path)
    with pytest.raises(ValueError, match="no state dict of tensors"):
        SwinBackbone(**NANO, img_size=128, pretrained=str(path))
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        SwinBackbone(**NANO, img_size=128, pretrained=str(text))

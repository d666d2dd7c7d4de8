"""The msdeform-fpn rename: module ``decoders/msdeform_fpn.py``, classes ``MSDeformFPN*``; the old module,
class and preset names are deprecated aliases, and a checkpoint written under the old names loads."""
import importlib

import pytest
import torch

from cssformer.engine import checkpoint as ckpt
from cssformer.engine.model_io import load_trained
from cssformer.models import build_model
from cssformer.models.decoders import DECODERS
from cssformer.models.decoders.msdeform_fpn import MSDeformFPNConfig, MSDeformFPNDecoder


def test_the_registry_uses_the_new_classes():
    assert DECODERS["msdeform-fpn"] == (MSDeformFPNConfig, MSDeformFPNDecoder)
    assert "mask2former" not in DECODERS


def test_old_module_and_class_names_are_deprecated_aliases():
    old = importlib.import_module("cssformer.models.decoders.mask2former")
    with pytest.warns(DeprecationWarning, match="MSDeformFPNDecoder"):
        assert old.Mask2FormerPixelDecoder is MSDeformFPNDecoder
    with pytest.warns(DeprecationWarning, match="MSDeformFPNConfig"):
        assert old.Mask2FormerPixelConfig is MSDeformFPNConfig
    with pytest.raises(AttributeError):
        old.Mask2FormerSomethingElse  # noqa: B018


def test_a_checkpoint_of_the_old_preset_name_loads_with_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning):
        old = build_model("mask2former-nano", num_classes=3, img_size=64).eval()
    path = tmp_path / "old.pth"
    ckpt.save_checkpoint({"model": old.state_dict(), "build_args": old.build_args, "iteration": 1}, path)
    with pytest.warns(DeprecationWarning, match="msdeform-fpn-nano"):
        model, _ = load_trained(path, torch.device("cpu"))
    assert isinstance(model.decoder, MSDeformFPNDecoder)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), old(x))

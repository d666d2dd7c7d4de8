"""One owner per value that travels: the test options (one name from flag to API, typed), the precision
vocabulary and its one autocast helper, the training size (stored once in a checkpoint) and the
auxiliary loss weight (one default); old config keys and checkpoint fields still read."""
import json
import re
import warnings
from pathlib import Path

import pytest
import torch

import cssformer
from cssformer.cli import main
from cssformer.engine import runtime
from cssformer.engine.checkpoint import load_checkpoint, save_checkpoint
from cssformer.engine.config import load_yaml, resolve
from cssformer.engine.inference import TestOptions
from cssformer.errors import UsageError
from cssformer.models import SegmentationLoss, build_model
from cssformer.models.loss import AUX_WEIGHT

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--crop-size", "32", "--batch-size", "2", "--num-workers", "0", "--device", "cpu", "--warmup-iters", "1",
        "--set", "dataset_args={length: 2, size: 32}"]
OLD_TEST_KEYS = {"test_mode": "slide", "test_crop": [48, 48], "test_stride": [24, 24], "test_scales": [0.5, 1.0],
                 "test_flip": True}


def _sources():
    return [p for d in ("cssformer", "bench") for p in (ROOT / d).rglob("*.py")]


# --- test options ---

def test_old_test_keys_in_a_config_file_are_read_with_a_warning(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in OLD_TEST_KEYS.items()) + "crop_size: 32\n")
    with pytest.warns(FutureWarning, match="'test_scales' is deprecated, write 'test.ratios'"):
        values = load_yaml(path)
    cfg = resolve(values, {})
    assert cfg["test"] == {"mode": "slide", "crop": [48, 48], "stride": [24, 24], "ratios": [0.5, 1.0], "flip": True}
    assert not any(k.startswith("test_") for k in cfg)
    assert TestOptions.from_config(cfg) == TestOptions("slide", (48, 48), (24, 24), (0.5, 1.0), True, None)


def test_the_test_section_merges_key_by_key_and_checks_its_keys():
    cfg = resolve({"test": {"ratios": [1.0, 1.5]}}, {"test.flip": True, "dataset": "cityscapes"})
    assert cfg["test"]["mode"] == "slide"  # the dataset's profile, kept beside the file's ratios
    assert cfg["test"]["ratios"] == [1.0, 1.5] and cfg["test"]["flip"] is True
    assert cfg["test"]["crop"] == cfg["crop_size"]
    with pytest.raises(UsageError, match="unknown key 'test.scales'"):
        resolve({}, {"test": {"scales": [1.0]}})
    with pytest.raises(UsageError, match="test.mode must be whole or slide, got 'bogus'"):
        resolve({}, {"test.mode": "bogus"})


def test_test_options_are_typed_and_refuse_unknown_names_and_bad_values():
    options = TestOptions(ratios=[1, 0.5], crop=32, stride=[16, 8], mode="slide")
    assert options.ratios == (1.0, 0.5) and options.crop == (32, 32) and options.stride == (16, 8)
    assert options.replace(flip=True).flip and not options.flip
    with pytest.raises(ValueError, match="unknown scales"):
        options.replace(scales=[1.0])
    for bad in (dict(mode="bogus"), dict(ratios=[0]), dict(ratios=[]), dict(mode="slide"), dict(flip="yes")):
        with pytest.raises(ValueError, match="test"):
            TestOptions(**bad)


def test_scales_flag_is_a_deprecated_alias_of_ratios():
    import argparse

    from cssformer.commands.options import add_test_options, test_options_from

    parser = argparse.ArgumentParser()
    add_test_options(parser)
    cfg = resolve({}, {})
    new = test_options_from(parser.parse_args(["--ratios", "0.5", "1"]), cfg)
    with pytest.warns(FutureWarning, match="--scales is deprecated"):
        old = test_options_from(parser.parse_args(["--scales", "0.5", "1"]), cfg)
    assert new == old and new.ratios == (0.5, 1.0)
    assert "--scales" not in parser.format_help()


# --- precision ---

def test_one_precision_vocabulary_with_the_old_spelling_as_alias():
    assert runtime.PRECISIONS == ("fp32", "bf16", "fp16")
    assert runtime.precision("none") == "fp32" and runtime.amp_dtype("fp32") is None
    assert resolve({}, {})["amp"] == "fp32" and resolve({"amp": "none"}, {})["amp"] == "fp32"
    with pytest.raises(UsageError, match="amp must be fp32, bf16 or fp16"):
        resolve({}, {"amp": "fp8"})
    with runtime.autocast("cpu", torch.float32):  # a dtype of fp32 is no autocast either
        assert torch.nn.Linear(2, 2)(torch.randn(1, 2)).dtype == torch.float32
    from cssformer_kernels.shapes import DTYPES  # autotune's --dtype names are the same words
    assert set(DTYPES) == set(runtime.PRECISIONS)


def test_autocast_is_entered_in_one_place():
    # Switching autocast off for a region (``enabled=False``, as CIA's fp32 parts do) is not entering it;
    # bench/op_account.py sets the CUDA autocast state by hand (no GPU here) and only names torch.autocast;
    # bench/bench_hf.py times Hugging Face models on the kernels package alone, without the toolkit.
    entered = re.compile(r"torch\.autocast\((?![^)]*enabled=False)")
    found = [str(p.relative_to(ROOT)) for p in _sources()
             if p.name not in ("op_account.py", "bench_hf.py") and entered.search(p.read_text(encoding="utf-8"))]
    assert found == [str(Path("cssformer/engine/runtime.py"))]
    bench = (ROOT / "bench" / "bench_model.py").read_text(encoding="utf-8")
    assert "runtime.PRECISIONS" in bench and '"none"' not in bench


# --- auxiliary loss weight ---

def test_aux_weight_has_one_owner_and_one_default(tmp_path):
    assert resolve({}, {})["aux_weight"] == AUX_WEIGHT == SegmentationLoss().aux_weight
    spelled = [str(p.relative_to(ROOT)) for p in _sources()
               if re.search(r"aux_weight\s*[:=]\s*(float\s*=\s*)?0\.4", p.read_text(encoding="utf-8"))]
    assert spelled == [], spelled  # the default is AUX_WEIGHT, written once
    model = build_model("cssformer-nano", 3)
    assert not hasattr(model, "aux_weight")
    with pytest.warns(DeprecationWarning, match="aux_weight"):
        old = build_model("cssformer-nano", 3, aux_weight=0.2)
    assert "aux_weight" not in old.build_args
    path = tmp_path / "old.yaml"
    path.write_text("model_args: {aux_weight: 0.25}\n")
    with pytest.warns(FutureWarning, match="'model_args.aux_weight' is deprecated, write 'aux_weight'"):
        cfg = resolve(load_yaml(path), {})
    assert cfg["aux_weight"] == 0.25 and cfg["model_args"] == {}


# --- the training size, and an old checkpoint ---

def _old_checkpoint(path):
    """A checkpoint as the previous version wrote it: the size in the config and in build_args, the old
    test keys, amp none, aux_weight in build_args / model_args."""
    torch.manual_seed(0)
    model = build_model("cssformer-nano", 3, img_size=[32, 32])
    cfg = resolve({}, {"crop_size": 32, "dataset_args": {"length": 2, "size": 32}})
    test = cfg.pop("test")
    cfg.update(test_mode="slide", test_crop=[32, 32], test_stride=[16, 16], test_scales=[1.0, 0.5],
               test_flip=test["flip"], amp="none", model_args={"aux_weight": 0.3})
    del cfg["aux_weight"]
    save_checkpoint({"model": model.state_dict(), "build_args": dict(model.build_args, aux_weight=0.3),
                     "config": cfg, "iteration": 1, "meta": {}}, path)
    return model.eval()


def test_an_old_checkpoint_loads_with_its_fields_read_silently(tmp_path):
    path = tmp_path / "old.pth"
    old = _old_checkpoint(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing the user wrote: no warning
        model = cssformer.from_checkpoint(path)
    assert model.crop_size == (32, 32) and model.config["crop_size"] == [32, 32]
    assert model.test_options == TestOptions("slide", (32, 32), (16, 16), (1.0, 0.5), False, None)
    assert model.config["amp"] == "fp32" and model.config["aux_weight"] == 0.3
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), old(x))
    image = x[0].clamp(-2, 2)  # one normalised image (a 4-D tensor is a batch)
    mask = cssformer.predict_mask(model, image, ratios=[1.0])
    assert mask.shape == (32, 32)
    with pytest.raises(ValueError, match="test.mode must be whole or slide"):
        cssformer.predict_mask(model, image, mode="bogus")


def test_training_stores_the_size_once_and_the_test_options_by_their_names(tmp_path, capsys):
    work = tmp_path / "run"
    assert main(["train", *TINY, "--iters", "1", "--work-dir", str(work), "--set", "test.ratios=[1.0, 0.5]"]) == 0
    state = load_checkpoint(work / "iter_000001.pth")
    assert state["build_args"]["img_size"] == [32, 32] and "crop_size" not in state["config"]
    assert state["config"]["test"]["ratios"] == [1.0, 0.5] and state["config"]["amp"] == "fp32"
    model = cssformer.from_checkpoint(work / "iter_000001.pth")
    assert model.crop_size == (32, 32) and model.test_options.ratios == (1.0, 0.5)
    out = tmp_path / "eval.json"
    assert main(["eval", str(work / "iter_000001.pth"), "--device", "cpu", "--num-workers", "0", "--amp", "none",
                 "--ratios", "1.0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["options"]["ratios"] == [1.0] and result["amp"] == "fp32"

"""``cssformer autotune``."""
import json

import pytest
import torch

from cssformer.cli import main


def test_autotune_preset_runs(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CSSFORMER_CACHE_DIR", str(tmp_path))
    if torch.cuda.is_available():
        monkeypatch.delenv("CSSFORMER_AUTOTUNE", raising=False)
        monkeypatch.setenv("CSSFORMER_AUTOTUNE_CONFIGS", "32x1x4x1,16x4x4x1")
        assert main(["autotune", "--shape", "1,50,2,8,2,8x8,4x4", "--dtype", "fp32", "--form", "fused",
                     "--force"]) == 0
        out = capsys.readouterr().out
        assert "msda_forward" in out and "msda_backward" in out and "yes" in out
        saved = json.loads((tmp_path / "autotune.json").read_text())
        kernels = next(iter(saved.values()))
        assert any(k.startswith("msda_forward@") for k in kernels) and any(k.startswith("msda_backward@") for k in kernels)
    else:
        assert main(["autotune", "--preset", "seg512"]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "Triton interpreter" in out and "with one config" in out and "seg512" in out
        assert not (tmp_path / "autotune.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["autotune", "--shape", "1,2,3"], "shape: got '1,2,3', expected N,Q,M,D,P,H1xW1"),
    (["autotune", "--shape", "1,S,2,8,2,0x4"], "shape: got '1,S,2,8,2,0x4'"),
])
def test_autotune_bad_shape_is_exit_code_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_unknown_preset_is_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["autotune", "--preset", "nope"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message; the CUDA branch tunes for real")
def test_autotune_model_on_cpu_names_the_model(capsys):
    assert main(["autotune", "--model", "cssformer-nano", "--size", "64", "64", "--batch", "1"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "cssformer-nano at 64x64, batch 1" in out and "nothing to tune" in out


def test_autotune_unknown_model_is_exit_code_2(capsys):
    assert main(["autotune", "--model", "cssformer-tiny"]) == 2
    assert "--model: got 'cssformer-tiny', expected one of" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: tunes a model's layers for real")
def test_autotune_model_on_cuda_tunes_its_layers(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CSSFORMER_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("CSSFORMER_AUTOTUNE", raising=False)
    monkeypatch.setenv("CSSFORMER_AUTOTUNE_CONFIGS", "32x1x4x1,16x4x4x1")
    assert main(["autotune", "--model", "cssformer-nano", "--size", "64", "64", "--batch", "1",
                 "--dtype", "bf16", "--force"]) == 0
    out = capsys.readouterr().out
    assert "msda_forward (model)" in out and "msda_backward (model)" in out

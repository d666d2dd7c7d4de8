"""Mixed precision and torch.compile for training, eval and predict; the throughput line of the log.
Compilation here uses the ``eager`` / ``aot_eager`` backends: they trace the model with dynamo (graph
breaks, custom-op handling) without generating code, so the tests stay fast on a CPU."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cssformer.cli import main
from cssformer.engine import runtime

TINY = ["--crop-size", "32", "--batch-size", "2", "--num-workers", "0", "--device", "cpu",
        "--set", "dataset_args={length: 6, size: 40}", "--set", "log_interval=1", "--warmup-iters", "1"]


@pytest.fixture(scope="module")
def compiled_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("runtime") / "run"
    assert main(["train", *TINY, "--iters", "2", "--eval-interval", "2", "--compile", "aot_eager",
                 "--work-dir", str(work)]) == 0
    return work


def test_compiled_training_logs_throughput_and_data_wait(compiled_run):
    records = [json.loads(line) for line in (compiled_run / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    assert [r["iter"] for r in train] == [1, 2]
    for r in train:
        assert r["img_per_s"] > 0 and r["img_per_s"] == pytest.approx(2 * r["it_per_s"], rel=1e-6)
        assert 0.0 <= r["data_wait"] <= 1.0
    start = next(r for r in records if r["type"] == "start")
    assert start["config"]["compile"] == "aot_eager"
    # the checkpoint holds the plain module's keys (no "_orig_mod." prefix from the compile wrapper)
    name = (compiled_run / "last_checkpoint").read_text().strip()
    keys = torch.load(compiled_run / name, map_location="cpu", weights_only=True)["model"].keys()
    assert keys and not any("_orig_mod" in k for k in keys)


def test_eval_with_amp_and_compile(compiled_run, tmp_path):
    ckpt = compiled_run / "best.pth"
    plain, fast = tmp_path / "plain.json", tmp_path / "fast.json"
    assert main(["eval", str(ckpt), "--device", "cpu", "--num-workers", "0", "--out", str(plain)]) == 0
    assert main(["eval", str(ckpt), "--device", "cpu", "--num-workers", "0", "--amp", "bf16",
                 "--compile", "eager", "--out", str(fast)]) == 0
    a, b = json.loads(plain.read_text()), json.loads(fast.read_text())
    assert a["amp"] == "fp32" and b["amp"] == "bf16"
    # bf16 moves a few border pixels at most on this tiny model: the scores stay close
    assert b["aAcc"] == pytest.approx(a["aAcc"], abs=5.0)


def test_predict_with_amp_and_compile(compiled_run, tmp_path):
    image = tmp_path / "in" / "x.png"
    image.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    assert main(["predict", str(image), "-c", str(compiled_run / "best.pth"), "-o", str(out), "--device", "cpu",
                 "--amp", "bf16", "--compile", "eager"]) == 0
    mask = Image.open(out / "x_mask.png")
    assert mask.mode == "P" and mask.size == (36, 40)  # an indexed PNG: class ids with the palette


@pytest.mark.parametrize("argv", [["eval", "x.pth", "--compile", "tensorrt"], ["eval", "x.pth", "--amp", "fp8"],
                                  ["train", "--compile", "fast"]])
def test_bad_runtime_flags_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_bad_compile_in_a_config_is_refused(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("compile: yes-please\n")
    assert main(["train", "--config", str(config), "--work-dir", str(tmp_path / "w")]) == 2
    assert "compile must be one of none, inductor, aot_eager, eager" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_runtime_helpers():
    model = torch.nn.Linear(2, 2)
    assert runtime.compiled(model, "none") is model and runtime.compiled(model, None) is model
    wrapped = runtime.compiled(model, "eager")
    assert wrapped is not model and wrapped.weight is model.weight  # same parameters
    assert runtime.amp_dtype("none") is None and runtime.amp_dtype("bf16") is torch.bfloat16
    with runtime.autocast("cpu", "bf16"):
        assert model(torch.randn(1, 2)).dtype == torch.bfloat16
    with runtime.autocast("cpu", "none"):
        assert model(torch.randn(1, 2)).dtype == torch.float32

"""Checkpoints are never torn: a failing or killed write leaves the previous file intact, and a run
killed mid-training resumes from its last checkpoint."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cssformer.engine import checkpoint as ckpt
from cssformer.engine.optim import build_optimizer, lr_factor, param_groups


def test_failed_write_keeps_the_old_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "iter_000002.pth"
    ckpt.save_checkpoint({"model": {"w": torch.ones(3)}, "build_args": {"name": "x"}, "iteration": 2}, path)

    def torn_save(obj, f):  # writes half a file, then the process "dies"
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint({"model": {"w": torch.zeros(3)}, "build_args": {}, "iteration": 4}, path)
    monkeypatch.undo()
    state = ckpt.load_checkpoint(path)
    assert state["iteration"] == 2 and torch.equal(state["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_000002.pth"]


def test_no_weight_decay_on_norms_biases_and_position_tables():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.norm = torch.nn.LayerNorm(4)
            self.relative_position_bias_table = torch.nn.Parameter(torch.zeros(9, 2))
            self.absolute_pos_embed = torch.nn.Parameter(torch.zeros(1, 4, 2, 2))

    model = Tiny()
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [model.conv.weight.shape]
    assert len(no_decay["params"]) == 5  # conv bias, norm weight + bias, two position tables
    assert len(build_optimizer(model, 1e-3, 0.05).param_groups) == 2


def test_warmup_then_poly_factor():
    assert lr_factor(0, 100, 10) == pytest.approx(1e-6)
    assert lr_factor(5, 100, 10) == pytest.approx(0.5, abs=1e-6)
    assert lr_factor(10, 100, 10) == 1.0
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(55, 100, 10, power=2.0) == pytest.approx(0.25)
    assert lr_factor(100, 100, 10, min_ratio=0.1) == pytest.approx(0.1)


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    work = tmp_path / "run"
    args = ["--crop-size", "32", "--batch-size", "2", "--num-workers", "0", "--device", "cpu", "--iters", "40",
            "--eval-interval", "1000", "--checkpoint-interval", "2", "--warmup-iters", "1",
            "--set", "dataset_args={length: 4, size: 40}", "--work-dir", str(work)]
    cmd = [sys.executable, "-m", "cssformer.cli", "train", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 240
        while not (work / "iter_000004.pth").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)  # no clean-up of any kind
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    last = (work / "last_checkpoint").read_text()
    state = ckpt.load_checkpoint(work / last)  # whatever the kill interrupted, the named checkpoint is whole
    done = state["iteration"]
    assert done >= 2 and last == f"iter_{done:06d}.pth"
    for path in work.glob("iter_*.pth"):
        ckpt.load_checkpoint(path)
    from cssformer.cli import main

    assert main(["train", *_with_iters(args, done + 2), "--resume"]) == 0
    resumed = ckpt.load_checkpoint(work / (work / "last_checkpoint").read_text())
    assert resumed["iteration"] == done + 2
    assert not list(work.glob(".*.tmp"))  # a write the kill interrupted is cleaned up on resume


def _with_iters(args, iters):
    out = list(args)
    out[out.index("--iters") + 1] = str(iters)
    return out

"""torchrun with 2 CPU processes (gloo): DDP training and sharded evaluation."""
import json
import os
import subprocess
import sys

import pytest
import torch

from cssformer.cli import main

TINY = ["--crop-size", "32", "--batch-size", "2", "--num-workers", "0", "--device", "cpu", "--iters", "2",
        "--eval-interval", "2", "--warmup-iters", "1", "--set", "dataset_args={length: 5, size: 40}",
        "--set", "log_interval=1"]


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cssformer.cli", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="this torch build has no gloo backend")
def test_torchrun_two_cpu_processes_train_and_evaluate(tmp_path):
    work = tmp_path / "ddp"
    proc = _torchrun("train", *TINY, "--work-dir", str(work))
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert records[0]["type"] == "start" and records[0]["world_size"] == 2
    assert [r["iter"] for r in records if r["type"] == "train"] == [1, 2]  # rank 0 alone logs
    state = torch.load(work / "iter_000002.pth", weights_only=True)
    assert len(state["rng"]) == 2  # both ranks' generators, for an exact resume
    assert not any(k.startswith("module.") for k in state["model"])  # loadable without DDP

    # sharded evaluation (3 + 2 images) sums the histograms: same numbers as one process
    ddp_out, one_out = tmp_path / "ddp.json", tmp_path / "one.json"
    proc = _torchrun("eval", str(work / "iter_000002.pth"), "--device", "cpu", "--num-workers", "0",
                     "--out", str(ddp_out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(["eval", str(work / "iter_000002.pth"), "--device", "cpu", "--num-workers", "0",
                 "--out", str(one_out)]) == 0
    ddp, one = json.loads(ddp_out.read_text()), json.loads(one_out.read_text())
    assert ddp["images"] == one["images"] == 5
    for key in ("aAcc", "mIoU", "mAcc"):
        assert ddp[key] == pytest.approx(one[key], rel=1e-9)

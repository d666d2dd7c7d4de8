"""The total batch does not depend on the number of processes: one process accumulating 2 micro-batches
and two gloo processes with half the batch each compute the same step; resuming mid-epoch with
accumulation is exact; the loss weights make the step the mean over the whole batch's valid pixels."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from cssformer.cli import main
from cssformer.engine import accumulate
from cssformer.errors import UsageError

# 8 images of 40x40 resized by 0.75-1.5 and cropped to 32: the smaller ones are padded with ignored
# pixels, so micro-batches hold different numbers of valid pixels (what the loss weights are for). No
# dropout anywhere (the auxiliary head's is not configurable: it is left out), so the runs can agree.
TINY = ["--crop-size", "32", "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--warmup-iters", "1",
        "--eval-interval", "100", "--checkpoint-interval", "1", "--set", "keep_checkpoints=5",
        "--set", "dataset_args={length: 8, size: 40}", "--set", "model_args={dropout: 0.0, aux_head: false}", "--set", "log_interval=1"]


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_micro_batch_and_position():
    assert accumulate.micro_batch(16, 1, 8) == 2 and accumulate.micro_batch(16, 8, 1) == 2
    with pytest.raises(UsageError, match="not divisible by 3 processes x 2 accumulation steps"):
        accumulate.micro_batch(16, 2, 3)
    # 10 micro-batches per epoch, 4 per step: after 3 steps the 12th micro-batch is next (epoch 1, 2 in)
    assert accumulate.position(3, 4, 2, 10) == (1, 4)
    assert accumulate.loss_weight(30, 30, 1) == 1.0 and accumulate.loss_weight(0, 0, 2) == 0.0


def test_weighted_micro_losses_are_the_mean_over_the_whole_batch():
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 5, 5, requires_grad=True)
    target = torch.randint(0, 3, (4, 5, 5))
    target[0, :4] = 255  # micro-batch 0 has fewer valid pixels
    whole = F.cross_entropy(logits, target, ignore_index=255)
    counts = [accumulate.valid_pixels(target[:2]), accumulate.valid_pixels(target[2:])]
    total = sum(counts)
    parts = [F.cross_entropy(logits[i:i + 2], target[i:i + 2], ignore_index=255) * accumulate.loss_weight(c, total, 1)
             for i, c in zip((0, 2), counts)]
    assert sum(parts).item() == pytest.approx(whole.item(), rel=1e-6)
    naive = sum(F.cross_entropy(logits[i:i + 2], target[i:i + 2], ignore_index=255) for i in (0, 2)) / 2
    assert abs(naive.item() - whole.item()) > 1e-3  # the mean of micro-batch means would differ


@pytest.fixture(scope="module")
def accumulated(tmp_path_factory):
    """One process, batch 4 = 2 micro-steps x 2 images, 3 optimizer steps (2 per epoch: crosses one)."""
    work = tmp_path_factory.mktemp("accum") / "one"
    assert main(["train", *TINY, "--accum-steps", "2", "--iters", "3", "--work-dir", str(work)]) == 0
    return work


def _relative_diff(a: dict, b: dict) -> float:
    """||a - b|| / ||a|| over all tensors of two state dicts (or Adam moments) together."""
    num = sum(float((a[k].double() - b[k].double()).norm() ** 2) for k in a)
    den = sum(float(a[k].double().norm() ** 2) for k in a)
    return (num / den) ** 0.5


def _moments(path, which):
    state = torch.load(path, map_location="cpu", weights_only=True)["optimizer"]["state"]
    return {k: v[which] for k, v in state.items()}


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="this torch build has no gloo backend")
def test_two_processes_compute_the_step_of_one_process_with_accumulation(accumulated, tmp_path):
    """Both runs take the same 4 images per step (2 x 2 micro-batches vs 2 processes x 2) and must compute
    the same gradient: Adam's moments after the first step (0.1 g and 0.001 g^2) agree to float32
    round-off, and so do the weights. (Later steps are not compared element by element: Adam divides
    each gradient element by its own magnitude, so where a gradient is nearly zero its round-off decides
    the sign of a whole lr-sized step; one process with and without accumulation differ the same way.)"""
    work = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cssformer.cli", "train", *TINY, "--iters", "1", "--work-dir", str(work)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = accumulated / "iter_000001.pth", work / "iter_000001.pth"
    grads = _relative_diff(_moments(one, "exp_avg"), _moments(two, "exp_avg"))
    squares = _relative_diff(_moments(one, "exp_avg_sq"), _moments(two, "exp_avg_sq"))
    w1, w2 = _weights(one), _weights(two)
    weights = max((w1[k].float() - w2[k].float()).abs().max().item() for k in w1)
    print(f"1 process x 2 micro-steps vs 2 processes: gradient {grads:.2g}, squared gradient {squares:.2g} "
          f"(relative), weights max |diff| {weights:.2g} after one step")
    assert grads < 1e-3 and squares < 1e-3 and weights < 1e-6


def test_resume_mid_epoch_with_accumulation_is_exact(accumulated, tmp_path):
    work = tmp_path / "resumed"
    assert main(["train", *TINY, "--accum-steps", "2", "--iters", "3", "--work-dir", str(work),
                 "--resume", str(accumulated / "iter_000001.pth")]) == 0
    straight, resumed = _weights(accumulated / "iter_000003.pth"), _weights(work / "iter_000003.pth")
    for key, value in straight.items():
        assert torch.equal(resumed[key], value), key

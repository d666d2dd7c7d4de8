"""The total batch, independent of the number of processes: ``batch_size`` images per optimizer step,
split over ``world_size`` processes and ``accum_steps`` micro-steps each (micro-batch
``batch_size / (world_size * accum_steps)``).

The loss of one optimizer step is the mean cross-entropy over the valid (not ignored) pixels of the
whole batch, as one process with the whole batch would compute it. A micro-batch's mean loss is
weighted by its share of the batch's valid pixels (counted on the masks before the forward pass and
summed over processes): ``loss_i * n_i / N * world_size`` (DDP averages gradients over processes,
hence the ``world_size``). With one process and one micro-step the weight is exactly 1, so the loss is
unchanged. Gradients of all but the last micro-step stay local (``DistributedDataParallel.no_sync``).
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
import torch.distributed as dist

from cssformer.errors import UsageError

IGNORE_INDEX = 255


def micro_batch(batch_size: int, accum_steps: int, world_size: int) -> int:
    """Images per process per micro-step; a batch that does not split evenly is a usage error."""
    if accum_steps < 1:
        raise UsageError(f"accum_steps must be >= 1, got {accum_steps}")
    parts = world_size * accum_steps
    if batch_size % parts:
        raise UsageError(f"batch_size {batch_size} (the total per optimizer step) is not divisible by "
                         f"{world_size} processes x {accum_steps} accumulation steps = {parts}")
    return batch_size // parts


def check_combinations(cfg: dict) -> None:
    """Settings that each look fine but cannot work together (the world size is checked at start)."""
    if int(cfg.get("accum_steps", 1)) < 1:
        raise UsageError(f"accum_steps must be >= 1, got {cfg['accum_steps']}")
    if cfg["batch_size"] % int(cfg.get("accum_steps", 1)):
        raise UsageError(f"batch_size {cfg['batch_size']} is not divisible by accum_steps {cfg['accum_steps']}")
    test = cfg["test"]
    if test["mode"] == "slide":
        crop, window, stride = cfg["crop_size"], list(test["crop"]), list(test["stride"])
        if any(c > w for c, w in zip(crop, window)):
            raise UsageError(f"crop_size {crop} is larger than the sliding window test.crop {window}")
        if any(s > w or s < 1 for s, w in zip(stride, window)):
            raise UsageError(f"test.stride {stride} must be between 1 and the sliding window test.crop {window} "
                             "(a larger stride leaves pixels unseen)")


def valid_pixels(masks: torch.Tensor) -> int:
    return int((masks != IGNORE_INDEX).sum())


def total_valid(counts: list[int], world_size: int, device: torch.device) -> int:
    """Valid pixels of the whole optimizer step: this process's micro-batches summed over processes."""
    total = sum(counts)
    if world_size > 1:
        t = torch.tensor([total], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        total = int(t.item())
    return total


def loss_weight(count: int, total: int, world_size: int) -> float:
    """Factor on a micro-batch's mean loss that makes the summed gradients the whole batch's mean."""
    return 0.0 if total == 0 else count * world_size / total


def sync_context(ddp_model, sync: bool):
    """``no_sync()`` for the micro-steps whose gradients stay local; a plain context otherwise."""
    if sync or not hasattr(ddp_model, "no_sync"):
        return contextlib.nullcontext()
    return ddp_model.no_sync()


def groups(batches: Iterable, size: int) -> Iterator[list]:
    """``size`` consecutive micro-batches at a time."""
    it = iter(batches)
    while True:
        group = []
        for _ in range(size):
            try:
                group.append(next(it))
            except StopIteration:
                return
        yield group


def position(iteration: int, accum_steps: int, micro: int, per_epoch: int) -> tuple[int, int]:
    """``(epoch, samples to skip in it)`` of a process after ``iteration`` optimizer steps, with
    ``per_epoch`` micro-batches of ``micro`` images per epoch (exact resume)."""
    epoch, done = divmod(iteration * accum_steps, per_epoch)
    return epoch, done * micro

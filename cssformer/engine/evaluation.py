"""Dataset evaluation: every rank runs its shard of the images, histograms are summed across ranks."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from cssformer.data.loader import EvalSet, ShardSampler
from cssformer.engine.distributed import DistInfo
from cssformer.engine import runtime
from cssformer.engine.inference import TestOptions, predict_probs
from cssformer.metrics import IoUMetric


def _single(batch):
    return batch[0]


def _same_size_batches(loader, batch_size: int):
    images, masks = [], []
    for image, mask, _name in loader:
        if images and (image.shape != images[0].shape or len(images) == batch_size):
            yield torch.stack(images), torch.stack(masks)
            images, masks = [], []
        images.append(image)
        masks.append(mask)
    if images:
        yield torch.stack(images), torch.stack(masks)


def test_options(cfg: dict) -> TestOptions:
    """The test options of a resolved config (:meth:`TestOptions.from_config`; this name is kept for
    its callers)."""
    return TestOptions.from_config(cfg)


@torch.no_grad()
def evaluate(model, dataset, options: TestOptions, info: DistInfo, num_workers: int = 0, amp_dtype=None,
             progress=None, batch_size: int = 8) -> dict:
    """aAcc / mIoU / mAcc / per-class IoU over ``dataset`` (see :class:`cssformer.metrics.IoUMetric`).
    Consecutive images of the same size go through the model together, up to ``batch_size``."""
    was_training = model.training
    model.eval()
    metric = IoUMetric(dataset.num_classes)
    sampler = ShardSampler(len(dataset), info.world_size, info.rank)
    loader = DataLoader(EvalSet(dataset), batch_size=1, sampler=sampler, num_workers=num_workers,
                        collate_fn=_single)
    device, done = info.device, 0
    for images, masks in _same_size_batches(loader, batch_size):
        with runtime.autocast(device, amp_dtype):
            probs = predict_probs(model, images.to(device), masks.shape[-2:], options)
        metric.update(probs.argmax(1), masks)
        done += len(images)
        if progress is not None:
            progress(done, len(sampler))
    metric.all_reduce()
    model.train(was_training)
    return metric.compute()

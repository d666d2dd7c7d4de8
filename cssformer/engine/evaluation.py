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


def _same_size_batches(loader, batch_size: int, indices):
    """(images, masks, [(dataset index, name)]) of consecutive same-size samples, up to ``batch_size``;
    ``indices``: the dataset index of each sample ``loader`` yields, in order."""
    images, masks, where = [], [], []
    for index, (image, mask, name) in zip(indices, loader):
        if images and (image.shape != images[0].shape or len(images) == batch_size):
            yield torch.stack(images), torch.stack(masks), where
            images, masks, where = [], [], []
        images.append(image)
        masks.append(mask)
        where.append((index, name))
    if images:
        yield torch.stack(images), torch.stack(masks), where


@torch.no_grad()
def evaluate(model, dataset, options: TestOptions, info: DistInfo, num_workers: int = 0, amp_dtype=None,
             progress=None, batch_size: int = 8, show=None) -> dict:
    """aAcc / mIoU / mAcc / per-class IoU over ``dataset`` (see :class:`cssformer.metrics.IoUMetric`) and
    ``confusion``, the summed ``K x K`` confusion matrix as lists of pixel counts (rows: ground truth). Consecutive images of the
    same size go through the model together, up to ``batch_size``. ``show``: called for each batch with
    ``[(dataset index, name)]``, the normalised images, the ground truths and the predictions (on the CPU):
    see :class:`cssformer.visualisation.Panels`."""
    was_training = model.training
    model.eval()
    metric = IoUMetric(dataset.num_classes)
    sampler = ShardSampler(len(dataset), info.world_size, info.rank)
    loader = DataLoader(EvalSet(dataset), batch_size=1, sampler=sampler, num_workers=num_workers,
                        collate_fn=_single)
    device, done = info.device, 0
    for images, masks, where in _same_size_batches(loader, batch_size, sampler.indices):
        with runtime.autocast(device, amp_dtype):
            probs = predict_probs(model, images.to(device), masks.shape[-2:], options)
        pred = probs.argmax(1)
        metric.update(pred, masks)
        if show is not None:
            show(where, images, masks, pred.cpu())
        done += len(images)
        if progress is not None:
            progress(done, len(sampler))
    metric.all_reduce()
    model.train(was_training)
    return {**metric.compute(), "confusion": metric.confusion.tolist()}

"""Torch-side wrappers: transformed training samples, an exactly resumable distributed sampler."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, default_collate

from cssformer.data.io import DatasetError
from cssformer.data.transforms import mask_to_tensor, to_tensor


class SampleError:
    """A sample that could not be loaded, passed back from a loader worker as data (an exception raised
    in a worker reaches the main process only as traceback text)."""

    def __init__(self, message: str):
        self.message = message


def collate_train(batch):
    """``default_collate``, or the first :class:`SampleError` of the batch."""
    for item in batch:
        if isinstance(item, SampleError):
            return item
    return default_collate(batch)


class TrainSet(Dataset):
    """Applies ``transforms`` to ``dataset[i]`` with a generator seeded by ``(seed, epoch, i)``, so a
    sample's augmentation does not depend on worker count, order or on resuming."""

    def __init__(self, dataset, transforms, seed: int = 0):
        self.dataset, self.transforms, self.seed, self.epoch = dataset, transforms, int(seed), 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        try:
            sample = self.transforms(self.dataset[index], rng)
        except DatasetError as err:
            return SampleError(str(err))
        return to_tensor(sample["image"]), mask_to_tensor(sample["mask"])


class EvalSet(Dataset):
    """Whole images, normalised, at their own size, and their masks (batch size 1: sizes differ)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        return to_tensor(sample["image"]), mask_to_tensor(sample["mask"]), sample["name"]


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled by ``seed + epoch``, one shard per rank, also with one process)
    that can start part-way through an epoch: ``set_epoch(epoch, skip=k)`` drops its first ``k`` indices."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = int(skip)

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self) -> int:
        return super().__len__() - self.skip


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation sharding without padding: rank r gets indices r, r + world, ... (each image once)."""

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0):
        self.indices = list(range(rank, length, num_replicas))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

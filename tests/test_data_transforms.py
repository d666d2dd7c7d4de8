import numpy as np
import torch

from cssformer.data.loader import ResumableSampler, TrainSet
from cssformer.data.synthetic import SyntheticDataset
from cssformer.data.transforms import (MEAN, STD, PhotoMetricDistortion, RandomCrop, RandomResize, rescale_size,
                                       to_tensor, train_transforms)


def _coded_sample(h=40, w=60):
    """Image channels encode the pixel position; the mask encodes the same, so any misalignment shows."""
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([yy * 4, xx * 4, np.zeros_like(xx)], -1).astype(np.uint8)
    mask = ((yy // 10) * 6 + xx // 10).astype(np.uint8)  # 4 x 6 blocks of 10 px
    return {"image": image, "mask": mask}


def test_crop_and_flip_keep_image_and_mask_aligned():
    pipe = train_transforms((24, 24), scale=None, ratio_range=(1.0, 1.0), cat_max_ratio=1.0, photometric=False)
    for seed in range(20):
        out = pipe(_coded_sample(), np.random.default_rng(seed))
        assert out["image"].shape == (24, 24, 3) and out["mask"].shape == (24, 24)
        y, x = out["image"][..., 0].astype(int) // 4, out["image"][..., 1].astype(int) // 4
        np.testing.assert_array_equal(out["mask"], (y // 10) * 6 + x // 10)


def test_random_resize_follows_mmseg_keep_ratio_rule():
    assert rescale_size(500, 1000, (2048, 512), 1.0) == (512, 1024)  # short side to 512
    assert rescale_size(400, 600, (2048, 512), 1.0) == (512, 768)
    assert rescale_size(400, 600, (2048, 512), 0.5) == (256, 384)
    assert rescale_size(1024, 4096, (2048, 1024), 1.0) == (512, 2048)  # long side caps it
    assert rescale_size(30, 40, None, 1.5) == (45, 60)
    sample = _coded_sample()
    sizes = {RandomResize(None, (0.5, 2.0))(sample, np.random.default_rng(s))["mask"].shape for s in range(10)}
    assert len(sizes) > 5 and all(20 <= h <= 80 and 30 <= w <= 120 for h, w in sizes)


def test_crop_smaller_image_is_padded_with_ignore():
    pipe = train_transforms((32, 32), scale=None, ratio_range=(1.0, 1.0), photometric=False)
    out = pipe(_coded_sample(20, 25), np.random.default_rng(0))
    assert out["image"].shape == (32, 32, 3)
    assert (out["mask"][20:] == 255).all() and (out["mask"][:, 25:] == 255).all()
    assert (out["image"][20:] == 0).all()


def test_category_ratio_cap_avoids_single_class_crops():
    mask = np.zeros((100, 100), np.uint8)
    mask[:, 90:] = 1  # 90 % of the image is class 0
    sample = {"image": np.zeros((100, 100, 3), np.uint8), "mask": mask}
    capped = RandomCrop((20, 20), cat_max_ratio=0.75)
    uncapped = RandomCrop((20, 20), cat_max_ratio=1.0)
    mixed = lambda crop: sum(len(np.unique(crop(sample, np.random.default_rng(s))["mask"])) > 1 for s in range(50))
    assert mixed(capped) > 2 * mixed(uncapped)


def test_photometric_distortion_changes_colours_only():
    sample = SyntheticDataset("train", length=1, size=48)[0]
    outs = [PhotoMetricDistortion()(sample, np.random.default_rng(s)) for s in range(8)]
    assert all(o["image"].shape == sample["image"].shape and o["image"].dtype == np.uint8 for o in outs)
    assert all(o["mask"] is sample["mask"] for o in outs)
    assert sum(not np.array_equal(o["image"], sample["image"]) for o in outs) >= 6


def test_normalisation_uses_imagenet_mean_std():
    image = np.full((2, 3, 3), 200, np.uint8)
    t = to_tensor(image)
    assert t.shape == (3, 2, 3)
    torch.testing.assert_close(t[:, 0, 0], torch.tensor((200 - MEAN) / STD))


def test_train_set_is_deterministic_per_seed_and_epoch():
    ds = SyntheticDataset("train", length=4, size=48)
    pipe = train_transforms((32, 32), None, (0.75, 1.5))
    a, b = TrainSet(ds, pipe, seed=1), TrainSet(ds, pipe, seed=1)
    torch.testing.assert_close(a[2][0], b[2][0])
    b.epoch = 1
    assert not torch.equal(a[2][0], b[2][0])


def test_resumable_sampler_skips_the_consumed_part_of_an_epoch():
    ds = list(range(10))
    full = ResumableSampler(ds, seed=5)
    full.set_epoch(3)
    resumed = ResumableSampler(ds, seed=5)
    resumed.set_epoch(3, skip=4)
    assert list(resumed) == list(full)[4:] and len(resumed) == 6
    ranks = [ResumableSampler(ds, num_replicas=2, rank=r, seed=5) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(0)
    assert sorted(list(ranks[0]) + list(ranks[1])) == list(range(10))

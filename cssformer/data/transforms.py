"""Training and test transforms, on image and mask together, as mmsegmentation's pipelines do them.

A sample is ``{"image": (H, W, 3) uint8, "mask": (H, W) uint8, ...}``; every random transform takes
an explicit ``numpy.random.Generator`` so that a sample's augmentation depends only on the seed it
is given (exact resume, same result with any number of loader workers).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from cssformer.data.base import IGNORE_INDEX

MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)


def resize(sample: dict, height: int, width: int) -> dict:
    """Bilinear for the image, nearest for the mask."""
    if sample["image"].shape[:2] == (height, width):
        return sample
    image = Image.fromarray(sample["image"]).resize((width, height), Image.BILINEAR)
    out = dict(sample, image=np.asarray(image))
    if "mask" in sample:
        out["mask"] = np.asarray(Image.fromarray(sample["mask"]).resize((width, height), Image.NEAREST))
    return out


def rescale_size(height: int, width: int, scale: Sequence[int] | None, ratio: float = 1.0) -> tuple[int, int]:
    """mmseg's keep-ratio rescale: the largest size with long side <= max(scale) * ratio and short
    side <= min(scale) * ratio; without ``scale`` the image's own size times ``ratio``."""
    if scale is None:
        factor = ratio
    else:
        long_edge, short_edge = max(scale) * ratio, min(scale) * ratio
        factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


class RandomResize:
    """Rescales (keeping the aspect ratio) to ``scale`` times a ratio drawn from ``ratio_range``."""

    def __init__(self, scale: Sequence[int] | None, ratio_range: Sequence[float] = (0.5, 2.0)):
        self.scale, self.ratio_range = scale, tuple(ratio_range)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        ratio = rng.uniform(*self.ratio_range)
        h, w = sample["image"].shape[:2]
        return resize(sample, *rescale_size(h, w, self.scale, ratio))


class RandomCrop:
    """A random ``(height, width)`` crop; with ``cat_max_ratio < 1`` it retries (10 times, as mmseg)
    while one class covers more than that share of the labelled pixels of the crop."""

    def __init__(self, crop_size: Sequence[int], cat_max_ratio: float = 0.75, tries: int = 10):
        self.crop_h, self.crop_w = crop_size
        self.cat_max_ratio, self.tries = cat_max_ratio, tries

    def _window(self, h, w, rng):
        y = int(rng.integers(0, max(h - self.crop_h, 0) + 1))
        x = int(rng.integers(0, max(w - self.crop_w, 0) + 1))
        return y, min(y + self.crop_h, h), x, min(x + self.crop_w, w)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        h, w = sample["image"].shape[:2]
        y0, y1, x0, x1 = self._window(h, w, rng)
        if self.cat_max_ratio < 1.0:
            for _ in range(self.tries):
                labels = sample["mask"][y0:y1, x0:x1]
                _, counts = np.unique(labels[labels != IGNORE_INDEX], return_counts=True)
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                y0, y1, x0, x1 = self._window(h, w, rng)
        return dict(sample, image=sample["image"][y0:y1, x0:x1], mask=sample["mask"][y0:y1, x0:x1])


class RandomFlip:
    """Horizontal flip with probability ``prob``."""

    def __init__(self, prob: float = 0.5):
        self.prob = prob

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.prob:
            return sample
        return dict(sample, image=sample["image"][:, ::-1], mask=sample["mask"][:, ::-1])


class PhotoMetricDistortion:
    """mmseg's PhotoMetricDistortion: random brightness (+-32), contrast (x0.5-1.5, before or after
    the colour changes), saturation (x0.5-1.5) and hue (+-18 degrees of 180), each with p = 0.5."""

    def __init__(self, brightness_delta: int = 32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                 hue_delta: int = 18):
        self.brightness_delta = brightness_delta
        self.contrast_range, self.saturation_range, self.hue_delta = contrast_range, saturation_range, hue_delta

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        img = sample["image"].astype(np.float32)
        if rng.random() < 0.5:
            img = img + rng.uniform(-self.brightness_delta, self.brightness_delta)
        contrast_first = rng.random() < 0.5
        contrast = rng.uniform(*self.contrast_range) if rng.random() < 0.5 else None
        if contrast_first and contrast is not None:
            img = img * contrast
        img = np.clip(img, 0, 255).astype(np.uint8)
        do_sat, do_hue = rng.random() < 0.5, rng.random() < 0.5
        sat, hue = rng.uniform(*self.saturation_range), rng.uniform(-self.hue_delta, self.hue_delta)
        if do_sat or do_hue:
            hsv = np.asarray(Image.fromarray(img).convert("HSV")).astype(np.float32)
            if do_sat:
                hsv[..., 1] = np.clip(hsv[..., 1] * sat, 0, 255)
            if do_hue:  # PIL hue spans 0..255 for 360 degrees; cv2's 18 is out of 180
                hsv[..., 0] = (hsv[..., 0] + hue * 256.0 / 180.0) % 256.0
            channels = [Image.fromarray(hsv[..., i].astype(np.uint8)) for i in range(3)]
            img = np.asarray(Image.merge("HSV", channels).convert("RGB"))
        if not contrast_first and contrast is not None:
            img = np.clip(img.astype(np.float32) * contrast, 0, 255).astype(np.uint8)
        return dict(sample, image=img)


class Pad:
    """Pads bottom/right up to ``size`` (image with 0, mask with the ignore index)."""

    def __init__(self, size: Sequence[int]):
        self.h, self.w = size

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        h, w = sample["image"].shape[:2]
        if h >= self.h and w >= self.w:
            return sample
        ph, pw = max(self.h - h, 0), max(self.w - w, 0)
        image = np.pad(sample["image"], ((0, ph), (0, pw), (0, 0)))
        mask = np.pad(sample["mask"], ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
        return dict(sample, image=image, mask=mask)


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample


def train_transforms(crop_size: Sequence[int], scale: Sequence[int] | None, ratio_range=(0.5, 2.0),
                     cat_max_ratio: float = 0.75, flip_prob: float = 0.5, photometric: bool = True) -> Compose:
    """The mmseg training pipeline: RandomResize -> RandomCrop -> RandomFlip -> PhotoMetricDistortion -> Pad."""
    steps = [RandomResize(scale, ratio_range), RandomCrop(crop_size, cat_max_ratio), RandomFlip(flip_prob)]
    if photometric:
        steps.append(PhotoMetricDistortion())
    steps.append(Pad(crop_size))
    return Compose(steps)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 normalised with the ImageNet mean / std (0-255 scale)."""
    image = (image.astype(np.float32) - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(mask.astype(np.int64))  # a copy: PIL arrays are read-only

"""A built-in synthetic dataset: procedurally drawn, seeded, no files.

Six classes, each a texture in its own hue band (saturation and brightness random per object), on a
low-saturation background. "Large stripes" and "small stripes" share texture and colours and differ
only by object size, so telling them apart needs context at a larger scale than the texture itself.

    0 background      smooth grey-ish colour gradient with mild noise
    1 large stripes   one object, 25-45 % of the image side, red hues
    2 small stripes   several objects, 4-8 % of the side, same stripes and hues as 1
    3 checker         medium objects, 10-22 % of the side, green hues
    4 speckle         medium objects with salt-and-pepper texture, blue hues
    5 flat            objects of any size in one flat colour, yellow hues
"""
from __future__ import annotations

import numpy as np

CLASS_NAMES = ("background", "large stripes", "small stripes", "checker", "speckle", "flat")
PALETTE = ((40, 40, 40), (230, 25, 75), (255, 225, 25), (60, 180, 75), (0, 130, 200), (245, 130, 48))
_SPLITS = {"train": 0, "val": 1}


class SyntheticDataset:
    """``dataset[i]`` -> ``{"image": (S, S, 3) uint8, "mask": (S, S) uint8, "name": str}``; the same
    ``(seed, split, i)`` always draws the same sample."""

    class_names = list(CLASS_NAMES)
    palette = [tuple(c) for c in PALETTE]
    num_classes = len(CLASS_NAMES)
    reduce_zero_label = False

    def __init__(self, split: str = "train", length: int | None = None, size: int = 96, seed: int = 0):
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
        length = length if length is not None else (400 if split == "train" else 48)
        for key, value, lo in (("size", size, 1), ("length", length, 1), ("seed", seed, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < lo:
                raise ValueError(f"synthetic dataset {key}: got {value!r}, expected an int >= {lo}")
        self.split, self.size, self.seed, self.length = split, size, seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], index])
        image, mask = draw_scene(rng, self.size)
        return {"image": image, "mask": mask, "name": f"synthetic_{self.split}_{index:05d}"}


def draw_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = _background(rng, size, yy, xx)
    mask = np.zeros((size, size), np.uint8)
    # big things first, small ones on top
    objects = [(1, 0.25, 0.45)] if rng.random() < 0.85 else []
    objects += [(5, 0.08, 0.3)] * int(rng.integers(0, 3))
    objects += [(3, 0.10, 0.22)] * int(rng.integers(0, 3))
    objects += [(4, 0.10, 0.22)] * int(rng.integers(0, 3))
    objects += [(2, 0.04, 0.08)] * int(rng.integers(2, 7))
    for label, lo, hi in objects:
        radius = rng.uniform(lo, hi) * size
        region = _shape(rng, size, yy, xx, radius)
        image[region] = _texture(rng, label, yy, xx)[region]
        mask[region] = label
    noise = rng.normal(0.0, 6.0, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8), mask


def _background(rng, size, yy, xx) -> np.ndarray:
    a, b = _hsv(rng.uniform(0, 360), rng.uniform(0, 0.25), rng.uniform(0.3, 0.9)), \
        _hsv(rng.uniform(0, 360), rng.uniform(0, 0.25), rng.uniform(0.3, 0.9))
    angle = rng.uniform(0, np.pi)
    t = ((np.cos(angle) * xx + np.sin(angle) * yy) / (size * 1.5) + 0.5)[..., None]
    return a * (1 - t) + b * t


def _shape(rng, size, yy, xx, radius) -> np.ndarray:
    cy, cx = rng.uniform(0, size, 2)
    angle = rng.uniform(0, np.pi)
    u = np.cos(angle) * (xx - cx) + np.sin(angle) * (yy - cy)
    v = -np.sin(angle) * (xx - cx) + np.cos(angle) * (yy - cy)
    aspect = rng.uniform(0.6, 1.0)
    if rng.random() < 0.5:  # ellipse
        return (u / radius) ** 2 + (v / (radius * aspect)) ** 2 <= 1.0
    return (np.abs(u) <= radius) & (np.abs(v) <= radius * aspect)  # rotated rectangle


_HUES = {1: 0.0, 2: 0.0, 3: 120.0, 4: 240.0, 5: 60.0}


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (hue in degrees, s and v in 0..1) as RGB 0..255."""
    c = v * s
    x = c * (1 - abs((h / 60.0) % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h // 60) % 6]
    return (np.array(rgb) + (v - c)) * 255.0


def _texture(rng, label, yy, xx) -> np.ndarray:
    hue = (_HUES[label] + rng.uniform(-15, 15)) % 360
    sat = rng.uniform(0.55, 1.0)
    c1, c2 = _hsv(hue, sat, rng.uniform(0.75, 1.0)), _hsv(hue, sat, rng.uniform(0.25, 0.5))
    if label in (1, 2):  # stripes: period 5-8 px, any orientation
        angle, period = rng.uniform(0, np.pi), rng.uniform(5, 8)
        on = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 2 * np.pi / period) > 0
    elif label == 3:  # checker: cells of 3-5 px
        cell = rng.uniform(3, 5)
        on = (np.floor(xx / cell) + np.floor(yy / cell)) % 2 == 0
    elif label == 4:  # speckle
        on = rng.random(xx.shape) < 0.5
    else:  # flat
        on = np.ones(xx.shape, bool)
    return np.where(on[..., None], c1, c2)

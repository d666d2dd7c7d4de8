"""Test-time inference: whole image or sliding window, multi-scale + flip, as mmseg does it.

Every function takes normalised images ``(1, 3, H, W)`` and a model in eval mode that maps
``(N, 3, h, w) -> (N, K, h, w)`` logits. :class:`TestOptions` says how: one name per option from the
command line to the model (``--mode`` / config ``test.mode`` / ``predict_mask(mode=...)``, and so on).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from cssformer.data.transforms import rescale_size
from cssformer.sizes import as_hw

MODES = ("whole", "slide")


@dataclass(frozen=True)
class TestOptions:
    """How an image is inferred at test time. The same names everywhere: the flags of ``cssformer eval`` /
    ``predict`` (``--mode``, ``--crop``, ``--stride``, ``--ratios``, ``--flip``), the keys of a config's
    ``test`` section (``test: {mode: slide, ratios: [0.5, 1.0]}``, stored with the config in every
    checkpoint) and the keywords of :func:`cssformer.predict_mask`.

    ``mode``: ``whole`` image or ``slide`` (windows of ``crop`` every ``stride``, ``(h, w)``);
    ``ratios``: multi-scale test, the image rescaled to ``scale`` (or its own size) times each ratio;
    ``flip``: also the horizontally flipped image; ``scale``: the config's ``resize_scale`` (the
    ``(long, short)`` size the test resize aims at, ``None``: the image's own size). Invalid values raise
    ``ValueError`` naming the option."""

    __test__ = False  # not a pytest test class

    mode: str = "whole"
    crop: Optional[tuple[int, int]] = None
    stride: Optional[tuple[int, int]] = None
    ratios: tuple[float, ...] = (1.0,)
    flip: bool = False
    scale: Optional[tuple[int, int]] = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"test.mode must be whole or slide, got {self.mode!r}")
        for name in ("crop", "stride"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, as_hw(value, f"test.{name}", lo=1))
        if self.mode == "slide" and (self.crop is None or self.stride is None):
            raise ValueError("test.mode slide needs test.crop and test.stride (the sliding window and its step)")
        ratios = self.ratios
        if not isinstance(ratios, (list, tuple)) or not ratios or not all(
                isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) and 0 < r <= 16
                for r in ratios):
            raise ValueError(f"test.ratios must be a non-empty list of ratios in (0, 16], got {ratios!r}")
        object.__setattr__(self, "ratios", tuple(float(r) for r in ratios))
        if not isinstance(self.flip, bool):
            raise ValueError(f"test.flip must be true or false, got {self.flip!r}")
        if self.scale is not None:
            object.__setattr__(self, "scale", tuple(int(v) for v in self.scale))

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "TestOptions":
        """The options of a resolved config: its ``test`` section and ``resize_scale``."""
        return cls(**cfg["test"], scale=cfg["resize_scale"])

    def replace(self, **changes: Any) -> "TestOptions":
        """A copy with ``changes``; an unknown name raises ``ValueError`` naming the valid ones."""
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise ValueError(f"test options: unknown {', '.join(unknown)}; expected some of {', '.join(names)}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """Plain values (lists for tuples), as JSON and YAML hold them."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@torch.no_grad()
def slide_logits(model, image: torch.Tensor, crop: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """mmseg's ``slide_inference``: windows of ``crop`` every ``stride`` (the last one flush with the
    border), logits averaged where windows overlap."""
    _, _, h, w = image.shape
    crop_h, crop_w = crop
    stride_h, stride_w = stride
    grids_h = max(h - crop_h + stride_h - 1, 0) // stride_h + 1
    grids_w = max(w - crop_w + stride_w - 1, 0) // stride_w + 1
    total, count = None, image.new_zeros((1, 1, h, w))
    for i in range(grids_h):
        for j in range(grids_w):
            y2, x2 = min(i * stride_h + crop_h, h), min(j * stride_w + crop_w, w)
            y1, x1 = max(y2 - crop_h, 0), max(x2 - crop_w, 0)
            logits = model(image[:, :, y1:y2, x1:x2]).float()
            if total is None:
                total = image.new_zeros((image.shape[0], logits.shape[1], h, w), dtype=torch.float32)
            total[:, :, y1:y2, x1:x2] += logits
            count[:, :, y1:y2, x1:x2] += 1
    return total / count


@torch.no_grad()
def logits_at(model, image: torch.Tensor, mode: str = "whole", crop=None, stride=None) -> torch.Tensor:
    if mode == "slide":
        return slide_logits(model, image, crop, stride)
    return model(image).float()


@torch.no_grad()
def predict_probs(model, image: torch.Tensor, out_size: Sequence[int],
                  options: TestOptions | None = None) -> torch.Tensor:
    """Class probabilities ``(1, K, *out_size)`` as ``options`` say (default: whole image, one scale): for
    each ratio the image is rescaled (keep-ratio, to ``scale`` times the ratio, or its own size times the
    ratio when ``scale`` is None), optionally also flipped; logits are resized back to ``out_size``,
    softmaxed and averaged (mmseg's TTA)."""
    options = options or TestOptions()
    mode, crop, stride, scale, ratios, flip = (options.mode, options.crop, options.stride, options.scale,
                                               options.ratios, options.flip)
    _, _, h, w = image.shape
    probs, n = None, 0
    for ratio in ratios:
        size = rescale_size(h, w, scale, ratio)
        scaled = image if size == (h, w) else F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            x = scaled.flip(-1) if flipped else scaled
            logits = logits_at(model, x, mode, crop, stride)
            if flipped:
                logits = logits.flip(-1)
            if tuple(logits.shape[-2:]) != tuple(out_size):
                logits = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)
            p = logits.softmax(1)
            probs = p if probs is None else probs + p
            n += 1
    return probs / n

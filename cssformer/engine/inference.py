"""Test-time inference: whole image or sliding window, multi-scale + flip, as mmseg does it.

Every function takes normalised images ``(1, 3, H, W)`` and a model in eval mode that maps
``(N, 3, h, w) -> (N, K, h, w)`` logits.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from cssformer.data.transforms import rescale_size


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
def predict_probs(model, image: torch.Tensor, out_size: Sequence[int], mode: str = "whole", crop=None,
                  stride=None, scale: Sequence[int] | None = None, ratios: Sequence[float] = (1.0,),
                  flip: bool = False) -> torch.Tensor:
    """Class probabilities ``(1, K, *out_size)``: for each ratio the image is rescaled (keep-ratio, to
    ``scale`` times the ratio, or its own size times the ratio when ``scale`` is None), optionally also
    flipped; logits are resized back to ``out_size``, softmaxed and averaged (mmseg's TTA)."""
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

"""Inference from Python: a checkpoint in, masks out.

```python
import cssformer

model = cssformer.from_checkpoint("work_dirs/cssformer-nano_synthetic/best.pth")   # or a .safetensors file
mask = cssformer.predict_mask(model, "photo.jpg")          # (H, W) class ids, numpy
masks = cssformer.predict_mask(model, ["a.jpg", "b.jpg"])  # a list in, a list out (same sizes batched)
picture = cssformer.predict_overlay(model, "photo.jpg", legend="present")  # (H', W', 3) uint8 with a legend
```
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Union

import numpy as np
import torch

from cssformer.visualisation import colorize, overlay  # noqa: F401 - part of this API

__all__ = ["from_checkpoint", "predict_mask", "predict_overlay", "colorize", "overlay", "labels_from_batch"]

ImageLike = Union[str, Path, np.ndarray, torch.Tensor, "PIL.Image.Image"]  # noqa: F821


def from_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model of a ``.pth`` (``cssformer-train``) or ``.safetensors`` (``cssformer export``) checkpoint,
    in eval mode on ``device``, with these attributes attached:

    ``class_names`` (list of str), ``palette`` (list of ``(r, g, b)``), ``mean`` / ``std`` (per-channel,
    0-255 scale: the model's input is ``(image - mean) / std``), ``crop_size`` (``(H, W)`` it was
    trained at), ``config`` (the training config, defaults filled in) and ``test_options`` (a
    :class:`~cssformer.engine.inference.TestOptions`: whole image or sliding window, ratios, flip: what
    :func:`predict_mask` does).
    """
    from cssformer.data.transforms import MEAN, STD
    from cssformer.engine.config import resolve
    from cssformer.engine.inference import TestOptions
    from cssformer.engine.model_io import class_info, crop_size, load_trained, saved_config

    model, state = load_trained(path, torch.device(device))
    saved = saved_config(state)
    model.config = resolve(saved, {})
    model.class_names, model.palette = class_info(state, model.num_classes)
    model.mean, model.std = [float(v) for v in MEAN], [float(v) for v in STD]
    model.crop_size = crop_size(state)
    model.test_options = TestOptions.from_config(model.config)
    return model


PICTURE = "a path, a PIL image, an (H, W, 3) uint8 array or tensor"
NORMALISED_LIMIT = 3.0  # |(pixel - mean) / std| <= 2.7 for 0..255 pixels and the ImageNet mean / std


def _empty(shape, what: str) -> None:
    if 0 in tuple(shape):
        raise ValueError(f"image: got {what} of shape {tuple(shape)} (no pixels), expected an image at least 1x1")


def _as_input(image) -> tuple[torch.Tensor, np.ndarray | None]:
    """One image -> (normalised ``(3, H, W)`` float tensor, the ``(H, W, 3)`` uint8 picture or None)."""
    from PIL import Image

    from cssformer.data.io import read_image
    from cssformer.data.transforms import to_tensor

    if isinstance(image, (str, Path)):
        image = read_image(image)
    elif isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"), dtype=np.uint8)
    elif isinstance(image, torch.Tensor):
        if image.dtype == torch.uint8 and image.dim() == 3 and image.shape[-1] == 3:
            image = image.cpu().numpy()
        elif image.is_floating_point() and image.dim() == 3 and image.shape[0] == 3:
            _empty(image.shape, "a float tensor")
            return _check_normalised(image), None
        else:
            raise ValueError(f"image: got a {image.dtype} tensor of shape {tuple(image.shape)}, expected (H, W, 3) "
                             "uint8, a normalised float (3, H, W), or a batch of either (B, ...)")
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        got = f"array {image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image: got {got}, expected {PICTURE}, a normalised float tensor (3, H, W), "
                         "or a list or (B, ...) batch of these")
    _empty(image.shape, "an array")
    return to_tensor(image), image


def _check_normalised(x: torch.Tensor) -> torch.Tensor:
    """A float image tensor is the model's input, ``(pixel - model.mean) / model.std``: values far outside
    that range are pixel values (0..255 or so), refused rather than read as normalised."""
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("image: the float tensor holds NaN or infinite values")
    if lo < -NORMALISED_LIMIT or hi > NORMALISED_LIMIT:
        raise ValueError(f"image: a float tensor with values in {lo:.4g}..{hi:.4g} is not normalised (expected "
                         f"(pixel - model.mean) / model.std, within about -2.2..2.7); for 0..255 pixels pass a "
                         "uint8 (H, W, 3) array or tensor, or normalise first")
    return x


def _as_images(images) -> tuple[list, str]:
    """(the images one by one, how the result is returned: ``one``, ``list`` or ``stack``)."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images: got an empty list, expected at least one image")
        return list(images), "list"
    batched = (isinstance(images, torch.Tensor) and images.dim() == 4) or \
        (isinstance(images, np.ndarray) and images.ndim == 4)
    if batched:
        if len(images) == 0:
            raise ValueError(f"images: got an empty batch of shape {tuple(images.shape)}")
        return list(images), "stack"
    return [images], "one"


def test_options_for(model: torch.nn.Module, options: dict | None = None):
    """``model.test_options`` (whole image if it has none) with ``options`` applied: a
    :class:`~cssformer.engine.inference.TestOptions`, which refuses unknown names and bad values (``mode``
    other than whole / slide, ratios that are not finite and > 0, bad crop / stride sizes) with a
    ``ValueError`` naming the option. A single number for ``ratios`` is one ratio."""
    from cssformer.engine.inference import TestOptions

    options = dict(options or {})
    ratios = options.get("ratios")
    if isinstance(ratios, (int, float)) and not isinstance(ratios, bool):
        options["ratios"] = (ratios,)
    return (getattr(model, "test_options", None) or TestOptions()).replace(**options)


def label_dtype(num_classes: int) -> np.dtype:
    """The dtype of class-id masks: uint8 up to 256 classes, else int32."""
    return np.dtype(np.uint8 if num_classes <= 256 else np.int32)


def labels_from_batch(model: torch.nn.Module, batch: torch.Tensor, options, forward=None,
                      amp: str | None = None) -> np.ndarray:
    """``(B, H, W)`` class ids (:func:`label_dtype`) of a normalised ``(B, 3, H, W)`` batch: the argmax of
    the test-time class probabilities. ``forward``: the callable to run (a compiled model, say; default
    ``model``); ``amp``: autocast precision (``bf16`` / ``fp16``; default none)."""
    from cssformer.engine import runtime
    from cssformer.engine.inference import predict_probs

    device = next(model.parameters()).device
    with torch.no_grad(), runtime.autocast(device, amp or "fp32"):
        probs = predict_probs(model if forward is None else forward, batch.to(device), batch.shape[-2:], options)
    return probs.argmax(1).cpu().numpy().astype(label_dtype(model.num_classes))


def _predict(model, items: list, options, batch_size: int) -> list[np.ndarray]:
    """Masks of ``items`` (normalised (3, H, W) tensors), consecutive same-size ones batched."""
    masks, group = [], []

    def flush():
        if group:
            masks.extend(labels_from_batch(model, torch.stack(group), options))
            group.clear()

    for x in items:
        if group and (x.shape != group[0].shape or len(group) == batch_size):
            flush()
        group.append(x)
    flush()
    return masks


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: got {batch_size!r}, expected an integer >= 1")
    return batch_size


def _result(results: list, kind: str):
    if kind == "one":
        return results[0]
    if kind == "stack":
        return np.stack(results)
    return results


def predict_mask(model: torch.nn.Module, image: ImageLike | list, batch_size: int = 8, **options):
    """The ``(H, W)`` class-id mask of an image (uint8 up to 256 classes, else int32); of a list of images
    a list of masks; of a ``(B, ...)`` batch a ``(B, H, W)`` array (one mask per image).

    An image: a file path, a PIL image, an ``(H, W, 3)`` uint8 array (RGB) or tensor, or a float tensor
    ``(3, H, W)`` already normalised (the input of ``model.forward``: ``(pixel - model.mean) / model.std``;
    a float tensor of 0..255 values is refused). A batch: ``(B, H, W, 3)`` uint8 or ``(B, 3, H, W)``
    normalised float. Images of the same size go through the model together, ``batch_size`` at a time.
    Inference follows ``model.test_options`` (the checkpoint's config: whole image or sliding window,
    test scales, flip); keyword ``options`` override them (``mode``, ``crop``, ``stride``, ``scale``,
    ``ratios``, ``flip``: the names of :class:`~cssformer.engine.inference.TestOptions`;
    an unknown name or a bad value raises ``ValueError``).
    """
    items, kind = _as_images(image)
    options, batch_size = test_options_for(model, options), _check_batch_size(batch_size)
    return _result(_predict(model, [_as_input(item)[0] for item in items], options, batch_size), kind)


def predict_overlay(model: torch.nn.Module, image: ImageLike | list, alpha: float = 0.5, legend: str = "none",
                    batch_size: int = 8, **options):
    """``(H, W, 3)`` uint8: the predicted mask in the checkpoint's palette blended over the image with
    opacity ``alpha``; with ``legend="present"`` (or ``"all"``) a legend of the classes (names and
    colours) below it. ``image`` as :func:`predict_mask` (a list gives a list, a batch a stacked array),
    but not normalised tensors (there is no picture to draw on)."""
    from cssformer.visualisation import LEGEND_CHOICES, pad_to, with_legend

    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha: got {alpha!r}, expected a value within 0..1")
    if legend not in LEGEND_CHOICES:
        raise ValueError(f"legend: got {legend!r}, expected one of {', '.join(LEGEND_CHOICES)}")
    items, kind = _as_images(image)
    options, batch_size = test_options_for(model, options), _check_batch_size(batch_size)
    inputs = [_as_input(item) for item in items]
    if any(picture is None for _, picture in inputs):
        raise ValueError(f"image: predict_overlay needs the picture ({PICTURE}), not a normalised tensor")
    masks = _predict(model, [x for x, _ in inputs], options, batch_size)
    pictures = [with_legend(overlay(picture, colorize(mask, model.palette), alpha), mask, model.class_names,
                            model.palette, legend) for (_, picture), mask in zip(inputs, masks)]
    if kind == "stack":  # legends of different lengths: white below the shorter ones, one array
        height, width = max(p.shape[0] for p in pictures), max(p.shape[1] for p in pictures)
        pictures = [pad_to(p, height, width) for p in pictures]
    return _result(pictures, kind)

"""Inference from Python: a checkpoint in, masks out.

```python
import cssformer

model = cssformer.from_checkpoint("work_dirs/cssformer-nano_synthetic/best.pth")   # or a .safetensors file
mask = cssformer.predict_mask(model, "photo.jpg")          # (H, W) class ids, numpy
picture = cssformer.predict_overlay(model, "photo.jpg")    # (H, W, 3) uint8: the mask in colour over the image
```
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch

__all__ = ["from_checkpoint", "predict_mask", "predict_overlay", "colorize", "overlay"]

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


def _as_input(image: ImageLike) -> tuple[torch.Tensor, np.ndarray | None]:
    """(normalised ``(1, 3, H, W)`` float tensor, the ``(H, W, 3)`` uint8 image when there is one)."""
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
        elif image.is_floating_point() and image.dim() in (3, 4) and image.shape[-3] == 3:
            return (image if image.dim() == 4 else image[None]), None   # already normalised, as model.forward
        else:
            raise ValueError(f"image: got a {image.dtype} tensor of shape {tuple(image.shape)}, expected (H, W, 3) "
                             "uint8 or a normalised float (3, H, W) / (1, 3, H, W)")
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        got = f"array {image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image: got {got}, expected a path, a PIL image, an (H, W, 3) uint8 array or a tensor")
    return to_tensor(image)[None], image


def _labels(model: torch.nn.Module, x: torch.Tensor, options: dict | None) -> np.ndarray:
    from cssformer.engine.inference import TestOptions, predict_probs

    options = (getattr(model, "test_options", None) or TestOptions()).replace(**(options or {}))
    device = next(model.parameters()).device
    with torch.no_grad():
        probs = predict_probs(model, x.to(device), x.shape[-2:], options)
    labels = probs.argmax(1)[0].cpu().numpy()
    return labels.astype(np.uint8 if model.num_classes <= 256 else np.int32)


def predict_mask(model: torch.nn.Module, image: ImageLike, **options) -> np.ndarray:
    """The ``(H, W)`` class-id mask of one image (uint8 up to 256 classes, else int32).

    ``image``: a file path, a PIL image, an ``(H, W, 3)`` uint8 array (RGB), an ``(H, W, 3)`` uint8
    tensor, or a float tensor ``(3, H, W)`` / ``(1, 3, H, W)`` already normalised (the input of
    ``model.forward``). Inference follows ``model.test_options`` (the checkpoint's config: whole image
    or sliding window, test ratios, flip); keyword ``options`` override them (``mode``, ``crop``,
    ``stride``, ``scale``, ``ratios``, ``flip``: the names of :class:`~cssformer.engine.inference.TestOptions`;
    an unknown name or a bad value raises ``ValueError``).
    """
    x, _ = _as_input(image)
    return _labels(model, x, options)


def predict_overlay(model: torch.nn.Module, image: ImageLike, alpha: float = 0.5, **options) -> np.ndarray:
    """``(H, W, 3)`` uint8: the predicted mask in the checkpoint's palette blended over the image with
    opacity ``alpha``. ``image`` as :func:`predict_mask`, but not a normalised tensor (there is no
    picture to draw on)."""
    x, picture = _as_input(image)
    if picture is None:
        raise ValueError("image: predict_overlay needs the picture (a path, PIL image or uint8 array), "
                         "not a normalised tensor")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: got {alpha}, expected a value within 0..1")
    return overlay(picture, colorize(_labels(model, x, options), model.palette), alpha)


def colorize(labels: np.ndarray, palette) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours; 255 (ignore) stays black."""
    table = np.zeros((256, 3), np.uint8)
    table[: len(palette)] = np.asarray(palette, np.uint8)[:256]
    return table[labels]


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    return (image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).round().astype(np.uint8)

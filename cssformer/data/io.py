"""Reading images and label maps, with errors that name the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cssformer.errors import UsageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DatasetError(UsageError, ValueError):
    """A dataset that cannot be used as it is (missing folder, unpaired image, bad label, bad file)."""


def read_image(path: str | Path) -> np.ndarray:
    """An RGB image as a (H, W, 3) uint8 array."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DatasetError(f"cannot read image {path}: {err}") from None


def read_mask(path: str | Path) -> np.ndarray:
    """A label map as a (H, W) uint8 array: the pixel values of a single-channel (L, P, I;16) PNG."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "1"):
                raise DatasetError(f"mask {path} has mode {im.mode!r}: expected a single-channel label image "
                                   "(one class index per pixel, e.g. an 8-bit grey or palette PNG)")
            mask = np.asarray(im)
    except FileNotFoundError:
        raise DatasetError(f"mask file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(f"cannot read mask {path}: {err}") from None
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise DatasetError(f"mask {path} holds values outside 0..255 (min {mask.min()}, max {mask.max()})")
        mask = mask.astype(np.uint8)
    return mask


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` or below it, sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())

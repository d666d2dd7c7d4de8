"""Reading images and label maps, with errors that name the file."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cssformer.errors import UsageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MAX_PIXELS = 64 * 2**20  # 64 Mpixels (e.g. 8192 x 8192): larger files are refused before they are decoded


class DatasetError(UsageError, ValueError):
    """A dataset that cannot be used as it is (missing folder, unpaired image, bad label, bad file)."""


def _open(path: str | Path, what: str) -> Image.Image:
    """``Image.open`` with the size checked from the header, before anything is decoded."""
    try:
        with warnings.catch_warnings():  # the size is checked below, against a lower limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except FileNotFoundError:
        raise DatasetError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise DatasetError(f"{what} {path} is a folder: expected an image file") from None
    except Image.DecompressionBombError as err:
        raise DatasetError(f"{what} {path} is too large to decode ({err}); expected at most "
                           f"{MAX_PIXELS // 2**20} Mpixels") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DatasetError(f"cannot read {what} {path}: {err}") from None
    width, height = im.size
    if width * height > MAX_PIXELS:
        im.close()
        raise DatasetError(f"{what} {path} is {width}x{height} ({width * height / 2**20:.0f} Mpixels): expected at "
                           f"most {MAX_PIXELS // 2**20} Mpixels")
    return im


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file from its header."""
    with _open(path, "image") as im:
        return im.size


def read_image(path: str | Path) -> np.ndarray:
    """An RGB image as a (H, W, 3) uint8 array."""
    with _open(path, "image") as im:
        try:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError, SyntaxError) as err:
            raise DatasetError(f"cannot read image {path}: {err}") from None


def read_mask(path: str | Path) -> np.ndarray:
    """A label map as a (H, W) uint8 array: the pixel values of a single-channel (L, P, I;16) PNG."""
    with _open(path, "mask") as im:
        if im.mode not in ("L", "P", "I", "I;16", "1"):
            raise DatasetError(f"mask {path} has mode {im.mode!r}: expected a single-channel label image "
                               "(one class index per pixel, e.g. an 8-bit grey or palette PNG)")
        try:
            mask = np.asarray(im)
        except (OSError, ValueError, SyntaxError) as err:
            raise DatasetError(f"cannot read mask {path}: {err}") from None
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise DatasetError(f"mask {path} holds values outside 0..255 (min {mask.min()}, max {mask.max()})")
        mask = mask.astype(np.uint8)
    return mask


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` or below it, sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())

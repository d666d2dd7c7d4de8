"""Reading images and label maps, with errors that name the file.

Images are decoded by their real bit depth: 8-bit as they are, 16-bit (``I;16``, e.g. a 16-bit grey PNG)
scaled to 0..255 (``value >> 8``), 32-bit float (``F``, e.g. a float TIFF) with values in 0..1 times
255; other integer or float ranges are refused with one line. The EXIF orientation tag (photos from
phones and cameras) is applied to images and masks alike, so both are read upright."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cssformer.errors import UsageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MAX_PIXELS = 64 * 2**20  # 64 Mpixels (e.g. 8192 x 8192): larger files are refused before they are decoded


class DatasetError(UsageError, ValueError):
    """A dataset that cannot be used as it is (missing folder, unpaired image, bad label, bad file).

    Raised in a DataLoader worker, it reaches the main process re-built from torch's text ("Caught
    DatasetError in DataLoader worker process 1. Original Traceback ..."): the message is then the
    original one (which names the file)."""

    def __init__(self, message: str = ""):
        text = str(message)
        if text.startswith("Caught DatasetError in DataLoader worker") and "Original Traceback" in text:
            last = [line for line in text.splitlines() if line.strip()][-1]
            text = last.split("DatasetError: ", 1)[-1] + " (in a data loader worker)"
        super().__init__(text)


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


_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block: read the pixels as stored
        return 1


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file from its header, after its EXIF orientation."""
    with _open(path, "image") as im:
        width, height = im.size
        return (height, width) if _orientation(im) in _TRANSPOSED else (width, height)


def _upright(im: Image.Image) -> Image.Image:
    return ImageOps.exif_transpose(im) if _orientation(im) != 1 else im


def _to_rgb(im: Image.Image, path) -> np.ndarray:
    """8-bit RGB of any PIL mode, by the mode's real bit depth (see the module's docstring)."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        values = np.asarray(im)
        if im.mode == "F":
            if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
                raise DatasetError(f"image {path} is a floating-point image with values in {np.nanmin(values):g}.."
                                   f"{np.nanmax(values):g}: expected 0..1 (or an 8- or 16-bit image)")
            grey = np.round(values.astype(np.float64) * 255)
        else:
            if values.size and (values.min() < 0 or values.max() > 65535):
                raise DatasetError(f"image {path} is a 32-bit integer image with values in {values.min()}.."
                                   f"{values.max()}: expected an 8- or 16-bit image")
            grey = values.astype(np.int64) >> 8  # 16-bit: 0..65535 -> 0..255
        return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """An RGB image as a (H, W, 3) uint8 array, upright (EXIF orientation applied)."""
    with _open(path, "image") as im:
        try:
            return _to_rgb(_upright(im), path)
        except (OSError, ValueError, SyntaxError) as err:
            if isinstance(err, DatasetError):
                raise
            raise DatasetError(f"cannot read image {path}: {err}") from None


def read_mask(path: str | Path) -> np.ndarray:
    """A label map as a (H, W) uint8 array: the pixel values of a single-channel (L, P, I;16) PNG."""
    with _open(path, "mask") as im:
        if im.mode not in ("L", "P", "I", "I;16", "1"):
            raise DatasetError(f"mask {path} has mode {im.mode!r}: expected a single-channel label image "
                               "(one class index per pixel, e.g. an 8-bit grey or palette PNG)")
        try:
            mask = np.asarray(_upright(im))  # a mask with an EXIF orientation is turned like its image
        except (OSError, ValueError, SyntaxError) as err:
            raise DatasetError(f"cannot read mask {path}: {err}") from None
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise DatasetError(f"mask {path} holds values outside 0..255 (min {mask.min()}, max {mask.max()})")
        mask = mask.astype(np.uint8)
    return mask


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` or below it, sorted; a symbolic link to nothing is an error
    naming it (a copied dataset whose links broke)."""
    found = []
    for p in folder.rglob("*"):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if p.is_file():
            found.append(p)
        elif p.is_symlink() and not p.exists():
            raise DatasetError(f"image {p} is a symbolic link to {os.readlink(p)}, which does not exist: expected "
                               "an image file (fix or remove the link)")
    return sorted(found)

"""A plain folder dataset: ``images/`` + ``masks/`` (optionally split into ``train/`` and ``val/``
sub-folders), masks matched to images by file name (``masks/<name>.png``), class names from an
optional ``classes.txt`` (one per line) and colours from an optional ``palette.txt`` beside it (one
``R G B`` or ``#rrggbb`` per line, in class order)."""
from __future__ import annotations

from pathlib import Path

from cssformer.data.classes import PALETTE_FILE, read_palette_file
from cssformer.data.base import IGNORE_INDEX, SegmentationDataset, pair_by_stem
from cssformer.data.io import DatasetError, list_images, read_mask


def folder_dataset(root: str | Path, split: str, num_classes: int | None = None) -> SegmentationDataset:
    """``root/images[/split]`` + ``root/masks[/split]``. Without split sub-folders both splits are the
    whole folder. Classes: ``root/classes.txt``, else ``num_classes``, else the largest label + 1."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    image_dir, mask_dir = root / "images", root / "masks"
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DatasetError(f"folder dataset {root} has no {folder.name}/ folder (expected images/ and masks/)")
    if (image_dir / split).is_dir():
        image_dir, mask_dir = image_dir / split, mask_dir / split
    elif any((image_dir / s).is_dir() for s in ("train", "val")):
        raise DatasetError(f"folder dataset {root} has split folders but no {image_dir / split}")
    images = list_images(image_dir)
    if not images:
        raise DatasetError(f"no images in {image_dir}")
    pairs = pair_by_stem(images, mask_dir, image_dir)
    names = _class_names(root, pairs, num_classes)
    palette = read_palette_file(root / PALETTE_FILE, len(names)) if (root / PALETTE_FILE).is_file() else None
    return SegmentationDataset(pairs, names, palette, root=root)


def _class_names(root: Path, pairs, num_classes: int | None) -> list[str]:
    names_file = root / "classes.txt"
    if names_file.is_file():
        try:
            text = names_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DatasetError(f"{names_file} is not UTF-8 text (byte {err.start}): expected one class name per "
                               "line") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
        if not names:
            raise DatasetError(f"{names_file} lists no class names")
        if num_classes is not None and num_classes != len(names):
            raise DatasetError(f"{names_file} lists {len(names)} classes but num_classes is {num_classes}")
        return names
    if num_classes is None:  # no names: the labels tell how many classes there are
        top = 0
        for _, mask_path in pairs:
            mask = read_mask(mask_path)
            labels = mask[mask != IGNORE_INDEX]
            top = max(top, int(labels.max()) if labels.size else 0)
        num_classes = top + 1
    return [str(i) for i in range(num_classes)]

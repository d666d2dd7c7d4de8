"""A segmentation dataset = a list of (image file, mask file) pairs + class names + palette."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from cssformer.data.classes import generated_palette
from cssformer.data.io import DatasetError, read_image, read_mask

IGNORE_INDEX = 255


class SegmentationDataset:
    """``dataset[i]`` -> ``{"image": (H, W, 3) uint8, "mask": (H, W) uint8, "name": str}``.

    ``reduce_zero_label``: label 0 means "other / unlabelled" in the files (ADE20K, PASCAL Context):
    it becomes the ignore index and every other label moves down by one, as mmseg does. Labels are
    checked on load: anything outside ``0..num_classes-1`` other than 255 is an error naming the file.
    """

    def __init__(self, pairs: Sequence[tuple[Path, Path]], class_names: Sequence[str],
                 palette: Sequence[tuple[int, int, int]] | None = None, reduce_zero_label: bool = False,
                 root: str | Path = ""):
        if not pairs:
            raise DatasetError(f"no image/mask pairs found in {root}")
        self.pairs = [(Path(i), Path(m)) for i, m in pairs]
        self.class_names = list(class_names)
        repeated = sorted({n for n in self.class_names if self.class_names.count(n) > 1})
        if repeated:
            raise DatasetError(f"class names of {root or 'the dataset'} repeat {', '.join(map(repr, repeated))}: "
                               "expected one name per class (the per-class results are keyed by name)")
        self.num_classes = len(self.class_names)
        self.palette = [tuple(c) for c in (palette or generated_palette(self.num_classes))]
        self.reduce_zero_label = reduce_zero_label
        self.root = Path(root)

    def __len__(self) -> int:
        return len(self.pairs)

    def load_mask(self, index: int) -> np.ndarray:
        path = self.pairs[index][1]
        mask = read_mask(path)
        if self.reduce_zero_label:
            mask = mask.copy()
            mask[mask == 0] = IGNORE_INDEX
            mask = mask - 1
            mask[mask == IGNORE_INDEX - 1] = IGNORE_INDEX
        bad = (mask >= self.num_classes) & (mask != IGNORE_INDEX)
        if bad.any():
            values = sorted(int(v) for v in np.unique(mask[bad]))
            if self.reduce_zero_label:
                values = [v + 1 for v in values]
            raise DatasetError(
                f"mask {path} holds labels {values[:8]} outside the {self.num_classes} classes "
                f"(expected 0..{self.num_classes - 1 + int(self.reduce_zero_label)}"
                f"{' with 0 = ignored' if self.reduce_zero_label else ''}, or {IGNORE_INDEX} = ignore)")
        return mask

    def check(self) -> None:
        """Reads every mask (labels checked) and every image's header (size): a bad file is an error now,
        not at the first evaluation of a training run."""
        from cssformer.data.io import image_size

        for index, (image_path, mask_path) in enumerate(self.pairs):
            mask = self.load_mask(index)
            width, height = image_size(image_path)
            if (height, width) != mask.shape:
                raise DatasetError(f"image {image_path} is {width}x{height} but its mask {mask_path} is "
                                   f"{mask.shape[1]}x{mask.shape[0]}")

    def __getitem__(self, index: int) -> dict:
        image_path = self.pairs[index][0]
        image = read_image(image_path)
        mask = self.load_mask(index)
        if image.shape[:2] != mask.shape:
            raise DatasetError(f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its mask "
                               f"{self.pairs[index][1]} is {mask.shape[1]}x{mask.shape[0]}")
        return {"image": image, "mask": mask, "name": image_path.stem}


def pair_by_stem(images: Sequence[Path], mask_dir: Path, image_dir: Path, image_suffix: str = "",
                 mask_suffix: str = ".png") -> list[tuple[Path, Path]]:
    """Pairs each image with ``mask_dir / <relative path minus image_suffix> + mask_suffix``; an
    image without a mask is an error naming both files."""
    pairs, owner = [], {}
    for image in images:
        rel = image.relative_to(image_dir)
        stem = rel.name[: -len(image_suffix)] if image_suffix and rel.name.endswith(image_suffix) else rel.stem
        mask = mask_dir / rel.parent / (stem + mask_suffix)
        if not mask.is_file():
            if mask.is_symlink():
                raise DatasetError(f"image {image} has no mask: {mask} is a symbolic link to {os.readlink(mask)}, "
                                   "which does not exist")
            raise DatasetError(f"image {image} has no mask: expected {mask}")
        if mask in owner:
            raise DatasetError(f"images {owner[mask]} and {image} both pair with the mask {mask}: expected one image "
                               "per mask (remove or rename one)")
        owner[mask] = image
        pairs.append((image, mask))
    return pairs

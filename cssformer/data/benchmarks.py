"""The paper's four benchmarks, in the folder layouts mmsegmentation uses (see docs/datasets.md).

Each function takes the dataset root and a split (``train`` or ``val``) and returns a
``SegmentationDataset``. Split names of the layouts (``training``/``validation``, ``train2014``/
``test2014``) are mapped from ``train``/``val``.
"""
from __future__ import annotations

from pathlib import Path

from cssformer.data import classes
from cssformer.data.base import SegmentationDataset, pair_by_stem
from cssformer.data.io import DatasetError


def _folder(root: Path, *parts: str) -> Path:
    path = root.joinpath(*parts)
    if not path.is_dir():
        raise DatasetError(f"dataset folder not found: {path} (root {root}; see docs/datasets.md for the layout)")
    return path


def _images(folder: Path, suffix: str) -> list[Path]:
    images = sorted(p for p in folder.rglob(f"*{suffix}") if p.is_file())
    if not images:
        raise DatasetError(f"no '*{suffix}' images in {folder}")
    return images


def ade20k(root: str | Path, split: str) -> SegmentationDataset:
    """``ADEChallengeData2016/{images,annotations}/{training,validation}``; 150 classes, label 0 ignored."""
    root = Path(root)
    sub = {"train": "training", "val": "validation"}[split]
    image_dir, mask_dir = _folder(root, "images", sub), _folder(root, "annotations", sub)
    pairs = pair_by_stem(_images(image_dir, ".jpg"), mask_dir, image_dir, ".jpg", ".png")
    return SegmentationDataset(pairs, classes.ADE20K, classes.ADE20K_PALETTE, reduce_zero_label=True, root=root)


def cityscapes(root: str | Path, split: str) -> SegmentationDataset:
    """``leftImg8bit/{train,val}/<city>/*_leftImg8bit.png`` + ``gtFine/.../*_gtFine_labelTrainIds.png``
    (made by cityscapesscripts' ``createTrainIdLabelImgs``); 19 classes."""
    root = Path(root)
    image_dir, mask_dir = _folder(root, "leftImg8bit", split), _folder(root, "gtFine", split)
    images = _images(image_dir, "_leftImg8bit.png")
    pairs = pair_by_stem(images, mask_dir, image_dir, "_leftImg8bit.png", "_gtFine_labelTrainIds.png")
    return SegmentationDataset(pairs, classes.CITYSCAPES, classes.CITYSCAPES_PALETTE, root=root)


def pascal_context_59(root: str | Path, split: str) -> SegmentationDataset:
    """``VOC2010/{JPEGImages,SegmentationClassContext}`` + ``ImageSets/SegmentationContext/{train,val}.txt``
    (mmseg's ``pascal_context.py`` converter); 59 classes, label 0 (background) ignored."""
    return _pascal_context(root, split, classes.PASCAL_CONTEXT_59, classes.PASCAL_CONTEXT_59_PALETTE, True)


def pascal_context_60(root: str | Path, split: str) -> SegmentationDataset:
    """The same files as :func:`pascal_context_59`; 60 classes: label 0 (background) is a class."""
    return _pascal_context(root, split, classes.PASCAL_CONTEXT_60, classes.PASCAL_CONTEXT_60_PALETTE, False)


def _pascal_context(root: str | Path, split: str, class_names, palette, reduce_zero_label: bool) -> SegmentationDataset:
    root = Path(root)
    image_dir, mask_dir = _folder(root, "JPEGImages"), _folder(root, "SegmentationClassContext")
    split_file = root / "ImageSets" / "SegmentationContext" / f"{split}.txt"
    if not split_file.is_file():
        raise DatasetError(f"split file not found: {split_file}")
    names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"split file {split_file} lists no images")
    images = []
    for name in names:
        image = image_dir / f"{name}.jpg"
        if not image.is_file():
            raise DatasetError(f"{split_file} lists {name!r} but {image} does not exist")
        images.append(image)
    pairs = pair_by_stem(images, mask_dir, image_dir, ".jpg", ".png")
    return SegmentationDataset(pairs, class_names, palette, reduce_zero_label=reduce_zero_label, root=root)


def coco_stuff_10k(root: str | Path, split: str) -> SegmentationDataset:
    """``coco_stuff10k/{images,annotations}/{train2014,test2014}`` with ``*_labelTrainIds.png`` masks
    (mmseg's ``coco_stuff10k.py`` converter); 171 classes."""
    root = Path(root)
    sub = {"train": "train2014", "val": "test2014"}[split]
    image_dir, mask_dir = _folder(root, "images", sub), _folder(root, "annotations", sub)
    pairs = pair_by_stem(_images(image_dir, ".jpg"), mask_dir, image_dir, ".jpg", "_labelTrainIds.png")
    return SegmentationDataset(pairs, classes.COCO_STUFF, root=root)

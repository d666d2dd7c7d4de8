"""Dataset names -> how to build them and the sizes their standard protocols use."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from cssformer.data import benchmarks
from cssformer.data.folder import folder_dataset
from cssformer.data.io import DatasetError
from cssformer.data.synthetic import SyntheticDataset


@dataclass(frozen=True)
class DatasetSpec:
    """``scale``: the (long, short) size RandomResize and the test resize aim at (None: the image's
    own size); ``crop``: the usual training crop (the sliding-window stride follows from the window:
    ``engine.config.default_stride``)."""
    factory: Callable
    needs_root: bool
    scale: tuple[int, int] | None
    crop: tuple[int, int]
    ratio_range: tuple[float, float] = (0.5, 2.0)


DATASETS: dict[str, DatasetSpec] = {
    "synthetic": DatasetSpec(SyntheticDataset, False, None, (64, 64), (0.75, 1.5)),
    "folder": DatasetSpec(folder_dataset, True, None, (512, 512)),
    "ade20k": DatasetSpec(benchmarks.ade20k, True, (2048, 512), (512, 512)),
    "cityscapes": DatasetSpec(benchmarks.cityscapes, True, (2048, 1024), (768, 768)),  # paper's crop
    "pascal_context_59": DatasetSpec(benchmarks.pascal_context_59, True, (520, 520), (480, 480)),
    "pascal_context_60": DatasetSpec(benchmarks.pascal_context_60, True, (520, 520), (480, 480)),
    "coco_stuff_10k": DatasetSpec(benchmarks.coco_stuff_10k, True, (2048, 512), (512, 512)),
}


def build_dataset(name: str, split: str, root: str | None = None, **options):
    """A dataset by name (see ``DATASETS``) for ``split`` in ``{"train", "val"}``. ``options``:
    ``num_classes`` for ``folder``; ``length``, ``size``, ``seed`` for ``synthetic``; for any dataset
    ``palette``: its class colours (a list of ``[r, g, b]`` or a palette file, see ``read_palette_file``)."""
    palette = options.pop("palette", None)
    dataset = _build(name, split, root, **options)
    if palette is not None:
        from cssformer.data.classes import check_palette, read_palette_file

        if isinstance(palette, str):
            dataset.palette = read_palette_file(palette, dataset.num_classes)
        else:
            dataset.palette = check_palette(palette, dataset.num_classes, "dataset_args.palette")
    return dataset


def _build(name: str, split: str, root: str | None = None, **options):
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    spec = DATASETS[name]
    if name == "synthetic":
        return SyntheticDataset(split, **options)
    if not root:
        raise DatasetError(f"dataset {name!r} needs a root folder (data_root / --data-root)")
    return spec.factory(root, split, **options)

"""Datasets (the paper's benchmarks in mmseg layouts, a plain folder, a built-in synthetic set) and
the training / test transforms."""
from cssformer.data.base import IGNORE_INDEX, SegmentationDataset
from cssformer.data.io import DatasetError, read_image, read_mask
from cssformer.data.registry import DATASETS, build_dataset
from cssformer.data.synthetic import SyntheticDataset

__all__ = ["DATASETS", "DatasetError", "IGNORE_INDEX", "SegmentationDataset", "SyntheticDataset",
           "build_dataset", "read_image", "read_mask"]

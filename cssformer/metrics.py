"""Segmentation metrics as mmsegmentation computes them: one confusion histogram for the whole
dataset (not a mean of per-image scores), then aAcc, mIoU, mAcc and per-class IoU / Acc in percent.

A class that appears neither in the labels nor in the predictions has an undefined IoU (NaN) and is
left out of the means, as in mmseg's ``IoUMetric``.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch


class IoUMetric:
    """Accumulates a ``(num_classes, num_classes)`` confusion matrix over ``update`` calls.

    ``update(pred, target)``: integer class maps of the same shape, e.g. (N, H, W) or (H, W); pixels
    whose target equals ``ignore_index`` are skipped. ``compute()`` returns ``aAcc``, ``mIoU``,
    ``mAcc`` (floats, percent) and ``IoU``, ``Acc`` (lists of per-class percent, NaN where undefined).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.reset()

    def reset(self) -> None:
        # rows: ground truth, columns: prediction
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, pred, target) -> None:
        pred = torch.as_tensor(pred).detach().to("cpu", torch.int64).reshape(-1)
        target = torch.as_tensor(target).detach().to("cpu", torch.int64).reshape(-1)
        if pred.shape != target.shape:
            raise ValueError(f"pred and target must have the same number of pixels, got {pred.numel()} and {target.numel()}")
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        bad = (target < 0) | (target >= self.num_classes)
        if bool(bad.any()):
            raise ValueError(f"target holds labels outside 0..{self.num_classes - 1} (and ignore {self.ignore_index}): "
                             f"{sorted(set(target[bad].unique().tolist()))[:10]}")
        if bool(((pred < 0) | (pred >= self.num_classes)).any()):
            raise ValueError(f"pred holds labels outside 0..{self.num_classes - 1}")
        k = self.num_classes
        self.confusion += torch.bincount(target * k + pred, minlength=k * k).reshape(k, k)

    def all_reduce(self) -> None:
        """Sums the histograms of all processes (no-op outside ``torch.distributed``)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            hist = self.confusion.to(device)
            dist.all_reduce(hist)
            self.confusion = hist.cpu()

    def compute(self) -> dict:
        hist = self.confusion.double()
        intersect = hist.diag()
        area_label = hist.sum(1)
        area_pred = hist.sum(0)
        union = area_label + area_pred - intersect
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = (intersect / union).numpy() * 100.0
            acc = (intersect / area_label).numpy() * 100.0
        total = float(area_label.sum())
        return {
            "aAcc": float(intersect.sum() / total * 100.0) if total else math.nan,
            "mIoU": _nanmean(iou),
            "mAcc": _nanmean(acc),
            "IoU": [float(v) for v in iou],
            "Acc": [float(v) for v in acc],
        }


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def format_table(result: dict, class_names: Sequence[str] | None = None):
    """A ``rich.table.Table`` of per-class IoU / Acc followed by the summary row."""
    from rich.table import Table

    names = list(class_names) if class_names else [str(i) for i in range(len(result["IoU"]))]
    table = Table(title="per-class results (%)")
    table.add_column("class")
    table.add_column("IoU", justify="right")
    table.add_column("Acc", justify="right")
    for name, iou, acc in zip(names, result["IoU"], result["Acc"]):
        table.add_row(name, _fmt(iou), _fmt(acc))
    table.add_section()
    table.add_row("mean", _fmt(result["mIoU"]), _fmt(result["mAcc"]))
    table.add_row("aAcc", _fmt(result["aAcc"]), "")
    return table


def _fmt(value: float) -> str:
    return "nan" if value != value else f"{value:.2f}"

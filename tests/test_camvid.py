"""Real street frames: a short run of the folder dataset on 62 CamVid frames learns (validation mIoU
clearly above the majority-class baseline). The frames are research-only and not in the repository:
set CSSFORMER_CAMVID to a folder with images/{train,val}, masks/{train,val} and classes.txt.
Slow (minutes): `CSSFORMER_CAMVID=/path pytest -m slow tests/test_camvid.py`."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = os.environ.get("CSSFORMER_CAMVID", "")


def _frames_present(root: str) -> bool:
    return bool(root) and all((Path(root) / sub).is_dir() for sub in ("images/train", "images/val", "masks/val"))


def majority_class_miou(root: str) -> tuple[int, float]:
    """The class most frequent in the training masks, and the val mIoU of predicting it everywhere."""
    from cssformer.data import build_dataset
    from cssformer.metrics import IoUMetric

    train, val = build_dataset("folder", "train", root), build_dataset("folder", "val", root)
    counts = np.zeros(train.num_classes, np.int64)
    for i in range(len(train)):
        mask = train.load_mask(i)
        counts += np.bincount(mask[mask != 255].ravel(), minlength=train.num_classes)
    majority = int(counts.argmax())
    metric = IoUMetric(val.num_classes)
    for i in range(len(val)):
        mask = val.load_mask(i)
        metric.update(np.full_like(mask, majority), mask.copy())
    return majority, metric.compute()["mIoU"]


@pytest.mark.slow
@pytest.mark.skipif(not _frames_present(ROOT), reason="CamVid frames absent: set CSSFORMER_CAMVID to a folder with "
                                                      "images/{train,val} and masks/{train,val} (research-only "
                                                      "licence, not shipped)")
def test_short_run_on_camvid_learns(tmp_path):
    from cssformer.cli import main

    work = tmp_path / "camvid"
    rc = main(["train", "--dataset", "folder", "--data-root", ROOT, "--crop-size", "96", "--batch-size", "8",
               "--iters", "60", "--lr", "1e-3", "--warmup-iters", "6", "--eval-interval", "60", "--num-workers", "1",
               "--device", "cpu", "--work-dir", str(work)])
    assert rc == 0
    final = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines() if '"eval"' in line][-1]
    majority, baseline = majority_class_miou(ROOT)
    print(f"CamVid: mIoU {final['mIoU']:.2f} after 60 iterations; majority class {majority} gives {baseline:.2f}")
    assert final["mIoU"] > max(2 * baseline, baseline + 5)

import math

import numpy as np
import pytest
import torch

from cssformer.metrics import IoUMetric


def _by_hand(preds, targets, k, ignore):
    """Per-class counts with plain Python loops over every pixel of every image."""
    inter = [0] * k
    label = [0] * k
    predicted = [0] * k
    for pred, target in zip(preds, targets):
        for p, t in zip(pred.ravel().tolist(), target.ravel().tolist()):
            if t == ignore:
                continue
            label[t] += 1
            predicted[p] += 1
            if p == t:
                inter[t] += 1
    ious, accs = [], []
    for c in range(k):
        union = label[c] + predicted[c] - inter[c]
        ious.append(100.0 * inter[c] / union if union else math.nan)
        accs.append(100.0 * inter[c] / label[c] if label[c] else math.nan)
    valid_iou = [v for v in ious if not math.isnan(v)]
    valid_acc = [v for v in accs if not math.isnan(v)]
    return {
        "aAcc": 100.0 * sum(inter) / sum(label),
        "mIoU": sum(valid_iou) / len(valid_iou),
        "mAcc": sum(valid_acc) / len(valid_acc),
        "IoU": ious,
        "Acc": accs,
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iou_metric_equals_hand_computation_with_ignored_pixels(seed):
    rng = np.random.default_rng(seed)
    k, ignore = 6, 255
    metric = IoUMetric(k, ignore_index=ignore)
    preds, targets = [], []
    for _ in range(3):  # several updates: the histogram is dataset-level
        target = rng.integers(0, k - 1, size=(2, 17, 13))  # class k-1 never in the labels
        target[rng.random(target.shape) < 0.2] = ignore
        pred = np.where(rng.random(target.shape) < 0.6, np.clip(target, 0, k - 1), rng.integers(0, k, target.shape))
        metric.update(torch.from_numpy(pred), torch.from_numpy(target))
        preds.append(pred)
        targets.append(target)
    got = metric.compute()
    want = _by_hand(preds, targets, k, ignore)
    for key in ("aAcc", "mIoU", "mAcc"):
        assert got[key] == pytest.approx(want[key], rel=1e-12)
    np.testing.assert_allclose(got["IoU"], want["IoU"], rtol=1e-12)
    np.testing.assert_allclose(got["Acc"], want["Acc"], rtol=1e-12)
    assert math.isnan(got["Acc"][k - 1])  # no label of that class: accuracy undefined


def test_class_absent_everywhere_is_nan_and_left_out_of_the_mean():
    metric = IoUMetric(3)
    metric.update(np.array([[0, 0, 1, 1]]), np.array([[0, 1, 1, 255]]))
    got = metric.compute()
    assert got["IoU"][:2] == pytest.approx([50.0, 50.0])
    assert math.isnan(got["IoU"][2])
    assert got["mIoU"] == pytest.approx(50.0)
    assert got["aAcc"] == pytest.approx(200 / 3)


def test_labels_outside_the_classes_are_rejected():
    metric = IoUMetric(3)
    with pytest.raises(ValueError, match="outside 0..2"):
        metric.update(np.zeros((2, 2), int), np.full((2, 2), 7))


def test_reset_clears_the_histogram():
    metric = IoUMetric(2)
    metric.update(np.ones((4,), int), np.zeros((4,), int))
    metric.reset()
    metric.update(np.zeros((4,), int), np.zeros((4,), int))
    assert metric.compute()["aAcc"] == 100.0

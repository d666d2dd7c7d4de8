"""SegmentationLoss: CE + aux_weight * aux CE with ignore index 255."""
import pytest
import torch
import torch.nn.functional as F

from cssformer.models import SegmentationLoss


def test_loss_is_ce_plus_weighted_aux_and_ignores_255():
    torch.manual_seed(0)
    logits, aux = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 4, (2, 8, 8))
    target[:, :3] = 255
    total, parts = SegmentationLoss(aux_weight=0.25)({"logits": logits, "aux_logits": aux}, target)
    ce = F.cross_entropy(logits[:, :, 3:].permute(0, 2, 3, 1).reshape(-1, 4), target[:, 3:].reshape(-1))
    ce_aux = F.cross_entropy(aux[:, :, 3:].permute(0, 2, 3, 1).reshape(-1, 4), target[:, 3:].reshape(-1))
    torch.testing.assert_close(parts["loss_ce"], ce)
    torch.testing.assert_close(parts["loss_aux"], ce_aux)
    torch.testing.assert_close(total, ce + 0.25 * ce_aux)


def test_loss_of_a_tensor_or_missing_aux_is_the_ce_alone():
    logits = torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 4, 4))
    total, parts = SegmentationLoss()(logits, target)
    torch.testing.assert_close(total, F.cross_entropy(logits, target))
    assert parts["loss_aux"].item() == 0.0


def test_all_ignored_batch_gives_zero_not_nan():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    total, _ = SegmentationLoss()({"logits": logits, "aux_logits": logits * 2}, torch.full((1, 4, 4), 255))
    assert total.item() == 0.0
    total.backward()
    assert torch.isfinite(logits.grad).all()


def test_bad_target_is_a_clear_error():
    with pytest.raises(ValueError, match="target: got torch.float32"):
        SegmentationLoss()(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match=r"target: got shape \(1, 5, 4\)"):
        SegmentationLoss()(torch.randn(1, 3, 4, 4), torch.zeros(1, 5, 4, dtype=torch.long))

"""Training loss: cross-entropy on the main logits plus a weighted auxiliary cross-entropy."""
from __future__ import annotations

from typing import Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SegmentationLoss", "AUX_WEIGHT"]

AUX_WEIGHT = 0.4  # the paper's weight of the auxiliary CE: the one default (training config key ``aux_weight``)


class SegmentationLoss(nn.Module):
    """``loss = ce_weight * CE(logits, target) + aux_weight * CE(aux_logits, target)``, pixels equal to
    ``ignore_index`` ignored (paper: "a multi-task loss function of AUX and CE", weight 0.4).

    ``forward(outputs, target) -> (total, {"loss_ce": ..., "loss_aux": ...})`` where ``outputs`` is the
    training-mode dict ``{"logits": (N, K, H, W), "aux_logits": (N, K, H, W)}`` (``aux_logits`` may be
    absent or ``None``: its term is then zero) or a bare logits tensor; ``target`` is ``(N, H, W)`` int64.
    The parts are detached scalars for logging. A batch whose pixels are all ignored gives a zero loss
    (with a graph) instead of NaN.

    No host synchronisation: the mean is the summed loss over the (weighted) count of valid pixels
    (1 where there is none), both on the device; the same value as ``F.cross_entropy``'s mean (``fast =
    False``: the former form, whose all-ignored test waited for the device).
    """

    fast = True

    def __init__(self, aux_weight: float = AUX_WEIGHT, ignore_index: int = 255, ce_weight: float = 1.0,
                 class_weight: Optional[torch.Tensor] = None):
        super().__init__()
        if aux_weight < 0 or ce_weight < 0:
            raise ValueError(f"aux_weight / ce_weight: got {aux_weight} / {ce_weight}, expected >= 0")
        self.aux_weight, self.ce_weight, self.ignore_index = float(aux_weight), float(ce_weight), int(ignore_index)
        self.register_buffer("class_weight", class_weight, persistent=False)

    def _count(self, target: torch.Tensor) -> torch.Tensor:
        """What the mean divides by: the (class-weighted) number of valid pixels, 1 where there is none."""
        valid = target != self.ignore_index
        if self.class_weight is None:
            return valid.sum().clamp(min=1)
        count = (self.class_weight[target.masked_fill(~valid, 0)] * valid).sum()
        return torch.where(count > 0, count, torch.ones_like(count))

    def _ce(self, logits: torch.Tensor, target: torch.Tensor, count: Optional[torch.Tensor] = None) -> torch.Tensor:
        if logits.shape[0] != target.shape[0] or logits.shape[-2:] != target.shape[-2:]:
            raise ValueError(f"target: got shape {tuple(target.shape)}, expected (N, H, W) = "
                             f"({logits.shape[0]}, {logits.shape[-2]}, {logits.shape[-1]})")
        if not self.fast:
            if not (target != self.ignore_index).any():
                return logits.sum() * 0.0
            return F.cross_entropy(logits.float(), target, weight=self.class_weight, ignore_index=self.ignore_index)
        total = F.cross_entropy(logits.float(), target, weight=self.class_weight, ignore_index=self.ignore_index,
                                reduction="sum")
        return total / (self._count(target) if count is None else count)

    def forward(self, outputs: Union[Mapping[str, torch.Tensor], torch.Tensor], target: torch.Tensor):
        if target.dim() != 3 or target.dtype != torch.long:
            raise ValueError(f"target: got {target.dtype} of shape {tuple(target.shape)}, expected int64 (N, H, W)")
        if isinstance(outputs, torch.Tensor):
            outputs = {"logits": outputs}
        aux = outputs.get("aux_logits")
        count = self._count(target) if self.fast and aux is not None and self.aux_weight > 0 else None
        loss_ce = self._ce(outputs["logits"], target, count)
        loss_aux = self._ce(aux, target, count) if aux is not None and self.aux_weight > 0 else loss_ce.new_zeros(())
        total = self.ce_weight * loss_ce + self.aux_weight * loss_aux
        return total, {"loss_ce": loss_ce.detach(), "loss_aux": loss_aux.detach()}

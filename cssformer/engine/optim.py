"""AdamW with no weight decay where the model says so (norms, biases, position and level tables: its
``no_weight_decay()``); linear warmup then poly decay."""
from __future__ import annotations

import torch
from torch import nn



def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """(decayed, not decayed) parameter groups: the model's ``no_weight_decay()`` names (timm's
    convention) are not decayed; a module without one gets the segmentation model's rule."""
    from cssformer.models.segmentor import no_decay_names

    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else no_decay_names(model)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; ``fused=True`` (one multi-tensor kernel per step) when every
    parameter is on CUDA, PyTorch's foreach form elsewhere."""
    groups = param_groups(model, weight_decay)
    on_cuda = all(p.device.type == "cuda" for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=True if on_cuda else None)


def lr_factor(step: int, total: int, warmup: int, warmup_ratio: float = 1e-6, power: float = 1.0,
              min_ratio: float = 0.0) -> float:
    """Multiplier of the base lr at 0-based ``step``: linear from ``warmup_ratio`` to 1 over ``warmup``
    steps (mmseg's LinearLR), then poly decay to ``min_ratio`` at ``total`` (mmseg's PolyLR)."""
    if step < warmup:
        return warmup_ratio + (1.0 - warmup_ratio) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return (1.0 - progress) ** power * (1.0 - min_ratio) + min_ratio


class WarmupPoly:
    """Picklable-free lambda for ``LambdaLR`` (its state dict keeps nothing but plain numbers)."""

    def __init__(self, total: int, warmup: int, warmup_ratio: float, power: float, min_ratio: float):
        self.args = (total, warmup, warmup_ratio, power, min_ratio)

    def __call__(self, step: int) -> float:
        return lr_factor(step, *self.args)


def build_scheduler(optimizer, total: int, warmup: int, warmup_ratio: float = 1e-6, power: float = 1.0,
                    min_lr: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    base = optimizer.param_groups[0]["lr"]
    fn = WarmupPoly(total, min(warmup, total), warmup_ratio, power, min_lr / base)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)

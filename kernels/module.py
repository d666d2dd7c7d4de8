"""``MSDeformAttn``: the multi-scale deformable attention layer of Deformable DETR on the fused op (point
references) or the canonical op (box references)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .backend import _validate
from .op import ms_deform_attn, ms_deform_attn_fused
from .shapes import level_tensors

__all__ = ["MSDeformAttn", "override_backend"]


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Zhu et al., Deformable DETR, 2021).

    Each query predicts ``n_points`` sampling offsets per head and level, and softmax weights over
    ``(levels, points)``; the sampled values are summed per head and projected back.

    Args:
        d_model: channels of queries and values (``C``); must be divisible by ``n_heads``.
        n_levels: number of pyramid levels ``L``.
        n_heads: attention heads ``M``; head dim ``D = d_model // n_heads`` (any size).
        n_points: sampling points ``P`` per head and level.
        value_proj / output_proj: whether to use the linear projections (``False`` for identity).
        backend: this layer's override of the library backend (``"auto"``, ``"triton"`` or
            ``"reference"``); ``None`` (default) follows :func:`cssformer_kernels.set_backend`. A plain
            attribute, settable at any time and not part of the ``state_dict``.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4, *,
                 value_proj: bool = True, output_proj: bool = True,
                 backend: Optional[str] = None):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model: got {d_model}, expected a multiple of n_heads ({n_heads})")
        for name, v in (("n_levels", n_levels), ("n_heads", n_heads), ("n_points", n_points)):
            if v < 1:
                raise ValueError(f"{name}: got {v}, expected >= 1")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.head_dim = d_model // n_heads
        self.backend = None if backend is None else _validate(backend)
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model) if value_proj else nn.Identity()
        self.output_proj = nn.Linear(d_model, d_model) if output_proj else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's initialisation: offsets start on rings around the reference point (head ``m``
        points in direction ``2 pi m / M``, point ``p`` at distance ``p + 1``), uniform attention."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        for proj in (self.value_proj, self.output_proj):
            if isinstance(proj, nn.Linear):
                nn.init.xavier_uniform_(proj.weight)
                nn.init.constant_(proj.bias, 0.0)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, input_flatten: torch.Tensor,
                input_spatial_shapes, input_level_start_index: Optional[torch.Tensor] = None,
                input_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            query: ``(N, Q, C)``.
            reference_points: ``(N, Q, L, 2)`` or ``(N, Q, 2)``, normalised ``(x, y)`` in ``[0, 1]``; or
                boxes ``(N, Q, L, 4)`` / ``(N, Q, 4)``, normalised ``(cx, cy, w, h)``: as in Deformable
                DETR's box refinement, the offsets are then in units of the box,
                ``loc = (cx, cy) + offset / n_points * (w, h) * 0.5``.
            input_flatten: ``(N, S, C)``, the levels flattened in order.
            input_spatial_shapes: ``(L, 2)`` tensor or a list of ``(H_l, W_l)``.
            input_level_start_index: ``(L,)``; derived from the shapes when omitted.
            input_padding_mask: optional ``(N, S)`` bool, ``True`` where the input is padding.

        Returns:
            ``(N, Q, C)``.
        """
        if query.dim() != 3 or query.shape[-1] != self.d_model:
            raise ValueError(f"query: got shape {tuple(query.shape)}, expected (N, Q, {self.d_model})")
        if input_flatten.dim() != 3 or input_flatten.shape[-1] != self.d_model:
            raise ValueError(f"input_flatten: got shape {tuple(input_flatten.shape)}, expected (N, S, {self.d_model})")
        if input_level_start_index is None or not isinstance(input_spatial_shapes, torch.Tensor):
            input_spatial_shapes, input_level_start_index = level_tensors(input_spatial_shapes)
        if input_spatial_shapes.shape[0] != self.n_levels:
            raise ValueError(f"input_spatial_shapes: got {input_spatial_shapes.shape[0]} levels, "
                             f"expected n_levels = {self.n_levels}")
        N, Q, _ = query.shape
        S = input_flatten.shape[1]
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(N, S, self.n_heads, self.head_dim)
        offsets = self.sampling_offsets(query).view(N, Q, self.n_heads, self.n_levels, self.n_points, 2)
        logits = self.attention_weights(query).view(N, Q, self.n_heads, self.n_levels, self.n_points)
        # Mixed dtypes (autocast regions that end between the projections) follow the op's rule.
        if reference_points.shape[-1] == 4 and reference_points.dim() in (3, 4):
            boxes = reference_points if reference_points.dim() == 4 else reference_points[:, :, None]
            if boxes.shape[:2] != (N, Q) or boxes.shape[2] not in (1, self.n_levels):
                raise ValueError(f"reference_points: got shape {tuple(reference_points.shape)}, expected boxes "
                                 f"({N}, {Q}, 4) or ({N}, {Q}, {self.n_levels}, 4)")
            boxes = boxes[:, :, None, :, None, :]
            locations = boxes[..., :2] + offsets / self.n_points * boxes[..., 2:] * 0.5
            weights = logits.flatten(-2).softmax(-1).view_as(logits)
            out = ms_deform_attn(value, input_spatial_shapes, input_level_start_index, locations, weights,
                                 backend=self.backend)
        else:
            out = ms_deform_attn_fused(value, input_spatial_shapes, input_level_start_index, reference_points,
                                       offsets, logits, backend=self.backend)
        return self.output_proj(out)

    def extra_repr(self) -> str:
        backend = "" if self.backend is None else f", backend={self.backend!r}"
        return (f"d_model={self.d_model}, n_levels={self.n_levels}, n_heads={self.n_heads}, "
                f"n_points={self.n_points}{backend}")


def override_backend(model: nn.Module, backend: Optional[str]) -> int:
    """Sets the per-layer backend override of every :class:`MSDeformAttn` in ``model`` (``None``: back to
    the library setting); returns how many layers it set."""
    if backend is not None:
        _validate(backend)
    layers = [m for m in model.modules() if isinstance(m, MSDeformAttn)]
    for layer in layers:
        layer.backend = backend
    return len(layers)

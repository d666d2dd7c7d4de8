"""``SegmentationModel``: backbone + decoder + auxiliary head, padding inputs to what the backbone
needs and returning logits at the input size."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from cssformer.sizes import round_up

__all__ = ["SegmentationModel", "NO_DECAY_KEYWORDS", "no_decay_names"]

# Parameters that get no weight decay besides every tensor with ndim <= 1 (norms, biases): Swin's
# relative-position bias tables and absolute position embeddings, the decoders' level embeddings
# (mmseg's Swin and Mask2Former configs: decay_mult 0 for all of them).
NO_DECAY_KEYWORDS = ("relative_position_bias_table", "absolute_pos_embed", "level_embed")


def no_decay_names(module: nn.Module, keywords=NO_DECAY_KEYWORDS) -> set[str]:
    """Names of ``module``'s parameters that get no weight decay: norms and biases (ndim <= 1) and the
    position / level tables (a name holding one of ``keywords``)."""
    return {name for name, p in module.named_parameters() if p.ndim <= 1 or any(k in name for k in keywords)}


class SegmentationModel(nn.Module):
    """``model.eval(); model(images (N, 3, H, W)) -> logits (N, K, H, W)``;
    ``model.train(); model(images) -> {"logits": (N, K, H, W), "aux_logits": (N, K, H, W)}``
    (no ``aux_logits`` key when the preset is built with ``aux_head=False``).

    Any ``H, W``: the input is zero-padded (bottom / right) to a multiple of ``pad_to`` (32, Swin's
    largest stride) and the upsampled logits are cropped back. Inputs are normalised images.

    Attributes: ``num_classes``, ``model_name``, ``build_args`` (``build_model(**build_args)`` rebuilds
    the architecture), ``backbone``, ``decoder``, ``aux_head`` (``None`` when disabled), ``aux_index`` (backbone stage the auxiliary head reads).
    """

    def __init__(self, backbone: nn.Module, decoder: nn.Module, aux_head: Optional[nn.Module], num_classes: int,
                 model_name: str, build_args: dict[str, Any], aux_index: int = 2,
                 pad_to: int = 32):
        super().__init__()
        self.backbone, self.decoder, self.aux_head = backbone, decoder, aux_head
        self.num_classes, self.model_name, self.build_args = num_classes, model_name, build_args
        self.aux_index, self.pad_to = aux_index, pad_to

    def no_weight_decay_keywords(self) -> set[str]:
        """Substrings of parameter names that should get no weight decay (besides ndim <= 1 tensors)."""
        return set(NO_DECAY_KEYWORDS)

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters the optimizer must not decay (see :func:`no_decay_names`)."""
        return no_decay_names(self, self.no_weight_decay_keywords())

    def _upsample_crop(self, logits: torch.Tensor, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
        logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)
        return logits[..., : size[0], : size[1]]

    def forward(self, images: torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images: got shape {tuple(images.shape)}, expected (N, 3, H, W)")
        h, w = images.shape[-2:]
        padded = (round_up(h, self.pad_to), round_up(w, self.pad_to))
        # While torch.export traces (sizes may be symbolic: ONNX at any input size), the pad is always in
        # the graph, so that no branch depends on the size (a zero pad: one copy; not under torch.compile).
        if torch.compiler.is_exporting() or padded != (h, w):
            x = F.pad(images, (0, padded[1] - w, 0, padded[0] - h))
        else:
            x = images
        features = self.backbone(x)
        logits = self._upsample_crop(self.decoder(features), padded, (h, w))
        if not self.training:
            return logits
        out = {"logits": logits}
        if self.aux_head is not None:
            out["aux_logits"] = self._upsample_crop(self.aux_head(features[self.aux_index]), padded, (h, w))
        return out

"""Swin backbone from timm (``features_only``): NCHW feature pyramid at strides 4 / 8 / 16 / 32, with
pretrained weights from a local file (timm or original Swin checkpoint format; never downloaded)."""
from __future__ import annotations

import errno
import os
import re
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from cssformer.sizes import round_up

__all__ = ["SwinBackbone", "SWIN_ARCHS"]

# Swin sizes of the Swin paper (Liu et al., 2021) and timm; "nano" is ours, small enough for CPU runs.
SWIN_ARCHS = {
    "swin-nano": dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=4),
    "swin-t": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "swin-s": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "swin-b": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12),
    "swin-l": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12),
}


class _FilterShim:
    """Lets timm's ``checkpoint_filter_fn`` (written for the plain model) see the ``features_only``
    model, whose stages are named ``layers_0`` instead of ``layers.0``."""

    def __init__(self, net: nn.Module):
        self.net = net
        self.patch_embed = net.patch_embed

    def get_submodule(self, name: str) -> nn.Module:
        return self.net.get_submodule(re.sub(r"^layers\.(\d+)", r"layers_\1", name))


class _CachedAttnMask:
    """A Swin block's ``get_attn_mask`` with the mask kept per (input size, device, dtype): timm rebuilds
    the shifted-window mask on every forward (about 20 small launches a block) when the input size may
    vary (``strict_img_size=False``). The mask depends on the size only, so one per size is enough.
    Not cached while ``torch.compile`` traces (the graph computes it once) or when ``enabled`` is off."""

    def __init__(self, block: nn.Module):
        self.block = block
        self.compute = type(block).get_attn_mask  # timm's method (a plain function: the model pickles)
        self.cache: dict = {}
        self.enabled = True

    def __call__(self, x: Optional[torch.Tensor] = None, device=None, dtype=None):
        if x is None or not self.enabled or torch.compiler.is_compiling():
            return self.compute(self.block, x, device=device, dtype=dtype)
        key = (tuple(x.shape[1:3]), x.device, x.dtype, tuple(self.block.window_size), tuple(self.block.shift_size))
        mask = self.cache.get(key)
        if mask is None:
            with torch.inference_mode(False), torch.no_grad():
                mask = self.compute(self.block, x.detach())
            if len(self.cache) > 8:
                self.cache.clear()
            self.cache[key] = mask
        return mask


class _TraceableWindowAttention:
    """A Swin block's ``_attn`` (shift, pad to the window, window attention, crop, shift back) in a
    form whose sizes stay simple while ``torch.export`` / ``torch.compile`` trace with a free input size:
    the padded size is ``(H + window - 1) // window * window``, not timm's ``H + (window - H % window) % window``,
    whose nested ``Mod`` terms made a dynamic-size ``torch.export`` of cssformer-nano run for over ten
    minutes without finishing (with this form: under a minute, Swin-T about one and a half). Same
    maths; eager calls run timm's own method."""

    def __init__(self, block: nn.Module):
        self.block = block
        self.timm_attn = type(block)._attn  # a plain function: the model pickles

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        block = self.block
        if not torch.compiler.is_compiling():
            return self.timm_attn(block, x)
        from timm.models.swin_transformer import window_partition, window_reverse

        _, h, w, c = x.shape
        (wh, ww), shift = block.window_size, tuple(block.shift_size)
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        hp, wp = round_up(h, wh), round_up(w, ww)
        x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
        windows = window_partition(x, (wh, ww)).view(-1, wh * ww, c)
        mask = block.get_attn_mask(x) if getattr(block, "dynamic_mask", False) else block.attn_mask
        windows = block.attn(windows, mask=mask).view(-1, wh, ww, c)
        x = window_reverse(windows, (wh, ww), hp, wp)[:, :h, :w, :]
        return torch.roll(x, shifts=shift, dims=(1, 2)) if any(shift) else x


class SwinBackbone(nn.Module):
    """timm ``SwinTransformer`` as a feature extractor.

    Args:
        embed_dim, depths, num_heads, window_size: the Swin architecture (see ``SWIN_ARCHS``).
        img_size: crop size ``(H, W)`` the model is built at (window sizes, attention masks); other
            sizes divisible by 32 work too (``strict_img_size=False``).
        drop_path_rate: stochastic depth of the backbone.
        pretrained: path to a local weight file, or ``None``.

    ``forward``: ``(N, 3, H, W)`` with ``H, W`` divisible by 32 -> four maps ``(N, C_i, H / s_i, W / s_i)``,
    ``s = 4, 8, 16, 32``, ``C_i = embed_dim * 2**i`` (``self.out_channels``).

    Speed (see :func:`cssformer.models.set_fast_paths`): the window attention runs timm's fused form
    (``F.scaled_dot_product_attention``) and the shifted-window masks are kept per input size.
    """

    strides = (4, 8, 16, 32)

    def __init__(self, embed_dim: int, depths: Sequence[int], num_heads: Sequence[int], window_size: int,
                 img_size: Union[int, Sequence[int]] = 512, drop_path_rate: float = 0.2,
                 pretrained: Optional[str] = None):
        super().__init__()
        import timm

        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"depths / num_heads: got {tuple(depths)} / {tuple(num_heads)}, expected 4 stages each")
        for i, heads in enumerate(num_heads):
            if (embed_dim * 2 ** i) % heads:
                raise ValueError(f"num_heads: stage {i} has {embed_dim * 2 ** i} channels, not divisible by "
                                 f"{heads} heads")
        self.body = timm.create_model(
            "swin_tiny_patch4_window7_224", pretrained=False, features_only=True, out_indices=(0, 1, 2, 3),
            img_size=tuple(img_size) if not isinstance(img_size, int) else img_size, strict_img_size=False,
            embed_dim=embed_dim, depths=tuple(depths), num_heads=tuple(num_heads), window_size=window_size,
            drop_path_rate=drop_path_rate,
        )
        self.out_channels = list(self.body.feature_info.channels())
        from timm.models.swin_transformer import SwinTransformerBlock, WindowAttention

        for m in self.body.modules():
            if isinstance(m, WindowAttention):
                m.fused_attn = True  # F.scaled_dot_product_attention (timm's default for Swin is off)
            if isinstance(m, SwinTransformerBlock) and getattr(m, "dynamic_mask", False):
                m.get_attn_mask = _CachedAttnMask(m)
            if isinstance(m, SwinTransformerBlock):
                m._attn = _TraceableWindowAttention(m)
        if pretrained:
            self.load_pretrained(pretrained)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [f.permute(0, 3, 1, 2).contiguous() for f in self.body(x)]

    def load_pretrained(self, path: str) -> None:
        """Load Swin weights from a local file: a timm state dict, an original Swin checkpoint
        (``{"model": ...}``, downsampling at the end of each stage) or an mmseg / DDP one (``state_dict``,
        ``backbone.`` / ``module.`` prefixes). The classifier and final norm are dropped; relative
        position tables of another window size are resized. Raises ``FileNotFoundError`` for a missing
        file and ``ValueError`` when the weights do not fit this architecture."""
        from timm.models.swin_transformer import checkpoint_filter_fn

        if not os.path.isfile(path):
            raise FileNotFoundError(errno.ENOENT, f"pretrained: no such file {path!r} (weights are never "
                                    "downloaded; pass the path of a local Swin checkpoint)", path)
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # not a torch file, or pickled code
            from cssformer.io_safety import refusal_reason

            raise ValueError(f"pretrained: cannot read {path!r} as a weights-only torch file: "
                             f"{refusal_reason(err, 'Swin weights (timm, original or mmseg)')}") from None
        for key in ("state_dict", "model"):
            if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
        if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            raise ValueError(f"pretrained: {path!r} holds no state dict of tensors")
        state = {}
        for k, v in ckpt.items():
            for prefix in ("module.", "backbone.", "body."):
                if k.startswith(prefix):
                    k = k[len(prefix):]
            state[k] = v
        for k, v in state.items():  # timm resizes these tables: a malformed one would fail inside timm
            if k.endswith("relative_position_bias_table") and v.dim() != 2:
                raise ValueError(f"pretrained: {path!r} key {k} has shape {tuple(v.shape)}: expected a 2-D "
                                 "relative position table ((2W-1)^2, heads)")
        try:
            state = checkpoint_filter_fn(state, _FilterShim(self.body))
        except (AttributeError, RuntimeError, ValueError, IndexError) as err:
            raise ValueError(f"pretrained: {path!r} does not fit this Swin "
                             f"({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})") from None
        state = {re.sub(r"^layers\.(\d+)", r"layers_\1", k): v for k, v in state.items()
                 if not k.startswith(("head.", "norm."))}
        own = self.body.state_dict()
        missing = sorted(k for k in own if k not in state and not k.endswith(("relative_position_index", "attn_mask")))
        unexpected = sorted(k for k in state if k not in own)
        wrong = sorted(f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                       for k, v in state.items() if k in own and v.shape != own[k].shape)
        if missing or unexpected or wrong:
            parts = []
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
                if keys:
                    parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
            raise ValueError(f"pretrained: {path!r} does not fit this Swin "
                             f"(embed_dim={self.out_channels[0]}): " + "; ".join(parts))
        self.body.load_state_dict(state, strict=False)

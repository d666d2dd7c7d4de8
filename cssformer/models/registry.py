"""Model presets and ``build_model``: one name = a Swin size + a decoder + its defaults; every field
can be overridden by keyword."""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from torch import nn

from cssformer_kernels import override_backend
from cssformer.sizes import as_hw

from .backbone import SWIN_ARCHS, SwinBackbone
from .decoders import DECODERS
from .heads import FCNHead
from .segmentor import SegmentationModel

__all__ = ["build_model", "list_models", "preset_name", "PRESETS", "ALIASES", "COMMON_DEFAULTS", "valid_overrides",
           "current_build_args"]

# Fields every preset has (backbone, auxiliary head, loss weight).
COMMON_DEFAULTS: dict[str, Any] = dict(
    img_size=512,          # crop size the backbone is built at: int or (H, W)
    pretrained=None,       # local backbone weight file (timm / original Swin / mmseg format)
    aux_head=True,         # auxiliary FCN head on backbone stage 3 (stride 16)
    aux_channels=256,      # channels of the auxiliary head's 3x3 conv
    drop_path_rate=0.3,    # backbone stochastic depth (mmseg's Swin-T setting)
)
BACKBONE_FIELDS = ("embed_dim", "depths", "num_heads", "window_size")
# Build arguments that once existed and are dropped (with a DeprecationWarning) wherever they still come
# in: from callers or from the build arguments of old checkpoints.
# ``aux_weight`` is the loss's (``SegmentationLoss``, training config key ``aux_weight``): the model never used it.
DEPRECATED_ARGS = ("backend", "aux_weight")


def current_build_args(build_args: dict[str, Any]) -> dict[str, Any]:
    """``build_args`` (e.g. an old checkpoint's) without the :data:`DEPRECATED_ARGS`."""
    return {k: v for k, v in build_args.items() if k not in DEPRECATED_ARGS}

# Per size: backbone arch name and the overrides that make the "nano" presets tiny.
_SIZES = {
    "nano": dict(backbone="swin-nano", img_size=128, aux_channels=32, drop_path_rate=0.0),
    "swin-t": dict(backbone="swin-t", drop_path_rate=0.3),
    "swin-s": dict(backbone="swin-s", drop_path_rate=0.3),
    "swin-b": dict(backbone="swin-b", drop_path_rate=0.3),
    "swin-l": dict(backbone="swin-l", drop_path_rate=0.3),
}
# Decoder defaults that differ for the nano size.
_NANO_DECODER = {
    "cssformer": dict(dim=64, n_heads=4, n_points=4, ffn_dim=128, csf_heads=2, csf_sr_ratios=(4, 2, 1, 1)),
    "upernet": dict(channels=64),
    "fpn": dict(channels=64, head_channels=32),
    "segformer": dict(channels=64),
    "msdeform-fpn": dict(dim=64, n_heads=4, n_points=4, ffn_dim=128, num_layers=2),
}
# Deprecated names -> current ones. "mask2former-*" was Mask2Former's pixel decoder with a per-pixel
# classifier, not the query-based Mask2Former; the old names still build (and load old checkpoints).
ALIASES = {f"mask2former-{size}": f"msdeform-fpn-{size}" for size in _SIZES}


def _make_presets() -> dict[str, dict[str, Any]]:
    presets = {}
    for decoder in DECODERS:
        for size, spec in _SIZES.items():
            name = f"{decoder}-{size}"
            decoder_defaults = dict(_NANO_DECODER.get(decoder, {})) if size == "nano" else {}
            presets[name] = dict(spec, decoder=decoder, size=size, decoder_defaults=decoder_defaults)
    return presets


PRESETS = _make_presets()


def list_models() -> list[str]:
    """Names of the presets, e.g. ``cssformer-swin-t``, ``cssformer-nano``, ``upernet-swin-t``."""
    return list(PRESETS)


def preset_name(name: str) -> str:
    """The preset ``name`` stands for: itself, or the new name of a deprecated alias (with a
    ``DeprecationWarning``). ``ValueError`` naming the presets for an unknown name."""
    if name in ALIASES:
        warnings.warn(f"model {name!r} is deprecated: it is {ALIASES[name]!r} (Mask2Former's pixel decoder with "
                      "a per-pixel head, not the query-based Mask2Former)", DeprecationWarning, stacklevel=4)
        return ALIASES[name]
    if name not in PRESETS:
        raise ValueError(f"model: unknown preset {name!r}, expected one of {', '.join(PRESETS)}")
    return name


def _preset(name: str) -> dict[str, Any]:
    return PRESETS[preset_name(name)]


def valid_overrides(name: str) -> dict[str, Any]:
    """Every override key ``build_model(name, ...)`` accepts, with the preset's default."""
    preset = _preset(name)
    config_cls = DECODERS[preset["decoder"]][0]
    fields = {f.name: f.default for f in dataclasses.fields(config_cls)}
    fields.update(preset["decoder_defaults"])
    fields.update(COMMON_DEFAULTS)
    fields.update({k: v for k, v in preset.items() if k in COMMON_DEFAULTS})
    fields.update(SWIN_ARCHS[preset["backbone"]])
    return fields


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_override(key: str, value: Any, default: Any) -> None:
    """An override has its field's kind: a bool, a positive int, a finite number >= 0 (a rate < 1), a
    tuple of positive ints, a string; ``ValueError`` in one line otherwise (not a crash inside a layer)."""
    import math

    if key in ("img_size", "pretrained") or value is None and default is None:
        return  # img_size: as_hw checks it; pretrained: a path
    if isinstance(default, bool):
        ok, expected = isinstance(value, bool), "true or false"
    elif _is_int(default):
        ok, expected = _is_int(value) and value >= 1, "a positive int"
    elif isinstance(default, float):
        rate = key.endswith(("dropout", "_rate"))
        ok = (_is_int(value) or isinstance(value, float)) and math.isfinite(value) and 0 <= value < (1 if rate else math.inf)
        expected = "a number in [0, 1)" if rate else "a finite number >= 0"
    elif isinstance(default, (tuple, list)):
        ok = isinstance(value, (tuple, list)) and len(value) > 0 and all(_is_int(v) and v >= 1 for v in value)
        expected = f"a list of positive ints (default {list(default)})"
    elif isinstance(default, str):
        ok, expected = isinstance(value, str), f"a string (default {default!r})"
    else:
        return
    if not ok:
        raise ValueError(f"{key}: got {value!r}, expected {expected}")


def build_model(name: str, num_classes: int, **overrides: Any) -> nn.Module:
    """Build a segmentation model from a preset (see :func:`list_models`).

    Args:
        name: preset name, e.g. ``"cssformer-swin-t"``.
        num_classes: classes ``K`` of the logits.
        **overrides: any field of :func:`valid_overrides` (``img_size``, ``pretrained``,
            Swin ``embed_dim`` / ``depths`` / ``num_heads`` / ``window_size``, decoder fields
            such as ``n_points``). Unknown keys raise ``ValueError``. ``backend`` is deprecated: it sets
            the model's per-layer sampling backend (``cssformer_kernels.override_backend``) and is not
            kept in ``build_args``; use ``cssformer_kernels.set_backend`` instead. ``aux_weight`` is
            deprecated and ignored: it is the loss's (``SegmentationLoss(aux_weight=...)``).

    Returns:
        a :class:`SegmentationModel`: eval mode ``(N, 3, H, W) -> (N, K, H, W)``; train mode a dict with
        ``logits`` and ``aux_logits``.
    """
    backend = overrides.pop("backend", None)
    if backend is not None:
        warnings.warn("build_model(backend=...) is deprecated and not saved with the model: use "
                      "cssformer_kernels.set_backend(...) / use_backend(...) or CSSFORMER_MSDA_BACKEND",
                      DeprecationWarning, stacklevel=2)
    if overrides.pop("aux_weight", None) is not None:
        warnings.warn("build_model(aux_weight=...) is deprecated and ignored: the auxiliary loss weight is the "
                      "loss's (SegmentationLoss(aux_weight=...), training config key aux_weight)",
                      DeprecationWarning, stacklevel=2)
    valid = valid_overrides(name)
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"build_model({name!r}): unknown override(s) {', '.join(unknown)}; "
                         f"valid: {', '.join(sorted(valid))}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes: got {num_classes!r}, expected a positive int")
    for key, value in overrides.items():
        _check_override(key, value, valid[key])
    cfg = dict(valid, **overrides)
    img_size = as_hw(cfg["img_size"], "img_size")

    preset = _preset(name)
    backbone = SwinBackbone(cfg["embed_dim"], cfg["depths"], cfg["num_heads"], cfg["window_size"],
                            img_size=img_size, drop_path_rate=cfg["drop_path_rate"], pretrained=cfg["pretrained"])
    config_cls, decoder_cls = DECODERS[preset["decoder"]]
    decoder_cfg = config_cls(**{f.name: cfg[f.name] for f in dataclasses.fields(config_cls)
                                if f.name in cfg})
    decoder = decoder_cls(backbone.out_channels, num_classes, decoder_cfg)
    aux_head = (FCNHead(backbone.out_channels[2], cfg["aux_channels"], num_classes,
                        norm=getattr(decoder_cfg, "norm", "gn")) if cfg["aux_head"] else None)
    # The architecture, not the weights: a rebuild from a checkpoint must not need the pretrained file.
    build_args = {"name": name, "num_classes": num_classes,
                  **{k: _plain(v) for k, v in overrides.items() if k != "pretrained"}}
    model = SegmentationModel(backbone, decoder, aux_head, num_classes, name, build_args)
    if backend is not None:
        override_backend(model, backend)
    return model

"""CSSFormer models: the Swin backbone, the CIA / MSFE / CSF decoder, baseline decoders, heads, loss.

``build_model(name, num_classes, **overrides)`` builds a preset of :func:`list_models`.
"""
from .fast import set_fast_paths
from .loss import SegmentationLoss
from .registry import PRESETS, build_model, list_models, valid_overrides
from .segmentor import SegmentationModel

__all__ = ["PRESETS", "SegmentationLoss", "SegmentationModel", "build_model", "list_models", "set_fast_paths",
           "valid_overrides"]

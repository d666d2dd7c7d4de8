"""CSSFormer: Cross-Scale Sampling Transformer for semantic segmentation."""

__version__ = "0.1.0"

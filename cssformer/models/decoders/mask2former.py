"""Deprecated module: the decoder is ``msdeform-fpn`` (:mod:`cssformer.models.decoders.msdeform_fpn`).
``Mask2FormerPixelConfig`` / ``Mask2FormerPixelDecoder`` are the old names of ``MSDeformFPNConfig`` /
``MSDeformFPNDecoder`` (Mask2Former's pixel decoder with a per-pixel head, not the query-based
Mask2Former); they still work and warn."""
from __future__ import annotations

import warnings

from . import msdeform_fpn

_OLD_NAMES = {"Mask2FormerPixelConfig": "MSDeformFPNConfig", "Mask2FormerPixelDecoder": "MSDeformFPNDecoder"}
__all__ = list(_OLD_NAMES)


def __getattr__(name: str):
    if name in _OLD_NAMES:
        new = _OLD_NAMES[name]
        warnings.warn(f"cssformer.models.decoders.mask2former.{name} is deprecated: use "
                      f"cssformer.models.decoders.msdeform_fpn.{new}", DeprecationWarning, stacklevel=2)
        return getattr(msdeform_fpn, new)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

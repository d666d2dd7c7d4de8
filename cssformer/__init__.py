"""CSSFormer: Cross-Scale Sampling Transformer for semantic segmentation."""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy re-exports: `import cssformer` stays light (no torch / timm until a model is needed).
    if name in ("build_model", "list_models"):
        from . import models
        return getattr(models, name)
    if name in ("from_checkpoint", "predict_mask", "predict_overlay"):
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'cssformer' has no attribute {name!r}")

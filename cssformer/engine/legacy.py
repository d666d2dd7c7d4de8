"""Old config keys, read into the current ones: the one table of renames.

A key a user wrote (a YAML file, ``--set``) warns with a ``FutureWarning`` (shown by default: it is
meant for the user) naming the current key; the same keys in an old checkpoint's config are read
silently (the user did not write them). The current key wins over an old one set beside it."""
from __future__ import annotations

import warnings
from typing import Any

# old top-level key -> (section, key in it): the test options (``test``, see engine/inference.py)
TEST_KEYS = {"test_mode": "mode", "test_crop": "crop", "test_stride": "stride", "test_scales": "ratios",
             "test_flip": "flip"}
# model_args keys that are training config keys now
MODEL_ARGS_MOVED = {"aux_weight": "aux_weight"}  # the loss's, never the model's


def _warn(where: str | None, old: str, new: str) -> None:
    if where is not None:
        warnings.warn(f"{where}: {old!r} is deprecated, write {new!r} instead (read as {new!r} for now)",
                      FutureWarning, stacklevel=4)


def upgrade(values: dict[str, Any], where: str | None) -> dict[str, Any]:
    """``values`` (config keys) with the old keys moved to the current ones. ``where`` names where a user
    wrote them (each old key warns), ``None`` for a checkpoint's config (read silently)."""
    if not isinstance(values, dict):
        return values
    out = dict(values)
    test = None
    for old, key in TEST_KEYS.items():
        if old in out:
            value = out.pop(old)
            _warn(where, old, f"test.{key}")
            test = dict(out.get("test") or {}) if test is None else test
            test.setdefault(key, value)
    for key in [k for k in out if isinstance(k, str) and k.startswith("test.")]:  # --set test.mode=slide
        test = dict(out.get("test") or {}) if test is None else test
        test[key[len("test."):]] = out.pop(key)
    if test is not None:
        out["test"] = test
    model_args = out.get("model_args")
    if isinstance(model_args, dict) and set(model_args) & set(MODEL_ARGS_MOVED):
        model_args = dict(model_args)
        for old, new in MODEL_ARGS_MOVED.items():
            if old in model_args:
                _warn(where, f"model_args.{old}", new)
                value = model_args.pop(old)
                out.setdefault(new, value)
        out["model_args"] = model_args
    return out

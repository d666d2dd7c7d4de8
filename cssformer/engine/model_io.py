"""A trained model back from a checkpoint, for evaluation and prediction."""
from __future__ import annotations

from pathlib import Path

import torch

from cssformer.errors import UsageError
from cssformer.engine.checkpoint import load_checkpoint, load_weights


def load_trained(path: str | Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode on ``device``, the checkpoint dict without its optimiser state)."""
    from cssformer.models.registry import build_model, current_build_args

    state = load_checkpoint(path)
    args = current_build_args(state["build_args"])  # an old checkpoint's sampling backend is not applied
    args.pop("pretrained", None)  # the weights are the checkpoint's: never open a file its metadata names
    try:
        model = build_model(**args)
    except (TypeError, ValueError) as err:
        raise UsageError(f"checkpoint {path} names a model this version cannot build ({args}): {err}") from None
    load_weights(model, state, path)
    for key in ("optimizer", "scheduler", "scaler", "rng"):
        state.pop(key, None)
    return model.to(device).eval(), state


def crop_size(state: dict) -> tuple[int, int]:
    """The training size ``(h, w)`` of a checkpoint. Stored once: ``build_args['img_size']``, the size the
    model is built at (``cssformer-train`` builds it at the config's ``crop_size``); a checkpoint of an
    older version without it: its config's ``crop_size``; a bare ``build_model`` one: the preset's size."""
    from cssformer.sizes import as_hw

    args = state.get("build_args") or {}
    size = args.get("img_size") or (state.get("config") or {}).get("crop_size")
    if size is None:
        from cssformer.models.registry import valid_overrides

        size = valid_overrides(args["name"])["img_size"]
    try:
        return as_hw(size, "img_size")
    except ValueError as err:
        raise UsageError(f"checkpoint build arguments: {err}") from None


def saved_config(state: dict) -> dict:
    """The training config keys a checkpoint holds that this version knows (newer or dropped keys of
    another version are left out, so ``resolve`` does not refuse them); old keys read as the current ones,
    ``crop_size`` from :func:`crop_size` (a checkpoint stores it once, in ``build_args``)."""
    from cssformer.engine import legacy
    from cssformer.engine.config import DEFAULTS

    config = {k: v for k, v in legacy.upgrade(state.get("config") or {}, None).items() if k in DEFAULTS}
    if config and "crop_size" not in config:
        config["crop_size"] = list(crop_size(state))
    return config


def class_info(state: dict, num_classes: int) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Class names and palette stored in a checkpoint (generated ones for a bare checkpoint)."""
    from cssformer.data.classes import generated_palette

    meta = state.get("meta") or {}
    names = list(meta.get("class_names") or [str(i) for i in range(num_classes)])
    palette = [tuple(int(v) for v in c) for c in (meta.get("palette") or generated_palette(num_classes))]
    return names, palette

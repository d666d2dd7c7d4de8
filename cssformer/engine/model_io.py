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


def saved_config(state: dict) -> dict:
    """The training config keys a checkpoint holds that this version knows (newer or dropped keys of
    another version are left out, so ``resolve`` does not refuse them)."""
    from cssformer.engine.config import DEFAULTS

    return {k: v for k, v in (state.get("config") or {}).items() if k in DEFAULTS}


def class_info(state: dict, num_classes: int) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Class names and palette stored in a checkpoint (generated ones for a bare checkpoint)."""
    from cssformer.data.classes import generated_palette

    meta = state.get("meta") or {}
    names = list(meta.get("class_names") or [str(i) for i in range(num_classes)])
    palette = [tuple(int(v) for v in c) for c in (meta.get("palette") or generated_palette(num_classes))]
    return names, palette

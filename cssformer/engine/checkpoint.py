"""Checkpoints: written atomically (temporary file in the same folder, fsync, rename), loaded with
``torch.load(weights_only=True)``; they hold only tensors and plain Python containers.

Contents: ``model`` (state dict), ``build_args`` (rebuilds the architecture), ``optimizer``,
``scheduler``, ``scaler``, ``rng`` (torch CPU / CUDA generator states, one per rank), ``iteration``,
``best_miou``, ``config`` and ``meta`` (class names, palette, dataset).

A ``.safetensors`` file (``cssformer export --format safetensors``) holds the weights, and
``build_args``, ``config`` and ``meta`` as JSON in its metadata: no pickle. :func:`load_checkpoint`
reads both kinds into the same dict (without optimiser state).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from cssformer.errors import UsageError

FORMAT = "cssformer-checkpoint-1"
LAST = "last_checkpoint"  # text file in the work dir: the name of the newest checkpoint


def _atomic(path: Path, write) -> None:
    """``write(file)`` into a temporary file beside ``path``, fsync, then rename over ``path``: a reader
    (or a run killed half-way) sees the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(Path(path), lambda f: f.write(data))


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Atomic ``torch.save`` of ``state`` (tensors and plain containers only)."""
    _atomic(Path(path), lambda f: torch.save(dict(state, format=FORMAT), f))


SAFETENSORS_FORMAT = "cssformer-safetensors-1"
SAFETENSORS_KEYS = ("build_args", "config", "meta")  # JSON strings in the file's metadata


def save_safetensors(state: dict[str, Any], path: str | Path) -> None:
    """Atomic safetensors file of ``state['model']`` with ``build_args``, ``config`` and ``meta`` (JSON)
    in its metadata; the weights round-trip bit-exactly."""
    from safetensors.torch import save

    # own, contiguous storage per tensor: safetensors refuses views and shared storage
    weights = {k: v.detach().to("cpu").clone().contiguous() for k, v in state["model"].items()}
    metadata = {"format": SAFETENSORS_FORMAT,
                **{k: json.dumps(state.get(k) or {}, default=str) for k in SAFETENSORS_KEYS}}
    atomic_write_bytes(path, save(weights, metadata=metadata))


def _load_safetensors(path: Path, map_location) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        data = path.read_bytes()
        weights = load(data)
        n = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8:8 + n]).get("__metadata__") or {}
    except (SafetensorError, ValueError, OSError) as err:
        raise UsageError(f"cannot read checkpoint {path}: {str(err).splitlines()[0]}") from None
    if metadata.get("format") != SAFETENSORS_FORMAT:
        raise UsageError(f"{path} is not a cssformer safetensors checkpoint (no build arguments in its metadata; "
                         "write one with `cssformer export CHECKPOINT --format safetensors`)")
    state = {k: json.loads(metadata[k]) for k in SAFETENSORS_KEYS if k in metadata}
    return dict(state, model={k: v.to(map_location) for k, v in weights.items()}, format=SAFETENSORS_FORMAT)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A ``.pth`` checkpoint of ``cssformer-train`` or a ``.safetensors`` one of ``cssformer export``."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"checkpoint {path} is a folder: expected a .pth file written by cssformer-train")
    if not path.is_file():
        raise UsageError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise UsageError(f"{path} is not a trusted cssformer checkpoint: the file is empty (0 bytes)")
    if path.suffix == ".safetensors":
        return _load_safetensors(path, map_location)
    if path.suffix in (".onnx", ".pt2"):  # exports: graphs for other runtimes, not checkpoints
        raise UsageError(f"{path} is an {path.suffix[1:].upper()} export, not a checkpoint: expected a .pth "
                         "(cssformer-train) or .safetensors (cssformer export) file; see docs/deploy.md to run it")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a usable checkpoint"
        raise UsageError(f"{path} is not a trusted cssformer checkpoint: {refusal_reason(err)}") from None
    if not isinstance(state, dict) or "model" not in state or "build_args" not in state:
        raise UsageError(f"{path} is not a cssformer checkpoint (expected a dict with 'model' and 'build_args'; "
                         "it was not written by cssformer-train)")
    return state


def refusal_reason(err: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, without PyTorch's advice to turn the
    safety off: a checkpoint of ours never needs it."""
    import re

    text = str(err)
    found = re.search(r"GLOBAL ([\w.]+)|Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        reason = f"it asks to import and run {found.group(1) or found.group(2)}, which no checkpoint does"
    else:
        lines = [line.strip() for line in text.splitlines()
                 if line.strip() and "weights_only" not in line and "Re-running" not in line]
        reason = (lines[0].split(". ")[0] if lines else type(err).__name__)[:160]
        reason = f"it cannot be read ({reason}): truncated, damaged or not a checkpoint"
    return (f"{reason}; it was not loaded (expected a file written by cssformer-train: tensors and plain "
            "containers only)")


def resolve_resume(resume: str, work_dir: Path) -> Path:
    """``resume`` is a checkpoint path, or ``auto``: the newest checkpoint of ``work_dir``."""
    if resume != "auto":
        return Path(resume)
    pointer = work_dir / LAST
    if not pointer.is_file():
        raise UsageError(f"--resume: {work_dir} holds no checkpoint to resume ({pointer} not found)")
    return work_dir / pointer.read_text().strip()


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_weights(model: torch.nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """Loads ``state['model']`` into ``model``; a checkpoint of another architecture or class count is
    an error naming the file and what differs."""
    from cssformer.models.registry import current_build_args

    own = getattr(model, "build_args", None)
    theirs = state.get("build_args")
    if own is not None and theirs is not None:
        own, theirs = current_build_args(own), current_build_args(theirs)
        diff = {k for k in set(own) | set(theirs) if k != "pretrained" and own.get(k) != theirs.get(k)}
        if diff:
            details = ", ".join(f"{k}: checkpoint {theirs.get(k)!r} vs {own.get(k)!r}" for k in sorted(diff))
            raise UsageError(f"checkpoint {path} is from another model ({details})")
    result = _try_load(model, state["model"])
    if result:
        raise UsageError(f"checkpoint {path} does not fit this model: {result}")


def _try_load(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> str:
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[0]})")
        return "; ".join(parts)
    model.load_state_dict(weights)
    return ""

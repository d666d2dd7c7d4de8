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

from cssformer.engine.workdir import LAST  # noqa: F401 - re-exported: the name of the newest checkpoint
from cssformer.errors import UsageError
from cssformer.io_safety import refusal_reason  # noqa: F401 - re-exported

FORMAT = "cssformer-checkpoint-1"


class _Recording:
    """A file wrapper that keeps the ``OSError`` of a failed write: ``torch.save`` turns it into a
    ``RuntimeError`` ("file write failed"); the writer raises the ``OSError`` itself (ENOSPC, EIO, ...)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name):
        return getattr(self.f, name)


def _atomic(path: Path, write) -> None:
    """``write(file)`` into a temporary file beside ``path``, fsync, then rename over ``path``: a reader
    (or a run killed half-way) sees the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            recording = _Recording(f)
            try:
                write(recording)
            except RuntimeError:
                if recording.error is None:
                    raise
            if recording.error is not None:
                raise recording.error
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None  # names the file, not the temp
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
    state = {}
    for key in SAFETENSORS_KEYS:
        if key in metadata:
            try:
                state[key] = json.loads(metadata[key])
            except (TypeError, ValueError):
                raise UsageError(f"{path} is not a usable cssformer checkpoint: its {key!r} metadata is not "
                                 "JSON") from None
    state = dict(state, model={k: v.to(map_location) for k, v in weights.items()}, format=SAFETENSORS_FORMAT)
    check_contents(state, path)
    return state


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
    check_contents(state, path)
    return state


def nonfinite_weight(weights: dict) -> str | None:
    """``"nan in <key>"`` for the first floating-point tensor of ``weights`` holding NaN / inf, else None."""
    for key, value in weights.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            kind = "nan" if torch.isnan(value).any() else "inf"
            return f"{kind} in {key}"
    return None


def _bad_metadata(state: dict[str, Any]) -> str | None:
    """What is wrong with the metadata of a loaded checkpoint (types and ranges), or None."""
    weights, args = state.get("model"), state.get("build_args")
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        return "'model' is not a mapping of names to tensors"
    if not isinstance(args, dict):
        return f"'build_args' is {type(args).__name__}, expected a mapping (model name, classes, overrides)"
    if "name" in args and not isinstance(args["name"], str):
        return f"build_args 'name' is {args['name']!r}, expected a preset name"
    classes = args.get("num_classes", 1)
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        return f"build_args 'num_classes' is {classes!r}, expected a positive int"
    if "iteration" in state and (not isinstance(state["iteration"], int) or isinstance(state["iteration"], bool)
                                 or state["iteration"] < 0):
        return f"'iteration' is {state['iteration']!r}, expected an int >= 0"
    for key in ("config", "meta"):
        if state.get(key) is not None and not isinstance(state[key], dict):
            return f"{key!r} is {type(state[key]).__name__}, expected a mapping"
    meta = state.get("meta") or {}
    names, palette = meta.get("class_names"), meta.get("palette")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        return "meta 'class_names' is not a list of strings"
    if palette is not None and (not isinstance(palette, list) or not all(
            isinstance(c, (list, tuple)) and len(c) == 3 and all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in c) for c in palette)):
        return "meta 'palette' is not a list of [r, g, b] colours of 0..255"
    return None


def check_contents(state: dict[str, Any], path: str | Path) -> None:
    """Refuses a checkpoint whose metadata has the wrong types (a crafted or damaged file) or whose
    weights are not finite (a diverged run): one line naming the file."""
    problem = _bad_metadata(state)
    if problem:
        raise UsageError(f"{path} is not a usable cssformer checkpoint: {problem}")
    bad = nonfinite_weight(state["model"])
    if bad:
        raise UsageError(f"checkpoint {path} holds non-finite weights ({bad}): the run had diverged; expected "
                         "a checkpoint of a run whose loss stayed finite")


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

"""Which implementation the sampling ops run: one library-level switch, with per-layer and per-call
overrides (the pattern of timm's ``set_fused_attn``).

Precedence, first that is set wins:

1. the ``backend=`` argument of :func:`~cssformer_kernels.ms_deform_attn` /
   :func:`~cssformer_kernels.ms_deform_attn_fused` (what an ``MSDeformAttn`` layer passes when its
   ``backend`` attribute is set: the per-layer override);
2. the library setting: :func:`use_backend` (a ``with`` block) over :func:`set_backend`;
3. the environment variable ``CSSFORMER_MSDA_BACKEND``, read when the package is imported and again by
   ``set_backend(None)``;
4. ``"auto"``: Triton on CUDA tensors, the PyTorch reference everywhere else.

The choice is run-time state: it is not a module parameter or buffer, and ``build_model`` does not
store it in a model's build arguments, so a checkpoint runs on whatever backend the loading process
picks.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch

__all__ = ["BACKENDS", "ENV_VAR", "get_backend", "set_backend", "use_backend", "resolve_backend"]

BACKENDS = ("auto", "triton", "reference")
ENV_VAR = "CSSFORMER_MSDA_BACKEND"


def _validate(backend: str, name: str = "backend") -> str:
    if backend not in BACKENDS:
        raise ValueError(f"{name}: got {backend!r}, expected one of {BACKENDS}")
    return backend


def _from_environment() -> str:
    return _validate(os.environ.get(ENV_VAR, "auto") or "auto", ENV_VAR)


_library_backend = _from_environment()


def get_backend() -> str:
    """The library-level backend: ``"auto"``, ``"triton"`` or ``"reference"``."""
    return _library_backend


def set_backend(backend: Optional[str]) -> None:
    """Sets the library-level backend for every op call and layer without an override of its own;
    ``None`` goes back to ``CSSFORMER_MSDA_BACKEND`` (or ``"auto"``)."""
    global _library_backend
    _library_backend = _from_environment() if backend is None else _validate(backend)


@contextlib.contextmanager
def use_backend(backend: Optional[str]) -> Iterator[None]:
    """``with use_backend("reference"): ...``: the library-level backend inside the block (process-wide,
    not per thread), restored after it."""
    global _library_backend
    previous = _library_backend
    set_backend(backend)
    try:
        yield
    finally:
        _library_backend = previous


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: Optional[str], device: torch.device) -> str:
    """The implementation a call runs: ``backend`` (``None``: the library setting) with ``auto`` made
    Triton on CUDA tensors and the reference elsewhere. ``triton`` on CPU tensors needs
    ``TRITON_INTERPRET=1`` (set before triton is imported)."""
    backend = _validate(_library_backend if backend is None else backend)
    if backend == "auto":
        return "triton" if device.type == "cuda" else "reference"
    if backend == "triton" and device.type != "cuda":
        if device.type != "cpu" or not triton_interpreter_enabled():
            raise ValueError(
                f"backend: got 'triton' for tensors on {device}, expected CUDA tensors "
                "(or CPU tensors with TRITON_INTERPRET=1 set before triton is imported)"
            )
    return backend

"""Hugging Face ``transformers``' deformable attention on the :mod:`cssformer_kernels` op.

::

    import cssformer_kernels.integrations.transformers as hf_msda
    hf_msda.patch()        # every deformable-attention entry point of the installed transformers
    ...                    # build or from_pretrained any model: it runs on our op
    hf_msda.unpatch()      # the originals back, exactly

    with hf_msda.patched():
        ...

What is patched is found by inspecting the installed modules, not taken from a list: every
``transformers.models.*.modeling_*`` file that mentions ``sampling_locations`` is imported (and every
already imported ``transformers`` / ``transformers_modules`` module looked at), and its entry points are
recognised by their signatures:

- a module class whose own ``forward(self, value, value_spatial_shapes, value_spatial_shapes_list,
  level_start_index, sampling_locations, attention_weights, im2col_step)`` (Deformable DETR, RT-DETR,
  Grounding DINO, ...): its ``forward`` is replaced on the class;
- a function ``(value, value_spatial_shapes, sampling_locations, attention_weights)`` (Mask2Former,
  OneFormer): the module's global is replaced;
- a function ``(value, value_spatial_shapes, sampling_locations, attention_weights, num_points_list,
  method)`` with a point count per level (RT-DETRv2, D-FINE, DEIMv2): the global is replaced, and a
  class of that module whose ``__init__`` stores the function on its instances (D-FINE's
  ``self.ms_deformable_attn_core = ...``) gets a descriptor for that attribute, so instances built
  before :func:`patch` run our op too. ``method="discrete"`` (nearest pixel) keeps transformers' code.

No parameter, buffer or ``__init__`` changes: state dicts, ``from_pretrained`` and saved checkpoints are
the same patched or not. ``im2col_step`` is ignored (our kernels need no such batching). Dtypes follow
:func:`cssformer_kernels.ms_deform_attn`: weights are cast to value's dtype, float32 locations stay
float32, sums are accumulated in float32; the output is in value's dtype (transformers' own path
returns the promoted dtype of value and weights). The backend is the library's
(:func:`cssformer_kernels.use_backend`): Triton on CUDA tensors, the PyTorch reference elsewhere.

Importing this module imports neither transformers nor anything from it; :func:`patch` does.
"""
from __future__ import annotations

import contextlib
import dis
import functools
import importlib
import inspect
import re
import sys
import types
import warnings
from pathlib import Path
from typing import Iterator

import torch

from ..op import ms_deform_attn, ms_deform_attn_per_level
from ..shapes import level_tensors

__all__ = ["SUPPORTED_MAJOR", "TESTED", "is_patched", "patch", "patched", "unpatch"]

SUPPORTED_MAJOR = (5,)  # transformers major versions whose entry points this module knows
TESTED = "5.24.0"  # the version its tests ran against

_MODULE_FORWARD = ("self", "value", "value_spatial_shapes", "value_spatial_shapes_list", "level_start_index",
                   "sampling_locations", "attention_weights", "im2col_step")
_FUNCTION = ("value", "value_spatial_shapes", "sampling_locations", "attention_weights")
_FUNCTION_V2 = _FUNCTION + ("num_points_list", "method")
_MARKER = "sampling_locations"  # every entry point has it; files without it are not imported

_applied: list["_Patch"] = []
_ROUTES: dict = {}  # original function -> its replacement (while patched)
_ORIGINALS: dict = {}  # replacement -> original


# --------------------------------------------------------------------------------------------------
# The replacements
# --------------------------------------------------------------------------------------------------

# Level tensors come from transformers' list of (H, W) through level_tensors: on the CPU, so the op needs
# no host sync (it copies them to value's device once per distinct value).

def _replaces(original):
    """Decorator: marks a function as our replacement of ``original`` (its name, docstring, ``__wrapped__``)."""
    def mark(fn):
        fn = functools.wraps(original)(fn)
        fn._cssformer_original = original
        return fn
    return mark


def _module_forward(original):
    @_replaces(original)
    def forward(self, value, value_spatial_shapes, value_spatial_shapes_list, level_start_index,
                sampling_locations, attention_weights, im2col_step=None):
        spatial_shapes = value_spatial_shapes
        if value_spatial_shapes_list is not None:
            spatial_shapes, level_start_index = level_tensors(value_spatial_shapes_list)
        return ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)

    return forward


def _function(original):
    @_replaces(original)
    def multi_scale_deformable_attention(value, value_spatial_shapes, sampling_locations, attention_weights):
        return ms_deform_attn(value, *level_tensors(value_spatial_shapes), sampling_locations, attention_weights)

    return multi_scale_deformable_attention


def _function_v2(original):
    @_replaces(original)
    def multi_scale_deformable_attention_v2(value, value_spatial_shapes, sampling_locations, attention_weights,
                                            num_points_list, method="default"):
        if method != "default":  # "discrete": nearest pixel, not what our op computes
            return original(value, value_spatial_shapes, sampling_locations, attention_weights, num_points_list,
                            method)
        return ms_deform_attn_per_level(value, *level_tensors(value_spatial_shapes), sampling_locations,
                                        attention_weights, num_points_list)

    return multi_scale_deformable_attention_v2


class _Routed:
    """Class-level data descriptor over an instance attribute that holds an entry-point function: reading
    gives the replacement of a patched original, writing stores the original. Instances built before,
    while or after patching all run our op while patched, and transformers' function after
    :func:`unpatch` (which removes the descriptor; the instances' own ``__dict__`` never holds ours)."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        try:
            stored = obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None
        try:
            return _ROUTES.get(stored, stored)
        except TypeError:  # unhashable
            return stored

    def __set__(self, obj, value):
        try:
            value = _ORIGINALS.get(value, value)
        except TypeError:
            pass
        obj.__dict__[self.name] = value

    def __delete__(self, obj):
        try:
            del obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None


# --------------------------------------------------------------------------------------------------
# Finding the entry points
# --------------------------------------------------------------------------------------------------

class _Patch:
    """One attribute set on a module or class, undone exactly by :meth:`restore`."""

    def __init__(self, name: str, owner, attr: str, new):
        self.name, self.owner, self.attr = name, owner, attr
        self.had = attr in vars(owner)
        self.old = vars(owner).get(attr)
        setattr(owner, attr, new)

    def restore(self) -> None:
        if self.had:
            setattr(self.owner, self.attr, self.old)
        else:
            delattr(self.owner, self.attr)


def _parameters(fn) -> tuple:
    """Positional and keyword parameter names of a function (through decorators), from its code object:
    cheap enough to look at every function of every loaded transformers module."""
    code = getattr(inspect.unwrap(fn), "__code__", None)
    if code is None:
        return ()
    return code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]


def _kind(obj):
    """``"module"``, ``"function"``, ``"function_v2"`` or ``None``, by signature."""
    if getattr(obj, "_cssformer_original", None) is not None:
        return None
    if inspect.isfunction(obj):
        return {_FUNCTION: "function", _FUNCTION_V2: "function_v2"}.get(_parameters(obj))
    if isinstance(obj, type) and issubclass(obj, torch.nn.Module):
        forward = obj.__dict__.get("forward")  # its own: subclasses inherit the patched one
        if inspect.isfunction(forward) and _parameters(forward) == _MODULE_FORWARD:
            return "module"
    return None


_LOADS_BETWEEN = {"PUSH_NULL", "CACHE", "NOP", "EXTENDED_ARG", "LOAD_DEREF", "LOAD_CLOSURE"}


def _attributes_stored_from(cls, global_names: set) -> list[str]:
    """Names ``x`` of ``self.x = <one of global_names>`` in ``cls.__init__``, from its bytecode."""
    init = cls.__dict__.get("__init__")
    if not inspect.isfunction(init) or not global_names:
        return []
    names, loaded = [], False
    for ins in dis.get_instructions(init):
        if ins.opname == "LOAD_GLOBAL" and ins.argval in global_names:
            loaded = True
        elif loaded and ins.opname == "STORE_ATTR":
            names.append(ins.argval)
            loaded = False
        elif not (ins.opname.startswith("LOAD_FAST") or ins.opname in _LOADS_BETWEEN):
            loaded = False
    return names


_MAKERS = {"module": _module_forward, "function": _function, "function_v2": _function_v2}


def _patch_module(module: types.ModuleType, seen: set) -> list[_Patch]:
    namespace = vars(module)
    entries = [(attr, obj, kind) for attr, obj in list(namespace.items()) if (kind := _kind(obj))]
    done: list[_Patch] = []
    function_names = set()
    for attr, obj, kind in entries:
        if kind == "module":
            if obj in seen:  # the same class imported into another module
                continue
            seen.add(obj)
            done.append(_Patch(f"{obj.__module__}.{obj.__qualname__}.forward", obj, "forward",
                               _module_forward(obj.forward)))
            continue
        replacement = _ROUTES.get(obj) or _MAKERS[kind](obj)
        _ROUTES[obj], _ORIGINALS[replacement] = replacement, obj
        done.append(_Patch(f"{module.__name__}.{attr}", module, attr, replacement))
        function_names.add(attr)
    for obj in list(namespace.values()):
        if isinstance(obj, type) and issubclass(obj, torch.nn.Module) and obj.__module__ == module.__name__ \
                and obj not in seen:
            seen.add(obj)
            for name in _attributes_stored_from(obj, function_names):
                done.append(_Patch(f"{module.__name__}.{obj.__qualname__}.{name}", obj, name, _Routed(name)))
    return done


def _candidate_modules() -> list[types.ModuleType]:
    import transformers.models

    names = set()
    for path in sorted(Path(transformers.models.__file__).parent.glob("*/modeling_*.py")):
        try:
            if _MARKER in path.read_text(encoding="utf-8", errors="replace"):
                names.add(f"transformers.models.{path.parent.name}.{path.stem}")
        except OSError:
            continue
    loaded = [m for n, m in list(sys.modules.items()) if isinstance(m, types.ModuleType)
              and n.startswith(("transformers.", "transformers_modules.")) and n not in names]
    modules, failed = [], []
    for name in sorted(names):
        try:
            modules.append(importlib.import_module(name))
        except Exception as err:  # a model whose own optional dependencies are missing
            failed.append(f"{name} ({type(err).__name__})")
    if failed:
        warnings.warn(f"cssformer_kernels.integrations.transformers: not patched, failed to import: {', '.join(failed)}",
                      stacklevel=3)
    return modules + loaded


def _import_transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError("transformers is not installed: pip install transformers (it is what "
                          "cssformer_kernels.integrations.transformers patches)") from None
    return transformers


def _check_version(version: str) -> None:
    match = re.match(r"(\d+)\.\d+", version)
    if match is None or int(match.group(1)) not in SUPPORTED_MAJOR:
        known = ", ".join(f"{v}.x" for v in SUPPORTED_MAJOR)
        raise RuntimeError(f"transformers {version}: cssformer_kernels.integrations.transformers knows {known} "
                           f"(tested with {TESTED}); patch(check_version=False) tries it anyway")


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------

def is_patched() -> bool:
    return bool(_applied)


def patch(*, check_version: bool = True) -> tuple[str, ...]:
    """Routes every deformable-attention entry point of the installed transformers through our op;
    returns the qualified names it replaced. Patching twice changes nothing (and returns the same)."""
    if _applied:
        return tuple(p.name for p in _applied)
    transformers = _import_transformers()
    if check_version:
        _check_version(transformers.__version__)
    done: list[_Patch] = []
    seen: set = set()
    try:
        for module in _candidate_modules():
            done += _patch_module(module, seen)
    except BaseException:
        _restore(done)
        raise
    if not done:
        raise RuntimeError(f"transformers {transformers.__version__}: found no deformable-attention entry point "
                           "to patch (none with the signatures docs/integrations.md lists)")
    _applied[:] = done
    return tuple(p.name for p in done)


def _restore(done: list[_Patch]) -> None:
    for p in reversed(done):
        p.restore()
    _ROUTES.clear()
    _ORIGINALS.clear()


def unpatch() -> tuple[str, ...]:
    """Puts every original back (exactly the objects that were there); returns the names restored."""
    names = tuple(p.name for p in _applied)
    _restore(_applied)
    _applied.clear()
    return names


@contextlib.contextmanager
def patched(*, check_version: bool = True) -> Iterator[tuple[str, ...]]:
    """``with patched() as names: ...``: patched inside the block; left as it was found after it."""
    already = is_patched()
    names = patch(check_version=check_version)
    try:
        yield names
    finally:
        if not already:
            unpatch()

"""Export a model for deployment: ONNX (onnxruntime, TensorRT, ...), a ``torch.export`` program
(``.pt2``) and checks of each against PyTorch. ``cssformer export`` is the command; see docs/deploy.md.

Every exported model takes what ``model.forward`` takes, a normalised float ``(N, 3, H, W)`` image
(``(rgb_0_255 - mean) / std``), and returns logits ``(N, K, H, W)``.
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch

from cssformer.engine.checkpoint import atomic_write_bytes
from cssformer.errors import UsageError, require

__all__ = ["DEFAULT_OPSET", "size_multiple", "check_opset", "metadata", "metadata_values", "example_input", "export_onnx", "onnx_runner", "run_onnx", "export_pt2", "max_abs_diff"]

DEFAULT_OPSET = 18  # the opset the sampling op's onnxscript functions are written for
MIN_OPSET, MAX_OPSET = 18, 23  # MAX: the newest opset torch.onnx's exporter writes (torch 2.14)
MAX_SIZE = 8192  # the largest height / width of a free-size ONNX graph
PT2_METADATA = "cssformer.json"  # the extra file of a .pt2 archive that holds :func:`metadata_values`


def size_multiple(model: torch.nn.Module) -> int:
    """What the model pads its input to (``SegmentationModel.pad_to``, 32): a free-size graph takes
    heights and widths that are multiples of it."""
    return int(getattr(model, "pad_to", 32))


def check_opset(opset: int) -> None:
    """Refuses an ONNX opset the exporter cannot write with the sampling op's functions."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"--opset {opset}: expected {MIN_OPSET} to {MAX_OPSET} (the sampling op's ONNX "
                         f"functions are written for opset {MIN_OPSET}; torch.onnx exports up to {MAX_OPSET})")


def metadata_values(model: torch.nn.Module, size: Sequence[int] | None) -> dict:
    """What a deployed model needs besides its graph: model name, class names, palette, mean / std
    (0-255 scale), the input size ``[H, W]`` the graph is fixed to (``None``: any multiple of
    ``size_multiple``), build arguments (plain JSON values)."""
    stride = size_multiple(model)
    shape = f"{size[0]}, {size[1]}" if size else "H, W"
    return {
        "cssformer_model": model.model_name,
        "num_classes": int(model.num_classes),
        "class_names": list(model.class_names),
        "palette": [[int(v) for v in c] for c in model.palette],
        "mean": [float(v) for v in model.mean],
        "std": [float(v) for v in model.std],
        "input_size": [int(s) for s in size] if size else None,
        "size_multiple": stride,
        "input": f"images: float32 (N, 3, {shape}), RGB, (pixel - mean) / std; output logits: (N, K, {shape})"
                 + ("" if size else f"; H and W multiples of {stride}"),
        "build_args": model.build_args,
    }


def metadata(model: torch.nn.Module, size: Sequence[int] | None) -> dict[str, str]:
    """:func:`metadata_values` as ONNX ``metadata_props`` take them: strings, JSON where structured."""
    return {key: value if isinstance(value, str) else json.dumps(value)
            for key, value in metadata_values(model, size).items()}


def example_input(size: Sequence[int], batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A fixed normalised input (standard normal, like an image after normalisation)."""
    return torch.randn(batch, 3, int(size[0]), int(size[1]), generator=torch.Generator().manual_seed(seed))


def trace_size(model: torch.nn.Module) -> tuple[int, int]:
    """The input size a free-size export traces at: a multiple of ``model.pad_to`` (32) at which every
    Swin stage has at least two windows and is padded to its window wherever some size would be, and
    height != width. The exporter records the graph's size decisions (one window or several, padding
    or none) at the traced size; at a degenerate one (one window, no padding) the graph would hold
    those special cases and be wrong at other sizes."""
    import re

    from timm.models.swin_transformer import SwinTransformerBlock

    stride = size_multiple(model)
    per_stage: dict[int, set] = {}  # Swin stage (0..3, map stride 4 * 2**stage) -> its blocks' windows
    for name, block in model.named_modules():
        found = re.search(r"layers_(\d+)", name)
        if isinstance(block, SwinTransformerBlock) and found:
            per_stage.setdefault(int(found.group(1)), set()).add(tuple(block.window_size))

    def generic(k: int, axis: int) -> bool:
        for stage, windows in per_stage.items():
            n = k * stride // (4 * 2 ** stage)  # the map size at this stage for an input of k * stride
            per_unit = stride // (4 * 2 ** stage)  # the map grows by this much per step of k
            for window in windows:
                ws = window[axis]
                if ws > 1 and (n <= ws or (per_unit % ws and n % ws == 0)):
                    return False
        return True

    h = next(k for k in range(2, 1000) if generic(k, 0))
    w = next(k for k in range(h + 1, 1000) if generic(k, 1))
    return h * stride, w * stride


def export_onnx(model: torch.nn.Module, path: str | Path, size: Sequence[int] | None = None,
                opset: int = DEFAULT_OPSET, dynamic: bool = False) -> None:
    """The whole model as ONNX, through the ``torch.export``-based exporter (``dynamo=True``) with the
    onnxscript translation of the sampling op (``cssformer_kernels.onnx.onnx_translation_table``:
    GridSample + Mul + ReduceSum, the level sizes read from the graph's shapes when it runs) and CIA's
    pools as matrix products.

    ``size=None``: one graph for any height and width that are multiples of ``model.pad_to`` (32), the
    dims named ``height`` and ``width``; ``(H, W)``: the graph takes that size only. ``dynamic``: the
    batch dimension is free (``batch``). The file is written atomically, with :func:`metadata` in the
    model's ``metadata_props``."""
    onnx = require("onnx", "export")
    require("onnxscript", "export")
    from cssformer_kernels.onnx import onnx_translation_table

    check_opset(opset)
    model = model.eval()
    stride = size_multiple(model)
    example = example_input(size if size else trace_size(model), batch=2 if dynamic else 1)
    dims = {}
    if dynamic:
        dims[0] = torch.export.Dim("batch", min=1, max=4096)
    if not size:
        dims[2] = stride * torch.export.Dim("height_blocks", min=1, max=MAX_SIZE // stride)
        dims[3] = stride * torch.export.Dim("width_blocks", min=1, max=MAX_SIZE // stride)
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's notes on its own steps; failures still raise
        program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=(dims,) if dims else None,
                                    input_names=["images"], output_names=["logits"], opset_version=opset,
                                    custom_translation_table=onnx_translation_table(), optimize=False,
                                    verify=False, report=False)
    _simplify(program.model)
    proto = program.model_proto
    _name_dims(proto, model.num_classes, size, dynamic)
    for key, value in metadata(model, size).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"{model.model_name}, exported by cssformer"
    atomic_write_bytes(path, proto.SerializeToString())


def _simplify(model) -> None:
    """The exporter's optimisation without its pattern rewriter: constant folding, unused nodes,
    common subexpressions, constants as initializers. The rewriter can take minutes on a free-size
    graph (still running after 5 min for upernet-nano on 2 CPU cores: its shape arithmetic is thousands
    of small nodes); onnxruntime runs the graph as fast without it (measured in docs/deploy.md)."""
    import onnx_ir.passes.common as passes
    from onnx_ir.passes import Sequential
    from onnxscript.optimizer import fold_constants

    passes.InlinePass()(model)  # the sampling op's ONNX functions into the graph, then fold
    fold_constants(model)
    Sequential(passes.RemoveUnusedNodesPass(), passes.RemoveUnusedFunctionsPass(), passes.RemoveUnusedOpsetsPass(),
               passes.CommonSubexpressionEliminationPass(), passes.RemoveUnusedNodesPass(),
               passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
               passes.DeduplicateInitializersPass(), passes.NameFixPass())(model)


def _name_dims(proto, num_classes: int, size: Sequence[int] | None, dynamic: bool) -> None:
    """The graph's input ``images`` (batch, 3, H, W) and output ``logits`` (batch, K, H, W) with plain
    dim names: ``batch``, ``height``, ``width`` where free (the exporter writes ``32*height_blocks``),
    numbers where fixed."""
    free = {0: "batch" if dynamic else None, 2: None if size else "height", 3: None if size else "width"}
    for value in (*proto.graph.input, *proto.graph.output):
        if value.name not in ("images", "logits"):
            continue
        fixed = (1, 3 if value.name == "images" else num_classes, *(size or (0, 0)))
        for i, dim in enumerate(value.type.tensor_type.shape.dim):
            if free.get(i):
                dim.dim_param = free[i]
            else:
                dim.dim_value = int(fixed[i])


def onnx_runner(path: str | Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """``images -> logits`` of an exported ONNX file, with one onnxruntime session on the CPU (loaded
    once: checks at several sizes reuse it)."""
    ort = require("onnxruntime", "export")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(None, {"images": images.numpy()})[0])


def run_onnx(path: str | Path, images: torch.Tensor) -> torch.Tensor:
    """Logits of an exported ONNX file for ``images``, with onnxruntime on the CPU."""
    return onnx_runner(path)(images)


def export_pt2(model: torch.nn.Module, path: str | Path, size: Sequence[int], dynamic: bool = False) -> None:
    """A ``torch.export`` program (``torch.export.load(path).module()(images)``) that keeps the
    ``cssformer::ms_deform_attn_fused`` custom op, with backend ``auto``: the Triton kernels on CUDA,
    the reference on the CPU. :func:`metadata_values` is the archive's extra file ``cssformer.json``
    (one JSON object: numbers and lists as JSON values, not strings)."""
    model = model.eval()
    dims = None
    example = example_input(size)
    if dynamic:
        example = example_input(size, batch=2)  # a batch of 1 would be specialised
        dims = ({0: torch.export.Dim("batch", min=1, max=1024)},)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=dims)
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={PT2_METADATA: json.dumps(metadata_values(model, size))})
    atomic_write_bytes(path, buffer.getvalue())


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())

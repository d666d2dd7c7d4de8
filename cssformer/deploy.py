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
from typing import Sequence

import torch

from cssformer.engine.checkpoint import atomic_write_bytes
from cssformer.errors import UsageError, require

__all__ = ["DEFAULT_OPSET", "metadata", "metadata_values", "example_input", "export_onnx", "run_onnx", "export_pt2", "max_abs_diff"]

DEFAULT_OPSET = 17  # GridSample needs 16, LayerNormalization 17
PT2_METADATA = "cssformer.json"  # the extra file of a .pt2 archive that holds :func:`metadata_values`


def metadata_values(model: torch.nn.Module, size: Sequence[int]) -> dict:
    """What a deployed model needs besides its graph: model name, class names, palette, mean / std
    (0-255 scale), the input size ``[H, W]`` it was exported at, build arguments (plain JSON values)."""
    return {
        "cssformer_model": model.model_name,
        "num_classes": int(model.num_classes),
        "class_names": list(model.class_names),
        "palette": [[int(v) for v in c] for c in model.palette],
        "mean": [float(v) for v in model.mean],
        "std": [float(v) for v in model.std],
        "input_size": [int(s) for s in size],
        "input": "images: float32 (N, 3, H, W), RGB, (pixel - mean) / std; output logits: (N, K, H, W)",
        "build_args": model.build_args,
    }


def metadata(model: torch.nn.Module, size: Sequence[int]) -> dict[str, str]:
    """:func:`metadata_values` as ONNX ``metadata_props`` take them: strings, JSON where structured."""
    return {key: value if isinstance(value, str) else json.dumps(value)
            for key, value in metadata_values(model, size).items()}


def example_input(size: Sequence[int], batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A fixed normalised input (standard normal, like an image after normalisation)."""
    return torch.randn(batch, 3, int(size[0]), int(size[1]), generator=torch.Generator().manual_seed(seed))


def _roll_symbolic(g, self, shifts, dims):
    """ONNX form of ``aten::roll`` with each shift taken modulo its dimension's size (read from the
    tensor's shape in the graph). torch's own form slices at the raw shift, wrong when the shift exceeds
    the size: Swin rolls by 3 (window 7) and its last stage is 2 x 2 for inputs up to 64 px, which gave
    logits 1e-3 off."""
    from torch.onnx import symbolic_helper as sh

    def const(v):
        return g.op("Constant", value_t=torch.tensor([v], dtype=torch.long))

    shifts, dims = sh._parse_arg(shifts, "is"), sh._parse_arg(dims, "is")
    result = self
    for shift, dim in zip(shifts, dims):
        size = g.op("Gather", g.op("Shape", result), const(dim), axis_i=0)
        split = g.op("Sub", size, g.op("Mod", const(shift), size))   # Mod: Python's sign convention
        tail = g.op("Slice", result, split, size, const(dim))
        head = g.op("Slice", result, const(0), split, const(dim))
        result = g.op("Concat", tail, head, axis_i=dim)
    return result


@contextlib.contextmanager
def _onnx_fixes(opset: int):
    torch.onnx.register_custom_op_symbolic("aten::roll", _roll_symbolic, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::roll", opset)


def export_onnx(model: torch.nn.Module, path: str | Path, size: Sequence[int], opset: int = DEFAULT_OPSET,
                dynamic: bool = False) -> None:
    """The whole model as ONNX at input ``size``, through the TorchScript exporter (``dynamo=False``):
    the sampling op becomes GridSample + Mul + ReduceSum (``cssformer_kernels.onnx``), CIA's pools
    matrix products. ``dynamic``: the batch dimension is free (the spatial size is fixed). The file is
    written atomically, with :func:`metadata` in the model's ``metadata_props``."""
    onnx = require("onnx", "export")
    from cssformer_kernels.onnx import MIN_OPSET

    if opset < MIN_OPSET:
        raise UsageError(f"--opset {opset}: the sampling op needs GridSample, opset >= {MIN_OPSET}")
    buffer = io.BytesIO()
    axes = {"images": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings(), torch.no_grad(), _onnx_fixes(opset):
        warnings.simplefilter("ignore")  # tracer warnings about Python ints: the input size is fixed by design
        torch.onnx.export(model.eval(), (example_input(size),), buffer, dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["logits"], dynamic_axes=axes)
    proto = onnx.load_from_string(buffer.getvalue())
    _name_dims(proto, model.num_classes, size, dynamic)
    for key, value in metadata(model, size).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"{model.model_name}, exported by cssformer"
    atomic_write_bytes(path, proto.SerializeToString())


def _name_dims(proto, num_classes: int, size: Sequence[int], dynamic: bool) -> None:
    """The graph's input ``images`` (batch, 3, H, W) and output ``logits`` (batch, K, H, W) with their
    sizes written out (the TorchScript exporter leaves the output's as ``Slicelogits_dim_1`` ...):
    ``batch`` named when free, the rest fixed numbers."""
    shapes = {"images": (3, *size), "logits": (num_classes, *size)}
    for value in (*proto.graph.input, *proto.graph.output):
        if value.name not in shapes:
            continue
        dims = value.type.tensor_type.shape.dim
        for dim, number in zip(dims, (None if dynamic else 1, *shapes[value.name])):
            if number is None:
                dim.dim_param = "batch"
            else:
                dim.dim_value = int(number)


def run_onnx(path: str | Path, images: torch.Tensor) -> torch.Tensor:
    """Logits of an exported ONNX file for ``images``, with onnxruntime on the CPU."""
    ort = require("onnxruntime", "export")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])


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

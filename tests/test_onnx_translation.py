"""The onnxscript translation of the sampling ops for the `torch.export`-based ONNX exporter
(`cssformer_kernels.onnx.onnx_translation_table`): level sizes come from the `spatial_shapes` tensor when
the graph runs, so one exported graph serves other level sizes; checked against the reference with
onnxruntime."""
import subprocess
import sys

import pytest
import torch

from cssformer_kernels import level_tensors, ms_deform_attn, ms_deform_attn_fused
from cssformer_kernels.reference import ms_deform_attn_fused_reference, ms_deform_attn_reference

pytest.importorskip("onnxscript", reason="the translation needs onnxscript (the export / test extras)")
ort = pytest.importorskip("onnxruntime", reason="the check runs onnxruntime (the export / test extras)")


class Fused(torch.nn.Module):
    def forward(self, value, shapes, starts, ref, off, logits):
        return ms_deform_attn_fused(value, shapes, starts, ref, off, logits)  # the public function


class Plain(torch.nn.Module):
    def forward(self, value, shapes, starts, loc, w):
        return ms_deform_attn(value, shapes, starts, loc, w)


def _case(levels, seed, N=2, Q=5, M=2, D=3, P=3, ref_rank=4):
    g = torch.Generator().manual_seed(seed)
    shapes, starts = level_tensors(levels)
    L, S = len(levels), int(shapes.prod(1).sum())
    return {"value": torch.randn(N, S, M, D, generator=g), "shapes": shapes, "starts": starts,
            "ref": torch.rand(N, Q, L, 2, generator=g) if ref_rank == 4 else torch.rand(N, Q, 2, generator=g),
            "off": torch.randn(N, Q, M, L, P, 2, generator=g), "logits": torch.randn(N, Q, M, L, P, generator=g),
            # points outside the map and on its border too
            "loc": torch.rand(N, Q, M, L, P, 2, generator=g) * 1.4 - 0.2, "w": torch.rand(N, Q, M, L, P, generator=g)}


def _export(module, names, example):
    from cssformer_kernels.onnx import onnx_translation_table

    s, q = torch.export.Dim("S"), torch.export.Dim("Q")
    dims = {"value": {1: s}, "shapes": None, "starts": None, "ref": {1: q}, "off": {1: q}, "logits": {1: q},
            "loc": {1: q}, "w": {1: q}}
    program = torch.onnx.export(module, tuple(example[n] for n in names), dynamo=True, verbose=False,
                                custom_translation_table=onnx_translation_table(), input_names=list(names),
                                dynamic_shapes=tuple(dims[n] for n in names))
    proto = program.model_proto
    assert "GridSample" in {n.op_type for n in proto.graph.node} | {
        n.op_type for f in proto.functions for n in f.node}
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(session, names, case):
    return torch.from_numpy(session.run(None, {n: case[n].numpy() for n in names})[0])


def test_fused_op_translation_takes_level_sizes_at_run_time():
    names = ("value", "shapes", "starts", "ref", "off", "logits")
    session = _export(Fused(), names, _case([(6, 5), (3, 3)], seed=0))
    # other level sizes (odd, 1 x 1, wider than tall) and another number of queries, the same graph
    for levels, seed in (([(6, 5), (3, 3)], 1), ([(4, 7), (1, 1)], 2), ([(9, 2), (5, 6)], 3)):
        case = _case(levels, seed)
        expected = ms_deform_attn_fused_reference(*(case[n].double() if case[n].is_floating_point() else case[n]
                                                    for n in names))
        torch.testing.assert_close(_run(session, names, case).double(), expected, rtol=1e-5, atol=1e-5)


def test_plain_op_translation_and_reference_points_per_query():
    names = ("value", "shapes", "starts", "loc", "w")
    session = _export(Plain(), names, _case([(4, 4), (2, 3), (1, 1)], seed=4))
    for levels, seed in (([(4, 4), (2, 3), (1, 1)], 5), ([(7, 3), (5, 5), (2, 1)], 6)):
        case = _case(levels, seed, Q=9)
        expected = ms_deform_attn_reference(*(case[n].double() if case[n].is_floating_point() else case[n]
                                              for n in names))
        torch.testing.assert_close(_run(session, names, case).double(), expected, rtol=1e-5, atol=1e-5)
    names = ("value", "shapes", "starts", "ref", "off", "logits")
    session = _export(Fused(), names, _case([(3, 4)], seed=7, ref_rank=3))  # one level, (N, Q, 2) points
    case = _case([(5, 2)], seed=8, ref_rank=3)
    torch.testing.assert_close(_run(session, names, case), ms_deform_attn_fused_reference(*(case[n] for n in names)),
                               rtol=1e-5, atol=1e-5)


def test_kernels_import_without_onnxscript():
    code = ("import sys; sys.modules['onnxscript'] = None; import cssformer_kernels, cssformer_kernels.onnx; "
            "assert 'onnxscript' not in sys.modules or sys.modules['onnxscript'] is None")
    subprocess.run([sys.executable, "-c", code], check=True)

"""FLOPs and parameters of a model with fvcore, with a handle that counts the sampling op.

fvcore counts one multiply-add as one flop. The sampling op (``cssformer::ms_deform_attn_fused`` and
``cssformer::ms_deform_attn``) is counted as 5 flops per (batch, query, head, level, point, channel):
4 multiply-adds for the bilinear corners and 1 for the attention weight. The per-point location and
softmax arithmetic (a ``1 / head_dim`` share of that) is left out, as fvcore leaves out element-wise
ops. ``aten::scaled_dot_product_attention`` (CSF self-attention, timm's fused Swin attention) counts as
the two matmuls it replaces, ``q @ k^T`` and ``attn @ v``, so a fused attention reports what the plain
matmul form did. Reports trace the model in eval mode (no auxiliary head), batch 1.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable, Optional, Sequence

import torch
from torch import nn

__all__ = ["SAMPLING_OPS", "sampling_flops", "sdpa_flops", "flop_analysis", "model_report", "decoder_gflops", "compare_report",
           "PAPER_ABLATION_GFLOPS"]

SAMPLING_OPS = ("cssformer::ms_deform_attn_fused", "cssformer::ms_deform_attn")
# Paper, Table 5 (PASCAL Context, 480 x 480, Swin-T): GFLOPs added over the baseline decoder.
PAPER_ABLATION_GFLOPS = {"+CIA": 2.4, "+MSFE/CSF": 39.9, "full (CIA + MSFE/CSF)": 42.3}
PAPER_ABLATION_SIZE = (480, 480)  # the input size of those numbers
ABLATIONS = {  # row -> (use_cia, use_msfe_csf)
    "baseline decoder": (False, False),
    "+CIA": (True, False),
    "+MSFE/CSF": (False, True),
    "full (CIA + MSFE/CSF)": (True, True),
}


def sampling_flops(inputs: list, outputs: list) -> int:
    """fvcore handle for both sampling ops: ``5 * N * Q * M * L * P * D``.

    ``inputs[0]`` is ``value (N, S, M, D)``; ``inputs[4]`` the fused form's ``sampling_offsets`` or
    ``inputs[3]`` the canonical form's ``sampling_locations``, both ``(N, Q, M, L, P, 2)``.
    """
    from fvcore.nn.jit_handles import get_shape

    value = get_shape(inputs[0])
    locations = get_shape(inputs[4]) if len(inputs) > 6 else get_shape(inputs[3])
    n, q, m, l, p, _ = locations
    return 5 * n * q * m * l * p * value[3]


def sdpa_flops(inputs: list, outputs: list) -> int:
    """fvcore handle for ``scaled_dot_product_attention(q (..., Lq, E), k (..., Lk, E), v (..., Lk, Ev))``:
    ``prod(...) * Lq * Lk * (E + Ev)`` multiply-adds (fvcore's count of the two matmuls)."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(inputs[i]) for i in range(3))
    batch = 1
    for d in q[:-2]:
        batch *= d
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def flop_analysis(module: nn.Module, inputs: tuple):
    """A ``FlopCountAnalysis`` with the sampling-op handles and fvcore's warnings off (the element-wise
    ops it does not count are listed by ``unsupported_ops()``)."""
    # fvcore scripts / traces with torch.jit, which warns that it is deprecated; the trace is all it needs.
    warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(module, inputs)
    for op in SAMPLING_OPS:
        analysis.set_op_handle(op, sampling_flops)
    analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flops)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis


def _params(module: Optional[nn.Module]) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _rows(model: nn.Module, by_module: dict, flops_prefix: str = "") -> list[dict[str, Any]]:
    """Whole model, backbone, decoder and each decoder child, aux head: GFLOPs and M parameters."""
    rows = [("model", "", model), ("backbone", "backbone", model.backbone), ("decoder", "decoder", model.decoder)]
    rows += [(f"decoder.{name}", f"decoder.{name}", child) for name, child in model.decoder.named_children()
             if _params(child) or by_module.get(f"{flops_prefix}decoder.{name}", 0)]
    if model.aux_head is not None:
        rows.append(("aux_head (training only)", "aux_head", model.aux_head))
    return [{"module": label, "gflops": by_module.get(flops_prefix + key, 0) / 1e9, "params_m": _params(m) / 1e6}
            for label, key, m in rows]


def _build(name: str, num_classes: int, **overrides: Any) -> nn.Module:
    """A preset in eval mode whose sampling layers run the reference (what the tracer records)."""
    from cssformer.models import build_model
    from cssformer_kernels import override_backend

    model = build_model(name, num_classes, **overrides).eval()
    override_backend(model, "reference")
    return model


def model_report(name: str, size: Sequence[int], num_classes: int = 60, **overrides: Any) -> dict[str, Any]:
    """FLOPs / params of a preset at input ``size = (H, W)``, batch 1.

    Returns a JSON-able dict: ``model``, ``size``, ``num_classes``, ``rows`` (``module``, ``gflops``,
    ``params_m``), ``sampling_op_gflops``, ``operators`` (GFLOPs by op), ``uncounted_ops`` (element-wise
    ops fvcore skips, with call counts).
    """
    h, w = (int(s) for s in size)
    model = _build(name, num_classes, img_size=(h, w), **overrides)
    with torch.no_grad():
        analysis = flop_analysis(model, (torch.zeros(1, 3, h, w),))
        by_module = dict(analysis.by_module())
        by_operator = dict(analysis.by_operator())
    sampling = sum(v for k, v in by_operator.items() if k in ("ms_deform_attn_fused", "ms_deform_attn"))
    return {
        "model": name, "size": [h, w], "num_classes": num_classes,
        "rows": _rows(model, by_module),
        "sampling_op_gflops": sampling / 1e9,
        "operators": {k: v / 1e9 for k, v in sorted(by_operator.items(), key=lambda kv: -kv[1])},
        "uncounted_ops": dict(analysis.unsupported_ops()),
    }


def decoder_gflops(decoder: nn.Module, features: list[torch.Tensor]) -> float:
    """GFLOPs of a decoder alone on given backbone features (the paper's decoder-only count)."""
    with torch.no_grad():
        return flop_analysis(decoder.eval(), (features,)).total() / 1e9


def compare_report(backbone_size: str, size: Sequence[int], num_classes: int = 60,
                   decoders: Iterable[str] = ("cssformer", "upernet", "fpn", "segformer", "msdeform-fpn")
                   ) -> dict[str, Any]:
    """Every decoder on the same Swin (``backbone_size``: ``"swin-t"``, ``"nano"``, ...), decoder-only
    GFLOPs and parameters (the shape of the paper's decoder comparison), and the CSSFormer ablation rows
    as GFLOPs over the baseline decoder (input projections + fusion head, no CIA, no MSFE/CSF)."""
    h, w = (int(s) for s in size)
    torch.manual_seed(0)
    features = None
    decoder_rows = []
    for decoder in decoders:
        model = _build(f"{decoder}-{backbone_size}", num_classes, img_size=(h, w))
        if features is None:
            with torch.no_grad():
                features = model.backbone(torch.zeros(1, 3, h, w))
            backbone = {"gflops": decoder_gflops(model.backbone, torch.zeros(1, 3, h, w)),
                        "params_m": _params(model.backbone) / 1e6}
        decoder_rows.append({"decoder": decoder, "model": f"{decoder}-{backbone_size}",
                             "gflops": decoder_gflops(model.decoder, features),
                             "params_m": _params(model.decoder) / 1e6})
    ablation_rows = []
    for label, (use_cia, use_msfe_csf) in ABLATIONS.items():
        model = _build(f"cssformer-{backbone_size}", num_classes, img_size=(h, w), use_cia=use_cia,
                       use_msfe_csf=use_msfe_csf)
        ablation_rows.append({"row": label, "gflops": decoder_gflops(model.decoder, features),
                              "params_m": _params(model.decoder) / 1e6,
                              "paper_delta_gflops": PAPER_ABLATION_GFLOPS.get(label)})
    base = ablation_rows[0]["gflops"]
    paper_scale = h * w / (PAPER_ABLATION_SIZE[0] * PAPER_ABLATION_SIZE[1])
    for row in ablation_rows:
        row["delta_gflops"] = row["gflops"] - base
        # the paper's numbers are at 480 x 480; the added modules' cost grows with the pixel count (every
        # one works per token), so at another size the paper's value is scaled by (h * w) / (480 * 480)
        paper = row["paper_delta_gflops"]
        row["paper_delta_gflops_at_size"] = None if paper is None else paper * paper_scale
        # (ours - paper) / paper: how far our count of the added modules is from the paper's Table 5
        row["paper_rel_diff"] = None if paper is None else (row["delta_gflops"] - paper * paper_scale) / (
            paper * paper_scale)
    return {"backbone": backbone_size, "size": [h, w], "num_classes": num_classes, "backbone_cost": backbone,
            "decoders": decoder_rows, "ablation": ablation_rows, "paper_size": list(PAPER_ABLATION_SIZE),
            "paper_scale": paper_scale}

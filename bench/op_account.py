#!/usr/bin/env python
"""Device-independent op account of a model: one inference and one train step (forward + loss +
backward + AdamW), every aten op that reaches a CUDA backend recorded, without a GPU.

    python bench/op_account.py                                     # cssformer-swin-t + upernet-swin-t, bf16
    python bench/op_account.py --model cssformer-nano --size 128 128 --precision fp32 bf16
    python bench/op_account.py --model cssformer-swin-t --json docs/results/account.json --top 20
    python bench/bench_model.py --account ...                      # the same, from the model benchmark

How (torch >= 2.4, no GPU needed):
- The model's parameters become fake CUDA tensors (``FakeTensorMode``: shapes, dtypes and strides, no
  data). A ``TorchDispatchMode`` on top of it records each aten op after autograd and autocast, i.e.
  what reaches the CUDA backend: one op is about one kernel launch (views, allocations and metadata ops
  excepted; ``_foreach_*`` ops as multi-tensor-apply chunks). Custom ops run their registered fake
  implementation: the sampling op counts as one launch forward, two backward (zero fill + kernel, plus
  a cast for a half-precision value).
- bf16 / fp16 use the CUDA autocast rules: ``torch.autocast("cuda")`` switches itself off without a
  GPU, so the autocast state is set directly (the account checks that a linear really comes out bf16).
- ``F.scaled_dot_product_attention`` goes the way it would on an sm80+ GPU: flash attention for half
  precision without a mask (head dim a multiple of 8, <= 256), memory-efficient attention otherwise.
- Backward: the autograd engine refuses fake CUDA tensors without a GPU, so the recorded forward is
  replayed op by op on fake CPU tensors with autograd on, and ``loss.backward()`` of that replay is
  recorded (each backward op is put in the module group of the forward op whose node runs it).
- Optimizer: one ``AdamW`` step (foreach, or fused with ``--fused-adamw``) on the fake CUDA
  parameters, recorded after a first (state-creating) step.
- Bytes = the footprints of each launch's tensor inputs and outputs; FLOPs from
  ``torch.utils.flop_counter`` (2 per multiply-add; the sampling op as 10 per sample and corner set);
  host syncs = ``_local_scalar_dense`` / ``nonzero`` / ``is_nonzero`` / ``item`` / copies to the host
  of CUDA tensors.
- Estimate (labelled as such): per launch ``--launch-us`` (eager CPU issue cost) plus a roofline
  ``max(bytes / bandwidth, flops / peak)`` per op, with the peak bandwidth and bf16 / fp32 / TF32
  rates of a named GPU (fp32 convolutions at the TF32 rate, cuDNN's default; fp32 matmuls at the
  TF32 rate with ``--tf32`` only).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import environment, write_json  # noqa: E402

aten = torch.ops.aten

DEFAULT_MODELS = ["cssformer-swin-t", "upernet-swin-t"]
# Peak figures of the GPUs the estimate knows: HBM bandwidth (B/s), dense bf16 / tf32 / fp32 FLOP/s.
GPUS = {
    "H200": dict(bandwidth=4.8e12, bf16=989e12, tf32=494e12, fp32=67e12),
    "H100": dict(bandwidth=3.35e12, bf16=989e12, tf32=494e12, fp32=67e12),
    "A100": dict(bandwidth=2.0e12, bf16=312e12, tf32=156e12, fp32=19.5e12),
}
SYNC_OPS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.is_nonzero.default, aten.item.default,
            aten.equal.default, aten.masked_select.default, aten._unique2.default, aten.unique_consecutive.default}
# No kernel: allocation, metadata, aliasing.
NO_LAUNCH = {aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default, aten.new_empty.default,
             aten.new_empty_strided.default, aten.detach.default, aten.alias.default, aten.lift_fresh.default,
             aten._unsafe_view.default, aten.set_.source_Storage_storage_offset, aten.resize_.default,
             aten.sym_size.int, aten.sym_stride.int, aten.sym_numel.default, aten.sym_storage_offset.default}
SOFTMAX_OPS = {aten._softmax.default, aten._safe_softmax.default}
MATMUL_OPS = {"mm", "addmm", "bmm", "baddbmm", "convolution", "convolution_backward", "_scaled_mm"}
SAMPLING_FORWARD = ("cssformer::ms_deform_attn_fused", "cssformer::ms_deform_attn")
# multi_tensor_apply: tensors per launch by list depth, and blocks of 65536 elements per launch.
_MTA_TENSORS = {1: 110, 2: 64, 3: 48, 4: 36, 5: 30}


def module_group(path: str) -> str:
    """The account's group of a module path (``""`` = the segmentor itself)."""
    rules = (("loss", "loss"), ("backbone", "backbone"), ("aux_head", "aux head"),
             ("decoder.input_proj", "neck"), ("decoder.cia", "CIA"), ("decoder.msfe", "MSFE"),
             ("decoder.csf.self_attn", "CSF self-attention"), ("decoder.csf.cross", "CSF cross"),
             ("decoder.csf", "CSF cross"), ("decoder.head", "head"), ("decoder.cls", "head"))
    for prefix, group in rules:
        if path == prefix or path.startswith(prefix + "."):
            return group
    if path.startswith("decoder"):
        parts = path.split(".")
        return "decoder (own ops)" if len(parts) == 1 else f"decoder.{parts[1]}"
    return "segmentor (pad, upsample)"


def in_decoder(group: str) -> bool:
    return group in ("neck", "CIA", "MSFE", "CSF self-attention", "CSF cross", "head", "decoder (own ops)") \
        or group.startswith("decoder.")


def _nbytes(t: torch.Tensor) -> int:
    size = t.numel() * t.element_size()
    try:
        return min(size, t.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError):
        return size


def _tensors(tree) -> list[torch.Tensor]:
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]


def _is_view(func) -> bool:
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


def _written(func, args, kwargs, out) -> list[torch.Tensor]:
    """Tensors an op writes: its mutated arguments, or its outputs."""
    mutated = []
    for arg, value in zip(func._schema.arguments, list(args) + [kwargs.get(a.name) for a in
                                                                func._schema.arguments[len(args):]]):
        if arg.alias_info is not None and arg.alias_info.is_write and value is not None:
            mutated += _tensors(value)
    return mutated or _tensors(out)


def _fake_value(dtype: torch.dtype):
    return True if dtype == torch.bool else (1.0 if dtype.is_floating_point else 1)


class Recorder(TorchDispatchMode):
    """Records every op below autograd / autocast into ``self.ops`` (one dict per op that launches)."""

    def __init__(self, all_device: bool = False):
        super().__init__()
        self.ops: list[dict] = []
        self.group = "segmentor (pad, upsample)"
        self.phase = "forward"
        self.all_device = all_device   # backward replay on CPU stands in for CUDA
        self.trace: Optional[list] = None  # forward trace for the backward replay
        self.keep: list = []

    def _on_device(self, tensors) -> bool:
        return self.all_device or any(t.device.type == "cuda" for t in tensors)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ins = _tensors((args, kwargs))
        if func in SYNC_OPS or (func is aten._to_copy.default and kwargs.get("device") is not None
                                and torch.device(kwargs["device"]).type == "cpu" and
                                any(t.device.type == "cuda" for t in ins)):
            if self._on_device(ins):
                self.ops.append(dict(op=str(func.overloadpacket.__name__), group=self.group, phase=self.phase,
                                     launches=0, read=0, written=0, flops=0, cast=False, sync=True,
                                     shape=None, dtype=None, out_bytes=0, flop_dtype=None))
            if func is aten._local_scalar_dense.default:
                return _fake_value(ins[0].dtype)
            if func is aten.is_nonzero.default or func is aten.equal.default:
                return True
        out = func(*args, **kwargs)
        if self.trace is not None:
            self.trace.append((func, args, kwargs, out, self.group))
            self.keep.append(out)
        if func in NO_LAUNCH or _is_view(func) or func is torch.ops.prim.device.default:
            return out
        outs = _tensors(out)
        if not (ins or outs) or not self._on_device(ins + outs):
            return out
        self.ops.append(self._entry(func, args, kwargs, out, ins, outs))
        return out

    def _entry(self, func, args, kwargs, out, ins, outs) -> dict:
        name = func.overloadpacket.__name__ if func.namespace == "aten" else f"{func.namespace}::{func._opname}"
        written = _written(func, args, kwargs, out)
        seen, read = set(), 0
        for t in ins:
            if id(t) not in seen:
                seen.add(id(t))
                read += _nbytes(t)
        wbytes = sum(_nbytes(t) for t in written)
        launches = 1
        if name.startswith("_foreach_") or name.startswith("_fused_adam"):
            lists = [a for a in args if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor)]
            n = len(lists[0]) if lists else 1
            depth = max(1, min(5, len(lists)))
            blocks = sum(math.ceil(t.numel() / 65536) for t in lists[0]) if lists else 1
            launches = max(math.ceil(n / _MTA_TENSORS[depth]), math.ceil(blocks / 320))
        elif name.startswith("cssformer::") and name.endswith("_backward"):
            launches = 2 + (args[1].dtype not in (torch.float32, torch.float64))
        flops, flop_dtype = 0, None
        packet = func.overloadpacket
        if packet in flop_registry:
            flops = int(flop_registry[packet](*args, **kwargs, out_val=out))
            flop_dtype = ins[0].dtype if ins else None
        elif name in SAMPLING_FORWARD or (name.startswith("cssformer::") and name.endswith("_backward")):
            value = args[1] if name.endswith("_backward") else args[0]
            samp = args[5] if name.endswith("fused_backward") else args[4] if name.endswith("_backward") else (
                args[4] if "fused" in name else args[3])
            n, q, m, l, p = samp.shape[:5]
            flops = 10 * n * q * m * l * p * value.shape[3] * (2 if name.endswith("_backward") else 1)
        cast = (func in (aten._to_copy.default, aten.copy_.default) and bool(ins) and bool(outs)
                and (written or outs)[0].dtype != (ins[-1] if func is aten.copy_.default else ins[0]).dtype)
        big = max(outs, key=_nbytes) if outs else None
        return dict(op=name, group=self.group, phase=self.phase, launches=launches, read=read, written=wbytes,
                    flops=flops, cast=cast, sync=False, shape=None if big is None else list(big.shape),
                    dtype=None if big is None else str(big.dtype).replace("torch.", ""),
                    out_bytes=0 if big is None else _nbytes(big), flop_dtype=None if flop_dtype is None else
                    str(flop_dtype).replace("torch.", ""), softmax=func in SOFTMAX_OPS)


class _SDPA(TorchFunctionMode):
    """``F.scaled_dot_product_attention`` as a CUDA sm80+ GPU runs it (fake CUDA tensors take the math
    path: no GPU to ask), with autocast's cast applied by hand."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        q, k, v = args[:3]
        mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
        dropout = kwargs.get("dropout_p", args[4] if len(args) > 4 else 0.0)
        causal = kwargs.get("is_causal", args[5] if len(args) > 5 else False)
        scale = kwargs.get("scale")
        if q.device.type != "cuda":
            return func(*args, **kwargs)
        if torch.is_autocast_enabled("cuda"):
            dt = torch.get_autocast_dtype("cuda")
            q, k, v = (t.to(dt) for t in (q, k, v))
            mask = mask.to(dt) if mask is not None and mask.dtype.is_floating_point else mask
        half = q.dtype in (torch.float16, torch.bfloat16)
        if mask is None and half and q.shape[-1] % 8 == 0 and q.shape[-1] <= 256:
            return aten._scaled_dot_product_flash_attention(q, k, v, dropout, causal, False, scale=scale)[0]
        if mask is not None and mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
        if mask is not None:
            mask = mask.expand(*q.shape[:-2], q.shape[-2], k.shape[-2])
        need_lse = any(t.requires_grad for t in (q, k, v)) and torch.is_grad_enabled()
        return aten._scaled_dot_product_efficient_attention(q, k, v, mask, need_lse, dropout, causal,
                                                            scale=scale)[0]


@contextlib.contextmanager
def cuda_autocast(dtype: Optional[torch.dtype]):
    """The CUDA autocast state set directly (``torch.autocast("cuda")`` disables itself without a GPU)."""
    if dtype is None:
        yield
        return
    prev = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", prev[0])
        torch.set_autocast_dtype("cuda", prev[1])


def fake_module(module: nn.Module, fm: FakeTensorMode, device: str) -> None:
    """Swaps every parameter and buffer of ``module`` for a fake tensor on ``device`` (in place)."""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[name] = nn.Parameter(fm.from_tensor(p.detach()).to(device),
                                                   requires_grad=p.requires_grad)
        for name, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[name] = fm.from_tensor(b).to(device)


@contextlib.contextmanager
def module_groups(model: nn.Module, rec: Recorder, extra: dict[nn.Module, str]):
    """Sets ``rec.group`` to the group of the innermost module running."""
    names = {m: n for n, m in model.named_modules()}
    names.update(extra)
    stack: list[str] = []

    def pre(mod, _args):
        if mod in names:
            stack.append(rec.group)
            rec.group = module_group(names[mod])

    def post(mod, _args, _out):
        if mod in names and stack:
            rec.group = stack.pop()

    h1 = nn.modules.module.register_module_forward_pre_hook(pre)
    h2 = nn.modules.module.register_module_forward_hook(post)
    try:
        yield
    finally:
        h1.remove()
        h2.remove()


def _to_cpu_kwargs(kwargs: dict) -> dict:
    out = dict(kwargs)
    if "device" in out and out["device"] is not None:
        out["device"] = torch.device("cpu")
    return out


def replay_backward(trace, leaves: dict[int, torch.Tensor], loss: torch.Tensor, rec: Recorder, fm) -> None:
    """Replays the recorded forward on fake CPU tensors with autograd, then records ``backward()``."""
    mapping: dict[int, torch.Tensor] = dict(leaves)
    keep = []

    def cpu(x):
        if not isinstance(x, torch.Tensor):
            return x
        got = mapping.get(id(x))
        if got is None:  # a constant made outside the trace
            got = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="cpu")
            mapping[id(x)] = got
            keep.append(x)
        return got

    def hook_for(group):
        def hook(_grad_outputs):
            rec.group = group
        return hook

    hooked = set()
    for func, args, kwargs, out, group in trace:
        if func in SYNC_OPS or func is torch.ops.prim.device.default:
            continue
        cargs, ckwargs = tree_map(cpu, args), _to_cpu_kwargs(tree_map(cpu, kwargs))
        if func.namespace == "cssformer":  # the CPU stand-ins take the fake impl whatever the backend
            cargs = tuple("reference" if a in ("triton", "auto") else a for a in cargs)
        cout = func(*cargs, **ckwargs)
        for o, c in zip(_tensors(out), _tensors(cout)):
            mapping[id(o)] = c
            node = c.grad_fn
            if node is not None and id(node) not in hooked:
                hooked.add(id(node))
                node.register_prehook(hook_for(group))
    cpu_loss = mapping[id(loss)]
    rec.phase, rec.all_device = "backward", True
    with rec:
        cpu_loss.backward()
    rec.all_device = False


def _check_autocast(dtype, fm) -> None:
    with fm, cuda_autocast(dtype):
        lin = nn.Linear(8, 8)
        fake_module(lin, fm, "cuda")
        y = lin(torch.zeros(2, 8, device="cuda"))
    if y.dtype != dtype:
        raise RuntimeError(f"account: the CUDA autocast state did not apply (linear output {y.dtype}, "
                           f"expected {dtype})")


@contextlib.contextmanager
def _free_level_handling():
    """The sampling op's level handling as it is on a GPU, where it costs nothing per call: the value
    checks read CPU tensors (no sync) and the device copies of the levels come from a cache. Fake
    tensors have no values to read, so both are replaced by allocations while the account runs."""
    from unittest import mock

    from cssformer_kernels import checks

    def levels_on(device, spatial_shapes, level_start_index):
        return (torch.empty(spatial_shapes.shape, dtype=torch.long, device=device),
                torch.empty(level_start_index.shape, dtype=torch.long, device=device))

    with mock.patch.object(checks, "_level_data_check_wanted", lambda *_: False), \
            mock.patch.object(checks, "levels_on", levels_on):
        yield


def account_model(name: str, size=(512, 512), num_classes: int = 150, batch: int = 2, infer_batch: int = 1,
                  precision: str = "bf16", fused_adamw: bool = False, build: Optional[Callable] = None,
                  legacy: bool = False, **overrides: Any) -> dict:
    """The account of one inference and one train step of preset ``name`` (or ``build()``): a dict with
    ``ops`` (one entry per recorded op) per phase. Precision ``fp32`` / ``bf16`` / ``fp16``. ``legacy``:
    the model's former forms (``set_fast_paths(model, False)``). Steady state: caches the model keeps
    per input size are filled by a first, unrecorded inference."""
    from cssformer.models import SegmentationLoss, build_model, set_fast_paths

    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    h, w = size
    torch.manual_seed(0)
    model = build() if build is not None else build_model(name, num_classes, img_size=[h, w], **overrides)
    loss_fn = SegmentationLoss(aux_weight=getattr(model, "aux_weight", 0.4))
    if legacy:
        set_fast_paths(model, False)
        set_fast_paths(loss_fn, False)
    fm = FakeTensorMode(allow_non_fake_inputs=True)
    if dtype is not None:
        _check_autocast(dtype, fm)
    result: dict[str, list] = {}
    with fm, _free_level_handling():
        fake_module(model, fm, "cuda")
        # inference
        rec = Recorder()
        model.eval()
        images = torch.randn(infer_batch, 3, h, w, device="cuda")
        with torch.no_grad(), _SDPA(), cuda_autocast(dtype):
            model(images)  # fills the per-size caches
        with torch.no_grad(), _SDPA(), module_groups(model, rec, {}), cuda_autocast(dtype), rec:
            model(images)
        result["inference"] = rec.ops
        # train step: forward (recorded and traced), backward (replayed), optimizer
        rec = Recorder()
        rec.trace = []
        model.train()
        images = torch.randn(batch, 3, h, w, device="cuda")
        masks = torch.randint(0, num_classes, (batch, h, w), device="cuda")
        with _SDPA(), module_groups(model, rec, {loss_fn: "loss"}), cuda_autocast(dtype), rec:
            loss, _ = loss_fn(model(images), masks)
        trace, rec.trace = rec.trace, None
        forward_ops = rec.ops
        params = [p for p in model.parameters() if p.requires_grad]
        leaves = {id(p): torch.empty_strided(p.shape, p.stride(), dtype=p.dtype).requires_grad_() for p in params}
        leaves[id(images)] = torch.empty(images.shape)
        leaves[id(masks)] = torch.empty(masks.shape, dtype=masks.dtype)
        brec = Recorder()
        replay_backward(trace, leaves, loss, brec, fm)
        del trace, rec
        for p in params:
            p.grad = torch.empty_like(p)
        opt = torch.optim.AdamW(params, lr=1e-4, **(dict(fused=True) if fused_adamw else dict(foreach=True)))
        opt.step()  # creates the state (not a steady-state step)
        orec = Recorder()
        orec.phase, orec.group = "optimizer", "optimizer"
        with orec:
            opt.zero_grad(set_to_none=False)
            opt.step()
        result["train"] = forward_ops + brec.ops + orec.ops
    return result


def account_sampling_call(precision: str = "bf16", batch: int = 2, size=(512, 512), dim: int = 256,
                          heads: int = 8, points: int = 16) -> list[dict]:
    """The ops of one ``MSDeformAttn`` call as the MSFE makes it (queries = all pyramid positions of a
    ``size`` input at strides 4..32, value / offsets / logits from the layer's linears under autocast, fp32
    reference points expanded from ``(1, S, 2)``), forward and backward: what surrounds the op's kernels."""
    from cssformer_kernels import MSDeformAttn

    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    shapes = [(size[0] // s, size[1] // s) for s in (4, 8, 16, 32)]
    S = sum(h * w for h, w in shapes)
    layer = MSDeformAttn(dim, len(shapes), heads, points)
    fm = FakeTensorMode(allow_non_fake_inputs=True)
    with fm, _free_level_handling():
        fake_module(layer, fm, "cuda")
        query = torch.randn(batch, S, dim, device="cuda")
        ref = torch.rand(1, S, 2, device="cuda").expand(batch, -1, -1)
        rec = Recorder()
        rec.trace, rec.group = [], "sampling call"
        with cuda_autocast(dtype), rec:
            out = layer(query, ref, query, shapes).float().sum()
        leaves = {id(p): torch.empty_strided(p.shape, p.stride(), dtype=p.dtype).requires_grad_()
                  for p in layer.parameters()}
        leaves[id(query)] = torch.empty(query.shape, requires_grad=True)
        brec = Recorder()
        brec.group = "sampling call"
        replay_backward(rec.trace, leaves, out, brec, fm)
    return rec.ops + brec.ops


def summarise(ops: list[dict], gpu: str = "H200", launch_us: float = 30.0, tf32: bool = False,
              top: int = 10) -> dict:
    """Totals, per group, per op, casts, syncs, largest intermediates and the estimate of one phase."""
    spec = GPUS[gpu]

    def seconds(o):
        rate = spec["fp32"] if o["flop_dtype"] in ("float32", None) else spec["bf16"]
        # fp32 convolutions: cuDNN allows TF32 by default; fp32 matmuls only with tf32 on
        if o["flop_dtype"] == "float32" and (tf32 or o["op"].startswith("convolution")):
            rate = spec["tf32"]
        return max((o["read"] + o["written"]) / spec["bandwidth"], o["flops"] / rate)

    def total(rows):
        rows = list(rows)
        return dict(launches=sum(o["launches"] for o in rows), bytes=sum(o["read"] + o["written"] for o in rows),
                    flops=sum(o["flops"] for o in rows), casts=sum(o["launches"] for o in rows if o["cast"]),
                    host_syncs=sum(1 for o in rows if o["sync"]),
                    roofline_ms=sum(seconds(o) for o in rows) * 1e3)

    groups = defaultdict(list)
    by_op = defaultdict(list)
    for o in ops:
        groups[o["group"]].append(o)
        by_op[o["op"]].append(o)
    out = dict(total=total(ops))
    out["groups"] = {g: total(rows) for g, rows in sorted(groups.items(), key=lambda kv: -len(kv[1]))}
    out["decoder"] = total(o for o in ops if in_decoder(o["group"]))
    out["by_phase"] = {ph: total(o for o in ops if o["phase"] == ph) for ph in ("forward", "backward", "optimizer")
                       if any(o["phase"] == ph for o in ops)}
    out["ops"] = dict(sorted(((k, total(v)) for k, v in by_op.items()), key=lambda kv: -kv[1]["launches"])[:top * 3])
    out["casts_by_group"] = {g: v["casts"] for g, v in out["groups"].items() if v["casts"]}
    out["syncs"] = [dict(op=o["op"], group=o["group"], phase=o["phase"]) for o in ops if o["sync"]]
    big = sorted((o for o in ops if o["shape"] is not None), key=lambda o: -o["out_bytes"])[:top]
    out["largest"] = [dict(op=o["op"], group=o["group"], phase=o["phase"], shape=o["shape"], dtype=o["dtype"],
                           MB=o["out_bytes"] / 1e6) for o in big]
    soft = [o for o in ops if o.get("softmax") and o["group"] != "loss"]
    out["attention_softmax"] = dict(count=len(soft), largest=max(
        (dict(group=o["group"], shape=o["shape"], dtype=o["dtype"], MB=o["out_bytes"] / 1e6) for o in soft),
        key=lambda d: d["MB"], default=None))
    t = out["total"]
    out["estimate"] = dict(gpu=gpu, launch_us=launch_us, tf32=tf32, label="estimate, not a measurement",
                           launch_ms=t["launches"] * launch_us * 1e-3, roofline_ms=t["roofline_ms"],
                           ms=t["launches"] * launch_us * 1e-3 + t["roofline_ms"])
    return out


def account(models, precisions, size=(512, 512), num_classes=150, batch=2, gpu="H200", launch_us=30.0,
            fused_adamw=False, tf32=False, top=10, legacy=False) -> dict:
    """Summaries of ``models`` x ``precisions``: ``{"rows": [{model, precision, inference, train}]}``."""
    rows = []
    for name in models:
        for precision in precisions:
            raw = account_model(name, size, num_classes, batch, precision=precision, fused_adamw=fused_adamw,
                                legacy=legacy)
            rows.append(dict(model=name, precision=precision, size=list(size), num_classes=num_classes, batch=batch,
                             fused_adamw=fused_adamw, legacy=legacy,
                             **{phase: summarise(ops, gpu, launch_us, tf32 and precision == "fp32", top)
                                for phase, ops in raw.items()}))
    return dict(rows=rows)


def print_account(result: dict, top: int = 10) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=180)
    table = Table(title="Op account (fake CUDA tensors, CUDA autocast rules; estimate = launches x launch cost "
                  "+ roofline, not a measurement)")
    for col in ("model", "prec", "phase", "launches", "decoder launches", "GB moved", "GFLOP", "casts",
                "host syncs", "attn softmax", f"est. ms ({result['rows'][0]['train']['estimate']['gpu']})"):
        table.add_column(col, justify="left" if col in ("model", "prec", "phase") else "right")
    for r in result["rows"]:
        for phase in ("inference", "train"):
            s = r[phase]
            t = s["total"]
            table.add_row(r["model"], r["precision"], phase, str(t["launches"]), str(s["decoder"]["launches"]),
                          f"{t['bytes'] / 1e9:.1f}", f"{t['flops'] / 1e9:.0f}", str(t["casts"]),
                          str(t["host_syncs"]), str(s["attention_softmax"]["count"]), f"{s['estimate']['ms']:.1f}")
    console.print(table)
    for r in result["rows"]:
        s = r["train"]
        g = Table(title=f"{r['model']} {r['precision']} train step by group")
        for col in ("group", "launches", "GB", "GFLOP", "casts", "syncs", "roofline ms"):
            g.add_column(col, justify="left" if col == "group" else "right")
        for name, v in s["groups"].items():
            g.add_row(name, str(v["launches"]), f"{v['bytes'] / 1e9:.2f}", f"{v['flops'] / 1e9:.1f}", str(v["casts"]),
                      str(v["host_syncs"]), f"{v['roofline_ms']:.2f}")
        console.print(g)
        ops = ", ".join(f"{k} {v['launches']}" for k, v in list(s["ops"].items())[:top])
        console.print(f"  top ops by launches: {ops}")
        console.print("  largest: " + "; ".join(f"{b['op']} {b['group']} {b['shape']} {b['dtype']} {b['MB']:.0f} MB"
                                              for b in s["largest"][:5]))
        if s["syncs"]:
            console.print(f"  host syncs: {s['syncs']}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    add_arguments(p)
    p.add_argument("--model", nargs="+", help=f"presets (default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--precision", nargs="+", choices=["fp32", "bf16", "fp16"], default=["bf16"])
    p.add_argument("--size", nargs=2, type=int, default=[512, 512], metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=2, help="train step batch (inference: batch 1)")
    p.add_argument("--num-classes", type=int, default=150)
    p.add_argument("--json", type=Path, help="write the account here (e.g. docs/results/account.json)")
    p.add_argument("--sampling-call", action="store_true",
                   help="account one MSDeformAttn call (MSFE inputs) per precision instead of whole models")
    return check_args(p, p.parse_args(argv))


def add_arguments(p) -> None:
    """The account's own options (shared with ``bench_model.py --account``)."""
    p.add_argument("--gpu", choices=list(GPUS), default="H200", help="GPU of the estimate")
    p.add_argument("--launch-us", type=float, default=30.0, help="eager cost per launch in the estimate")
    p.add_argument("--fused-adamw", action="store_true", help="AdamW(fused=True) instead of foreach")
    p.add_argument("--tf32", action="store_true", help="fp32 matmuls / convs on TF32 tensor cores (the estimate's "
                   "rate; bench_model.py timings: runtime.set_tf32)")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--legacy", action="store_true", help="the model's former forms (set_fast_paths(model, False))")


def check_args(p, args):
    from cssformer.models import list_models

    for name in args.model or []:
        if name not in list_models():
            p.error(f"--model: unknown preset {name!r}")
    if min(args.size) < 32 or any(s % 32 for s in args.size):
        p.error(f"--size: got {args.size}, expected multiples of 32")
    if args.batch < 1 or args.num_classes < 1:
        p.error("--batch / --num-classes: expected positive integers")
    return args


def print_sampling_call(precisions, size, batch) -> dict:
    """Per precision, the ops of one sampling-layer call (forward + backward) by name, dtype and shape."""
    from rich.console import Console
    from rich.table import Table

    out = {}
    for precision in precisions:
        ops = account_sampling_call(precision, batch, size)
        rows = defaultdict(lambda: [0, 0])
        for o in ops:
            key = (o["phase"], o["op"], o["dtype"], str(o["shape"]))
            rows[key][0] += o["launches"]
            rows[key][1] += o["read"] + o["written"]
        out[precision] = dict(total=summarise(ops)["total"],
                              ops=[dict(phase=k[0], op=k[1], dtype=k[2], shape=k[3], launches=v[0], MB=v[1] / 1e6)
                                   for k, v in rows.items()])
        table = Table(title=f"one MSDeformAttn call (MSFE inputs, {size[0]}x{size[1]}, batch {batch}), {precision}")
        for col in ("phase", "op", "dtype", "shape", "launches", "MB"):
            table.add_column(col)
        for r in out[precision]["ops"]:
            table.add_row(r["phase"], r["op"], str(r["dtype"]), r["shape"], str(r["launches"]), f"{r['MB']:.1f}")
        Console(width=160).print(table)
    return out


def run(args) -> dict:
    if getattr(args, "sampling_call", False):
        result = dict(sampling_call=print_sampling_call(args.precision, tuple(args.size), args.batch))
        result["environment"] = environment(torch.device("cpu"), method="fake CUDA tensors + TorchDispatchMode")
        if args.json:
            print(f"wrote {write_json(args.json, **result)}")
        return result
    result = account(args.model or DEFAULT_MODELS, args.precision, tuple(args.size), args.num_classes, args.batch,
                     args.gpu, args.launch_us, args.fused_adamw, args.tf32, args.top, args.legacy)
    result["environment"] = environment(torch.device("cpu"), method="fake CUDA tensors + TorchDispatchMode")
    print_account(result, args.top)
    if args.json:
        print(f"wrote {write_json(args.json, **result)}")
    return result


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

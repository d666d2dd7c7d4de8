#!/usr/bin/env python
"""Benchmark of multi-scale deformable attention (``cssformer_kernels``): forward and forward+backward
time per (shape, dtype, implementation, where the level tensors live), next to the bandwidth floor and
the anchors (the fastest public Triton kernel, see ``ANCHORS_US``).

    python bench/bench_msda.py                                   # presets detr_enc seg512, fp32 bf16
    python bench/bench_msda.py --preset seg512 --dtype bf16 --impl triton_fused
    python bench/bench_msda.py --shape 2,300,8,32,4,64x64,32x32 --json out.json
    python bench/bench_msda.py --smoke                           # CI: tiny shape, CPU, a few seconds
    python bench/bench_msda.py --levels device host              # level tensors on the GPU, then on the CPU
    python bench/bench_msda.py --preset cssformer --dtype bf16 --impl triton_fused reference --inputs local recorded
    python bench/bench_msda.py --preset seg512 --configs auto default 32x1x4x1   # autotune's pick vs forced configs

Implementations: ``triton`` (canonical op, Triton), ``triton_fused`` (fused op, Triton), ``reference``
(canonical op, PyTorch reference).

Presets: the kernels' (``detr_enc``, ``seg512``) and the model's (``cssformer``, ``cssformer_b1``: the
sampling problem of cssformer-swin-t at 512x512, batch 2 and 1; in 16-bit rows the reference points stay
fp32, as the model passes them under autocast).

Inputs (``--inputs``, a field of every row; ``bench/msda_inputs.py``): ``uniform`` (anywhere on the maps,
the default), ``local`` (each query at its own pyramid position, offsets ~N(0, 2 px) per level) and
``recorded`` (captured from cssformer-swin-t at random initialisation, or a Deformable-DETR encoder
layer at its initialisation at ``detr_enc``; one row per recorded layer). ``local`` and ``recorded``
need one query per pyramid token (``Q == S``).

Configs (``--configs``, a field of every row): ``auto`` (what the op picks: autotune on CUDA), ``default``
(the untuned config, ``autotune.DEFAULT_CONFIG``) or config names ``BLOCK_RxP_BLOCKxwarpsxstages`` with
optional ``,KEY=VALUE`` items for other config keys (a layout, say): each forced through
``autotune.choose``, so old and new layouts are timed side by side in one run.

``vs fp32 ref`` = the PyTorch reference's fp32 time on the same shape, inputs and pass over the row's
time (when the run has that reference row).

Levels (``--levels``): ``device`` passes ``spatial_shapes`` / ``level_start_index`` on value's device, as
Deformable DETR, Mask2Former and DINO do (the op reads them on the host once per distinct tensor, so
the timed calls do not sync); ``host`` passes them on the CPU (never a sync). Every row is first checked against the reference (run in fp32 on the
same inputs): output and all input gradients; a mismatch or an error makes the exit status 1.

Timing: on CUDA ``triton.testing.do_bench`` (median; it also flushes L2 before each call), rotating
among a few input sets when one set fits in L2; elsewhere the median of a few ``time.perf_counter``
repetitions. Forward+backward is ``torch.autograd.grad`` of the output with a fixed random
grad_output with respect to every floating input (no ``.grad`` accumulation).

Bandwidth floor (see :func:`floor_bytes`): bytes that must move over the measured device copy
bandwidth (one large copy; bytes read + written over its time). ``x floor`` = time / floor.
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

from cssformer_kernels import ms_deform_attn, ms_deform_attn_fused  # noqa: E402
from cssformer_kernels import shapes as problem_shapes
from cssformer_kernels.shapes import ProblemShape, make_inputs  # noqa: E402
import msda_inputs  # noqa: E402

PRESETS = benchlib.presets()

# Anchors: the fastest public Triton kernel, measured on an NVIDIA H200 (torch 2.11, Triton 3.6, median
# of do_bench). Microseconds: (forward, forward+backward).
# Keyed (shape, dtype): uniform inputs.
ANCHORS_US = {
    ("detr_enc", "fp32"): (242, 1307),
    ("detr_enc", "bf16"): (223, 1021),
    ("seg512", "fp32"): (456, 2504),
    ("seg512", "bf16"): (426, 1945),
}
# The same kernel measured side by side with ours on local inputs (issue 14's table: NVIDIA H200, torch 2.11,
# Triton 3.6, do_bench median, same process and inputs). Keyed (shape, dtype, inputs).
ANCHORS_BY_INPUTS_US = {
    ("detr_enc", "fp32", "local"): (201, 1205),
    ("detr_enc", "bf16", "local"): (220, 975),
    ("seg512", "fp32", "local"): (387, 2345),
    ("seg512", "bf16", "local"): (419, 1895),
}
TARGET_FRACTION = 0.5  # our target: half the anchor's time

SMOKE_SHAPE = ProblemShape(N=1, levels=((6, 5), (3, 3)), M=2, D=8, P=2, Q=10)
DTYPES = problem_shapes.DTYPES
# Check: normwise relative error per tensor (output and every gradient) against the reference in fp32.
CHECK_TOL = {"fp32": 1e-4, "fp16": 5e-3, "bf16": 3e-2}
# Gradients of coordinates (locations, reference points, offsets) are one-sided on pixel centres (the
# bilinear kink). Any fp32 evaluation puts a few points of a large problem on the other side of a
# centre than exact arithmetic does: at detr_enc the fp32 *reference* itself is 9.5e-4 (offsets) and
# 1.3e-3 (reference points) away from a float64 one (docs/performance.md). Their bound is looser.
COORD_TOL = {"fp32": 5e-3, "fp16": 5e-2, "bf16": 1e-1}
MODES = ("fwd", "fwd+bwd")
LEVELS = ("device", "host")  # where the level tensors are passed: value's device, or the CPU


class Impl(NamedTuple):
    op: Callable
    backend: str
    fused: bool

    @property
    def tensor_names(self) -> tuple[str, ...]:
        """What ``run_impl`` returns: the output, then the gradients of the floating inputs in order."""
        if self.fused:
            return ("output", "grad value", "grad reference_points", "grad offsets", "grad logits")
        return ("output", "grad value", "grad locations", "grad weights")


IMPLS = {
    "triton": Impl(ms_deform_attn, "triton", fused=False),
    "triton_fused": Impl(ms_deform_attn_fused, "triton", fused=True),
    "reference": Impl(ms_deform_attn, "reference", fused=False),
}


def floor_bytes(shape: ProblemShape, itemsize: int, *, fused: bool = False, backward: bool = False) -> int:
    """Bytes that must move, all tensors in one dtype of ``itemsize`` bytes.

    Forward: every floating input read once and the output written once::

        value N*S*M*D + locations N*Q*M*L*P*2 + weights N*Q*M*L*P + output N*Q*M*D

    (fused form: offsets instead of locations, logits instead of weights, plus reference points
    N*Q*L*2). Forward+backward adds grad_output read once, one gradient per floating input written
    once, and the inputs read again by the backward: ``3 * inputs + 2 * output``. Integer level
    tensors are ignored. (A count with one more value-sized transfer, e.g. zeroing grad_value for an
    atomic backward, gives forward+backward floors of 113/221 us in fp32 for detr_enc/seg512 on an H200.)
    """
    N, Q, M, D, P, L, S = shape.N, shape.num_queries, shape.M, shape.D, shape.P, shape.L, shape.S
    inputs = N * S * M * D + N * Q * M * L * P * 3 + (N * Q * L * 2 if fused else 0)
    output = N * Q * M * D
    return itemsize * (3 * inputs + 2 * output if backward else inputs + output)


def parse_shape(text: str) -> ProblemShape:
    try:
        return problem_shapes.parse_shape(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--shape: {err}") from None


def make_timer(device: torch.device, args) -> Callable[[Callable], float]:
    """A function ``fn -> median time in microseconds``."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=args.warmup, rep=args.rep, return_mode="median") * 1e3

    def perf_counter_median(fn):
        if not args.smoke:  # (in smoke mode the numerical check has warmed up, the interpreter is slow)
            fn()
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e6

    return perf_counter_median


def copy_bandwidth(device: torch.device, nbytes: int, timer) -> float:
    """Bytes/s of one large device copy: (bytes read + bytes written) / time."""
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch of dst outside the timing
    seconds = timer(lambda: dst.copy_(src)) * 1e-6
    return 2 * src.numel() * src.element_size() / seconds


class InputSet(NamedTuple):
    args: tuple  # positional arguments of the op
    leaves: list  # floating inputs (gradients wanted)
    grad_output: torch.Tensor


def anchor(shape_name: str, dtype_name: str, inputs: str):
    """(forward, forward+backward) anchor times in us, or (None, None)."""
    if (shape_name, dtype_name, inputs) in ANCHORS_BY_INPUTS_US:
        return ANCHORS_BY_INPUTS_US[(shape_name, dtype_name, inputs)]
    return ANCHORS_US.get((shape_name, dtype_name), (None, None)) if inputs == "uniform" else (None, None)


def parse_config(text: str):
    """``auto``, ``default`` or ``BLOCK_RxP_BLOCKxwarpsxstages[,KEY=VALUE...]`` -> ``None`` / a config dict."""
    if text == "auto":
        return None
    from cssformer_kernels import autotune

    if text == "default":
        return dict(autotune.DEFAULT_CONFIG)
    head, *extra = text.split(",")
    parts = head.split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts) or not all("=" in e for e in extra):
        raise ValueError(f"--configs: got {text!r}, expected auto, default or BLOCK_RxP_BLOCKxwarpsxstages"
                         "[,KEY=VALUE...], e.g. 32x4x4x1")
    config = dict(zip(("BLOCK_R", "P_BLOCK", "num_warps", "num_stages"), map(int, parts)))
    for item in extra:
        k, v = item.split("=", 1)
        config[k] = int(v) if v.lstrip("-").isdigit() else v
    return config


class forced_config:
    """Within it, every kernel launch uses ``config`` (``None``: whatever autotune chooses)."""

    def __init__(self, config):
        self.config = config

    def __enter__(self):
        from cssformer_kernels import autotune

        self.saved = autotune.choose
        if self.config is not None:
            autotune.choose = lambda *args, **kwargs: dict(self.config)
        return self

    def __exit__(self, *exc):
        from cssformer_kernels import autotune

        autotune.choose = self.saved


def _model_like(shape_name: str, shape: ProblemShape, dtype, fused: bool, inputs: str, seed: int):
    """Floating tensors ``[value, locations, weights]`` / ``[value, reference_points, offsets, logits]`` on
    the CPU: the inputs' distribution, the preset's dtypes (fp32 reference points at the model's shapes)."""
    from cssformer_kernels import fused_locations_and_weights
    from cssformer_kernels.shapes import level_tensors

    layers = []
    if inputs == "uniform":
        args = make_inputs(shape, dtype=torch.float32, seed=seed, fused=fused)
        layers.append((None, [args[0], *args[3:]]))
    else:
        g = torch.Generator().manual_seed(seed)
        value = torch.randn(shape.N, shape.S, shape.M, shape.D, generator=g)
        # (recorded: one recording; the seed varies value only)
        for layer, (ref, offsets, logits) in msda_inputs.fused_sets(inputs, shape_name, shape,
                                                                     seed if inputs == "local" else 0):
            if fused:
                layers.append((layer, [value, ref, offsets, logits]))
            else:
                loc, w = fused_locations_and_weights(level_tensors(shape.levels)[0], ref, offsets, logits)
                layers.append((layer, [value, loc, w]))
    out = []
    for layer, tensors in layers:
        dts = [dtype] * len(tensors)
        if fused:
            dts[1] = benchlib.ref_dtype(shape_name, dtype)
        out.append((layer, [t.to(dt) for t, dt in zip(tensors, dts)]))
    return out


def input_sets(shape: ProblemShape, dtype, device, fused: bool, count: int, levels: str = "device",
               inputs: str = "uniform", shape_name: str = "", layer=None) -> list[InputSet]:
    """``count`` input sets (seeds 0, 1, ...); ``layer``: which recorded layer (``inputs="recorded"``)."""
    from cssformer_kernels.shapes import level_tensors

    sets = []
    spatial_shapes, level_start_index = level_tensors(shape.levels)
    for seed in range(count):
        found = dict(_model_like(shape_name, shape, dtype, fused, inputs, seed))
        if layer not in found:
            raise ValueError(f"{inputs} inputs: no layer {layer!r} recorded for {shape_name or shape.describe()}")
        floats = [t.to(device).requires_grad_(True) for t in found[layer]]
        args = (floats[0], spatial_shapes.to(device), level_start_index.to(device), *floats[1:])
        if levels == "host":
            args = (args[0], args[1].cpu(), args[2].cpu(), *args[3:])
        g = torch.Generator().manual_seed(1000 + seed)
        grad_output = torch.randn(shape.N, shape.num_queries, shape.M * shape.D, generator=g)
        leaves = [t for t in args if t.is_floating_point()]
        sets.append(InputSet(args, leaves, grad_output.to(device=device, dtype=dtype)))
    return sets


def run_impl(impl: Impl, s: InputSet, backend: str | None = None, upcast: bool = False):
    """Output and gradients of all floating inputs (optionally on fp32 copies of the inputs)."""
    args = [t.detach().float().requires_grad_() if upcast and t.is_floating_point() else t for t in s.args]
    leaves = [t for t in args if t.is_floating_point()]
    out = impl.op(*args, backend=backend or impl.backend)
    grads = torch.autograd.grad(out, leaves, s.grad_output.to(out.dtype))
    return [out.detach(), *grads]


def check(impl: Impl, s: InputSet, dtype_name: str) -> tuple[float, str | None]:
    """Largest normwise relative error ``||x - ref|| / ||ref||`` over the output and the gradients, and a
    message for the first tensor over its bound (``CHECK_TOL``, ``COORD_TOL`` for coordinates).

    Normwise, not elementwise: on a pixel centre a location's gradient is one-sided, and two correct
    implementations that round ``x * W - 0.5`` differently take different sides there (O(1) on those
    few elements)."""
    got = run_impl(impl, s)
    want = run_impl(impl, s, backend="reference", upcast=True)
    worst, failure = 0.0, None
    for name, a, b in zip(impl.tensor_names, got, want):
        err = ((a.float() - b).norm() / b.norm().clamp_min(1e-12)).item()
        coordinate = name in ("grad locations", "grad reference_points", "grad offsets")
        tol = (COORD_TOL if coordinate else CHECK_TOL)[dtype_name]
        worst = max(worst, err)
        if not err <= tol and failure is None:
            failure = f"mismatch vs reference: {name} normwise rel err {err:.2e} > {tol:.0e}"
    return worst, failure


def bench_rows(name: str, shape: ProblemShape, dtype_name: str, impl_name: str, device, timer, bandwidth,
               levels: str = "device", inputs: str = "uniform", layer=None, config: str = "auto"):
    """The two rows (fwd, fwd+bwd) of one (shape, dtype, implementation, levels, inputs, recorded layer,
    config)."""
    impl, dtype = IMPLS[impl_name], DTYPES[dtype_name]
    itemsize = torch.empty((), dtype=dtype).element_size()
    forced = parse_config(config) if impl.backend == "triton" else None
    base = dict(shape=name, shape_desc=shape.describe(), dtype=dtype_name, impl=impl_name, levels=levels,
                inputs=inputs, layer=layer, config=config if impl.backend == "triton" else None, time_us=None,
                rel_err=None, ok=False, error=None)
    rows = {m: dict(base, mode=m) for m in MODES}
    anchors = anchor(name, dtype_name, inputs)
    for i, mode in enumerate(MODES):
        fb = floor_bytes(shape, itemsize, fused=impl.fused, backward=mode == "fwd+bwd")
        rows[mode].update(floor_bytes=fb, floor_us=fb / bandwidth * 1e6, anchor_us=anchors[i],
                          target_us=anchors[i] * TARGET_FRACTION if anchors[i] else None)
    try:
        set_bytes = floor_bytes(shape, itemsize, fused=impl.fused, backward=True)
        l2 = torch.cuda.get_device_properties(device).L2_cache_size if device.type == "cuda" else 0
        sets = input_sets(shape, dtype, device, impl.fused, 4 if set_bytes < l2 else 1, levels, inputs, name, layer)
        with forced_config(forced):
            err, failure = check(impl, sets[0], dtype_name)
        cycle = itertools.cycle(sets)

        def fwd():
            s = next(cycle)
            with torch.no_grad():
                impl.op(*s.args, backend=impl.backend)

        def fwd_bwd():
            s = next(cycle)
            torch.autograd.grad(impl.op(*s.args, backend=impl.backend), s.leaves, s.grad_output)

        for mode, fn in zip(MODES, (fwd, fwd_bwd)):
            with forced_config(forced):
                t = timer(fn)
            r = rows[mode]
            r.update(time_us=t, ratio=t / r["floor_us"], rel_err=err, ok=failure is None,
                     speedup=r["anchor_us"] / t if r["anchor_us"] else None, input_sets=len(sets), error=failure)
    except Exception as e:  # noqa: BLE001 - reported in the row, the exit status says it failed
        for r in rows.values():
            r["error"] = f"{type(e).__name__}: {e}"
    return list(rows.values())


def print_table(rows, title: str, caption: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    def num(v, unit=""):
        return "-" if v is None else (f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}") + unit

    def short(error):  # first word and last line: e.g. "CompilationError: ValueError('...')"
        lines = [line.strip() for line in error.splitlines() if line.strip()]
        return (lines[0] if len(lines) == 1 else f"{lines[0].split(':')[0]}: {lines[-1]}")[:70]

    table = Table(title=title, caption=caption)
    left = ("shape", "dtype", "impl", "inputs", "config", "levels", "pass", "check")
    for col in ("shape", "dtype", "impl", "inputs", "config", "levels", "pass", "time µs", "floor µs", "x floor",
                "vs fp32 ref", "anchor µs", "anchor/time", "target µs", "check"):
        table.add_column(col, justify="left" if col in left else "right")
    for r in rows:
        status = "[green]ok[/]" if r["ok"] else f"[red]{escape(short(r['error']))}[/]"
        if r["rel_err"] is not None and r["ok"]:
            status += f" ({r['rel_err']:.0e})"
        inputs = r.get("inputs", "uniform") + (f" ({r['layer']})" if r.get("layer") else "")
        table.add_row(r["shape"], r["dtype"], r["impl"], inputs, r.get("config") or "-", r["levels"], r["mode"],
                      num(r["time_us"]), num(r["floor_us"]), num(r.get("ratio"), "x"), num(r.get("vs_ref_fp32"), "x"),
                      num(r["anchor_us"]), num(r.get("speedup"), "x"), num(r["target_us"]), status)
    Console(width=max(160, Console().width)).print(table)


def input_layers(inputs: str, shape_name: str, shape: ProblemShape) -> list:
    """The recorded layers of a shape (``[None]`` for drawn inputs; ``[]`` when there are none)."""
    if inputs != "recorded":
        return [None] if inputs == "uniform" or shape.Q is None or shape.Q == shape.S else []
    return [layer for layer, _ in msda_inputs.recorded_fused(shape_name, shape)]


def inputs_note(inputs: str) -> str:
    return ("recordings exist for the cssformer and detr_enc presets" if inputs == "recorded"
            else "needs one query per pyramid token")


def add_reference_speedup(rows: list[dict]) -> None:
    """``vs_ref_fp32``: the fp32 PyTorch reference's time at the same shape, inputs, layer, levels and pass
    over the row's time."""
    def key(r):
        return r["shape"], r["inputs"], r["layer"], r["levels"], r["mode"]

    ref = {key(r): r["time_us"] for r in rows if r["impl"] == "reference" and r["dtype"] == "fp32" and r["time_us"]}
    for r in rows:
        t = ref.get(key(r))
        r["vs_ref_fp32"] = t / r["time_us"] if t and r["time_us"] else None


def environment(device, bandwidth: float, copy_bytes: int) -> dict:
    return benchlib.environment(
        device, timing="triton.testing.do_bench median" if device.type == "cuda" else "time.perf_counter median",
        copy_bandwidth_GBps=bandwidth / 1e9, copy_bytes=copy_bytes,
        anchors_us={f"{k[0]}/{k[1]}": v for k, v in ANCHORS_US.items()},
        anchors_by_inputs_us={"/".join(k): v for k, v in ANCHORS_BY_INPUTS_US.items()}, anchors_device="NVIDIA H200")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", nargs="+", choices=sorted(PRESETS), help="named shapes (default: all presets)")
    p.add_argument("--shape", nargs="+", type=parse_shape, default=[], help="N,Q,M,D,P,H1xW1,H2xW2,...")
    p.add_argument("--dtype", nargs="+", choices=list(DTYPES), help="default fp32 bf16 (smoke: fp32)")
    p.add_argument("--impl", nargs="+", choices=list(IMPLS), default=list(IMPLS))
    p.add_argument("--levels", nargs="+", choices=list(LEVELS), default=["device"],
                   help="where the level tensors are passed: on value's device (default, as drop-in users "
                        "do) and/or on the CPU")
    p.add_argument("--inputs", nargs="+", choices=msda_inputs.INPUTS, default=["uniform"],
                   help="input distributions (local, recorded: one query per pyramid token)")
    p.add_argument("--configs", nargs="+", default=["auto"],
                   help="Triton configs: auto (autotune's choice), default (the untuned config) and/or names "
                        "BLOCK_RxP_BLOCKxwarpsxstages[,KEY=VALUE...] forced for every launch")
    p.add_argument("--json", type=Path, help="default: ./bench_results/msda-<device>-<UTC time>.json")
    p.add_argument("--smoke", action="store_true",
                   help="tiny shape, fp32, few repetitions; Triton through the interpreter without CUDA")
    p.add_argument("--warmup", type=float, default=25, help="CUDA: do_bench warm-up, ms")
    p.add_argument("--rep", type=float, default=100, help="CUDA: do_bench repetition time, ms")
    p.add_argument("--reps", type=int, default=3, help="CPU: timed repetitions (median)")
    p.add_argument("--copy-mib", type=int, help="copy-bandwidth buffer (default 1024 on CUDA, 256 on CPU)")
    args = p.parse_args(argv)
    for text in args.configs:
        try:
            parse_config(text)
        except ValueError as err:
            p.error(str(err))
    if args.smoke:
        args.warmup, args.rep, args.reps = 1, 5, 2
        args.copy_mib = args.copy_mib or 16
    args.dtype = args.dtype or (["fp32"] if args.smoke else ["fp32", "bf16"])
    if args.preset is None and not args.shape:
        args.preset = [] if args.smoke else list(PRESETS)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke and device.type == "cpu":
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            print("warning: triton was imported before TRITON_INTERPRET=1 could be set", file=sys.stderr)
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: Triton kernels on CPU tensors
    shapes = [(n, PRESETS[n]) for n in args.preset or []] + [(f"custom{i}", s) for i, s in enumerate(args.shape)]
    if args.smoke and not shapes:
        shapes = [("smoke", SMOKE_SHAPE)]

    timer = make_timer(device, args)
    copy_bytes = (args.copy_mib or (1024 if device.type == "cuda" else 256)) << 20
    bandwidth = copy_bandwidth(device, copy_bytes, timer)
    name = benchlib.device_name(device)

    rows = []
    for (shape_name, shape), inputs in itertools.product(shapes, args.inputs):
        layers = input_layers(inputs, shape_name, shape)
        if not layers:
            print(f"  {shape_name}: no {inputs} inputs for this shape ({inputs_note(inputs)}), skipped")
        for layer, dtype_name, impl_name, levels in itertools.product(layers, args.dtype, args.impl, args.levels):
            for config in (args.configs if IMPLS[impl_name].backend == "triton" else ["auto"]):
                rows += bench_rows(shape_name, shape, dtype_name, impl_name, device, timer, bandwidth, levels, inputs,
                                   layer, config)
    add_reference_speedup(rows)

    env = environment(device, bandwidth, copy_bytes)
    title = f"MSDA benchmark on {name} ({device.type}), torch {env['torch']}, triton {env['triton']}"
    caption = (f"floor: bytes / {bandwidth / 1e9:.1f} GB/s copy; vs fp32 ref: the PyTorch reference's fp32 time / "
               f"time; anchor: fastest public Triton kernel, H200; target: {TARGET_FRACTION}x anchor; levels: where "
               "spatial_shapes / level_start_index are passed")
    print_table(rows, title, caption)
    for shape_name, shape in shapes:
        print(f"  {shape_name}: {shape.describe()}")

    path = benchlib.write_json(args.json or benchlib.default_json_path("msda", name), environment=env, rows=rows)
    failed = [r for r in rows if not r["ok"]]
    print(f"wrote {path}; {len(rows) - len(failed)}/{len(rows)} rows ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

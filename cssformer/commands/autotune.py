"""``cssformer autotune``: tune the sampling kernels for this GPU ahead of time.

Runs the forward and backward of each requested problem (canonical and fused forms, each dtype) with
tuning on, so every kernel key the problem needs gets tuned and saved in the per-GPU cache
(``cssformer_kernels.autotune.cache_path()``), then prints what each config took and which won.
"""
from __future__ import annotations

import argparse
import os

from cssformer.errors import UsageError

FORMS = ("canonical", "fused")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cssformer_kernels.shapes import DTYPES, PRESETS

    parser.add_argument("--preset", nargs="+", choices=sorted(PRESETS), default=[],
                        help="named problem shapes (default: all presets when no --shape is given)")
    parser.add_argument("--shape", nargs="+", default=[], metavar="N,Q,M,D,P,HxW,...",
                        help="explicit shapes, e.g. 2,S,8,32,4,64x64,32x32 (Q=S: one query per position)")
    parser.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--form", nargs="+", choices=FORMS, default=list(FORMS))
    parser.add_argument("--forward-only", action="store_true", help="skip the backward kernels")
    parser.add_argument("--force", action="store_true", help="re-tune keys that are already cached")
    parser.add_argument("--deterministic", action="store_true",
                        help="also tune the deterministic backward (used under torch.use_deterministic_algorithms)")


def _problems(args):
    from cssformer_kernels.shapes import PRESETS, parse_shape

    problems = [(name, PRESETS[name]) for name in args.preset]
    for text in args.shape:
        try:
            problems.append((text, parse_shape(text)))
        except ValueError as err:
            raise UsageError(str(err)) from None
    return problems or list(PRESETS.items())


def run(args) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from cssformer_kernels import autotune, ms_deform_attn, ms_deform_attn_fused
    from cssformer_kernels.shapes import DTYPES, make_inputs

    console = Console()
    problems = _problems(args)
    if not torch.cuda.is_available():
        cfg = autotune.INTERPRETER_CONFIG
        console.print(
            "No CUDA device: on CPU tensors the kernels run under the Triton interpreter "
            f"(TRITON_INTERPRET=1) with one config, BLOCK_R={cfg['BLOCK_R']}, num_warps={cfg['num_warps']}; "
            "there is nothing to tune. Problems requested: "
            + "; ".join(f"{name} ({shape.describe()})" for name, shape in problems)
        )
        return 0
    if os.environ.get("CSSFORMER_AUTOTUNE") == "0":
        raise UsageError("CSSFORMER_AUTOTUNE=0 is set: unset it to tune")

    device = torch.device("cuda")
    table = Table(title=f"Autotune on {torch.cuda.get_device_name(device)} -> {autotune.cache_path()}")
    for column in ("problem", "dtype", "kernel", "config", "time (us)", "chosen"):
        table.add_column(column, justify="right" if column == "time (us)" else "left")
    deterministic_modes = (False, True) if args.deterministic else (False,)
    for name, shape in problems:
        for dtype_name in args.dtype:
            for form in args.form:
                fused = form == "fused"
                inputs = make_inputs(shape, dtype=DTYPES[dtype_name], device=device, fused=fused,
                                     requires_grad=not args.forward_only)
                op = ms_deform_attn_fused if fused else ms_deform_attn
                for deterministic in deterministic_modes:
                    with autotune.tuning_session(force=args.force) as records:
                        torch.use_deterministic_algorithms(deterministic)
                        try:
                            out = op(*inputs, backend="triton")
                            if not args.forward_only:
                                out.backward(torch.randn_like(out))
                        finally:
                            torch.use_deterministic_algorithms(False)
                    for kernel, key, timings, chosen in records:
                        label = f"{kernel} ({form}{', det' if deterministic else ''})"
                        if timings is None:
                            table.add_row(name, dtype_name, label, _fmt(chosen), "cached", "yes")
                            continue
                        for config, ms in sorted(timings, key=lambda r: r[1]):
                            table.add_row(name, dtype_name, label, _fmt(config),
                                          f"{ms * 1000:.1f}" if ms != float("inf") else "failed",
                                          "yes" if config == chosen else "")
                torch.cuda.synchronize()
    console.print(table)
    return 0


def _fmt(config: dict) -> str:
    return f"BLOCK_R={config['BLOCK_R']} warps={config['num_warps']} stages={config['num_stages']}"

"""``cssformer autotune``: tune the sampling kernels for this GPU ahead of time.

Runs the forward and backward of each requested problem with tuning on, so every kernel key the
problem needs gets tuned and saved in the per-GPU cache (``cssformer_kernels.autotune.cache_path()``),
then prints what each config took and which won. A problem is a named preset, an explicit shape
(canonical and fused forms, each dtype), or a whole model: ``--model NAME --size H W`` runs one
training step of that model (under autocast for fp16/bf16), which tunes exactly the layer shapes it
uses.
"""
from __future__ import annotations

import argparse
import os

from cssformer.errors import UsageError

FORMS = ("canonical", "fused")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cssformer_kernels.shapes import DTYPES, PRESETS

    from cssformer.commands.options import add_num_classes

    parser.add_argument("--preset", nargs="+", choices=sorted(PRESETS), default=[],
                        help="named problem shapes (default: all presets when nothing else is given)")
    parser.add_argument("--shape", nargs="+", default=[], metavar="N,Q,M,D,P,HxW,...",
                        help="explicit shapes, e.g. 2,S,8,32,4,64x64,32x32 (Q=S: one query per position)")
    parser.add_argument("--model", help="a model preset (see cssformer.list_models()): tune its layers' shapes")
    parser.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), default=(512, 512),
                        help="input size for --model (default 512 512)")
    parser.add_argument("--batch", type=int, default=2, help="batch size for --model (default 2)")
    add_num_classes(parser, "--model")
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
    if args.model:
        import cssformer
        from cssformer.models.registry import preset_name

        try:
            preset_name(args.model)  # a deprecated alias (mask2former-*) warns and tunes its preset
        except ValueError:
            known = ", ".join(cssformer.list_models())
            raise UsageError(f"--model: got {args.model!r}, expected one of {known}") from None
        from cssformer.commands.options import check_num_classes
        from cssformer.sizes import as_hw

        try:
            as_hw(list(args.size), "--size")
        except ValueError as err:
            raise UsageError(str(err)) from None
        if args.batch < 1:
            raise UsageError(f"--batch: got {args.batch}, expected >= 1")
        check_num_classes(args.num_classes)
        return problems
    return problems or list(PRESETS.items())


def _model_step(args, dtype_name: str, device):
    """One training step of ``--model`` at ``--size``, with autocast for half dtypes."""
    import torch

    import cssformer
    from cssformer_kernels import override_backend
    from cssformer.engine import runtime

    model = cssformer.build_model(args.model, num_classes=args.num_classes, img_size=tuple(args.size))
    override_backend(model, "triton")
    model = model.to(device).train()
    images = torch.randn(args.batch, 3, *args.size, device=device)
    with runtime.autocast("cuda", dtype_name):  # the kernels' dtype names are the precision names
        out = model(images)
    if not args.forward_only:
        sum(v.float().mean() for v in out.values()).backward()


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
        requested = [f"{name} ({shape.describe()})" for name, shape in problems]
        if args.model:
            requested.append(f"{args.model} at {args.size[0]}x{args.size[1]}, batch {args.batch}")
        console.print(
            "No CUDA device: on CPU tensors the kernels run under the Triton interpreter "
            f"(TRITON_INTERPRET=1) with one config, BLOCK_R={cfg['BLOCK_R']}, P_BLOCK={cfg['P_BLOCK']}, "
            f"num_warps={cfg['num_warps']}; there is nothing to tune. Requested: " + "; ".join(requested)
        )
        return 0
    if os.environ.get("CSSFORMER_AUTOTUNE") == "0":
        raise UsageError("CSSFORMER_AUTOTUNE=0 is set: unset it to tune")

    device = torch.device("cuda")
    table = Table(title=f"Autotune on {torch.cuda.get_device_name(device)} -> {autotune.cache_path()}")
    for column in ("problem", "dtype", "kernel", "config", "time (us)", "chosen"):
        table.add_column(column, justify="right" if column == "time (us)" else "left")

    def record(name: str, dtype_name: str, label: str, records) -> None:
        for kernel, key, timings, chosen in records:
            kernel_label = f"{kernel} ({label})"
            if timings is None:
                table.add_row(name, dtype_name, kernel_label, _fmt(chosen), "cached", "yes")
                continue
            for config, ms in sorted(timings, key=lambda r: r[1]):
                table.add_row(name, dtype_name, kernel_label, _fmt(config),
                              f"{ms * 1000:.1f}" if ms != float("inf") else "failed",
                              "yes" if config == chosen else "")

    deterministic_modes = (False, True) if args.deterministic else (False,)
    for dtype_name in args.dtype:
        for deterministic in deterministic_modes:
            det = ", det" if deterministic else ""
            jobs = []
            for name, shape in problems:
                for form in args.form:
                    fused = form == "fused"
                    inputs = make_inputs(shape, dtype=DTYPES[dtype_name], device=device, fused=fused,
                                         requires_grad=not args.forward_only)
                    jobs.append((name, form + det, lambda op=(ms_deform_attn_fused if fused else ms_deform_attn),
                                 inputs=inputs: _step(op, inputs, args.forward_only)))
            if args.model:
                jobs.append((args.model, f"model{det}", lambda: _model_step(args, dtype_name, device)))
            for name, label, job in jobs:
                with autotune.tuning_session(force=args.force) as records:
                    torch.use_deterministic_algorithms(deterministic)
                    try:
                        job()
                    finally:
                        torch.use_deterministic_algorithms(False)
                torch.cuda.synchronize()
                record(name, dtype_name, label, records)
    console.print(table)
    return 0


def _step(op, inputs, forward_only: bool) -> None:
    import torch

    out = op(*inputs, backend="triton")
    if not forward_only:
        out.backward(torch.randn_like(out))


def _fmt(config: dict) -> str:
    text = (f"BLOCK_R={config['BLOCK_R']} P_BLOCK={config.get('P_BLOCK', 1)} "
            f"warps={config['num_warps']} stages={config['num_stages']}")
    if "LAYOUT" in config:
        text += f" {config['LAYOUT']} D_SPLIT={config.get('D_SPLIT', 1)}"
        if "TILE_W" in config:
            text += f" TILE_W={config['TILE_W']}"
    return text

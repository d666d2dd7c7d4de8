"""``cssformer flops``: GFLOPs and parameters of a model (fvcore), as rich tables and optionally JSON.

``cssformer flops --model cssformer-swin-t --size 480 480 --json out.json`` reports the whole model,
backbone, decoder and each decoder module; ``--compare`` adds every decoder on the same backbone and the
CSSFormer ablation rows (GFLOPs over the baseline decoder, beside the paper's 2.4 / 39.9 / 42.3).
This is the only command that imports fvcore.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from cssformer.commands.options import (add_force, add_num_classes, add_set_option, check_num_classes, parse_set,
                                        path_arg)
from cssformer.errors import UsageError

HELP = "FLOPs and parameters of a model (fvcore)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="cssformer-swin-t", help="preset name (see `cssformer.list_models()`)")
    parser.add_argument("--size", nargs=2, type=int, default=[512, 512], metavar=("H", "W"), help="input size")
    add_num_classes(parser, "the logits")
    add_set_option(parser, "a build_model override, e.g. --set n_points=8 (value parsed as YAML)")
    parser.add_argument("--compare", action="store_true",
                        help="also every decoder on the same backbone and the CSSFormer ablation rows")
    parser.add_argument("--json", type=lambda text: Path(path_arg(text)), metavar="PATH",
                        help="write the numbers as JSON (a new file; see --force)")
    add_force(parser, "a --json file")


def _model_table(report: dict):
    from rich.table import Table

    h, w = report["size"]
    table = Table(title=f"{report['model']} at {h}x{w} (batch 1, eval, {report['num_classes']} classes)")
    table.add_column("module")
    table.add_column("GFLOPs", justify="right")
    table.add_column("params (M)", justify="right")
    for row in report["rows"]:
        table.add_row(row["module"], f"{row['gflops']:.2f}", f"{row['params_m']:.2f}")
    return table


def _compare_tables(report: dict):
    from rich.table import Table

    h, w = report["size"]
    decoders = Table(title=f"Decoders on Swin {report['backbone']} at {h}x{w} (decoder only, as the paper's "
                           f"Table 7; backbone: {report['backbone_cost']['gflops']:.1f} GFLOPs, "
                           f"{report['backbone_cost']['params_m']:.1f} M params)")
    for col, just in (("decoder", "left"), ("GFLOPs", "right"), ("params (M)", "right")):
        decoders.add_column(col, justify=just)
    for row in report["decoders"]:
        decoders.add_row(row["model"], f"{row['gflops']:.2f}", f"{row['params_m']:.2f}")
    ph, pw = report["paper_size"]
    same = (h, w) == (ph, pw)
    scaled = "" if same else f" x {report['paper_scale']:.3g} = (h x w) / ({ph} x {pw})"
    ablation = Table(title=f"CSSFormer ablation at {h}x{w} (decoder GFLOPs; paper: Swin-T, {ph}x{pw}"
                           + ("" if same else f", its numbers scaled to {h}x{w} by the pixel count") + ")")
    for col in ("row", "GFLOPs", "params (M)", "+GFLOPs vs baseline", f"paper +GFLOPs{scaled}", "ours vs paper"):
        ablation.add_column(col, justify="left" if col == "row" else "right")
    for row in report["ablation"]:
        paper = "-" if row["paper_delta_gflops"] is None else (
            f"{row['paper_delta_gflops']:.1f}" if same else
            f"{row['paper_delta_gflops']:.1f} -> {row['paper_delta_gflops_at_size']:.2f}")
        rel = "-" if row.get("paper_rel_diff") is None else f"{100 * row['paper_rel_diff']:+.1f}%"
        ablation.add_row(row["row"], f"{row['gflops']:.2f}", f"{row['params_m']:.2f}", f"{row['delta_gflops']:+.2f}",
                         paper, rel)
    return decoders, ablation


def run(args) -> int:
    from rich.console import Console

    from cssformer.analysis.flops import compare_report, model_report
    from cssformer.io_safety import check_output, write_text
    from cssformer.models import PRESETS
    from cssformer.models.registry import preset_name
    from cssformer.sizes import as_hw

    try:
        preset = PRESETS[preset_name(args.model)]  # a deprecated alias (mask2former-*) warns and counts
    except ValueError as err:
        raise UsageError(f"--model: {str(err).removeprefix('model: ')}") from None
    try:
        h, w = as_hw(args.size, "--size")
    except ValueError as err:
        raise UsageError(str(err)) from None
    check_num_classes(args.num_classes)
    overrides = parse_set(args.overrides, tuples=True)
    if args.json:
        check_output(args.json, "--json", args.force)
    console = Console()
    try:
        report = model_report(args.model, (h, w), args.num_classes, **overrides)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err).strip().splitlines()[0]) from None
    console.print(_model_table(report))
    console.print(f"sampling op ({', '.join(k for k in report['operators'] if 'deform' in k) or 'none'}): "
                  f"{report['sampling_op_gflops']:.2f} GFLOPs counted; element-wise ops fvcore does not count: "
                  f"{', '.join(sorted(report['uncounted_ops'])) or 'none'}")
    if args.compare:
        report["compare"] = compare_report(preset["size"], (h, w), args.num_classes)
        for table in _compare_tables(report["compare"]):
            console.print(table)
    if args.json:
        write_text(args.json, json.dumps(report, indent=2) + "\n", "--json")
        console.print(f"wrote {args.json}")
    return 0

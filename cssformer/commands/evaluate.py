"""``cssformer eval CHECKPOINT``: aAcc, mIoU, mAcc and per-class IoU on a dataset's val split, whole
image or sliding window, optionally multi-scale + flip; a rich table and a JSON file. Under
``torchrun`` every process evaluates a shard and the histograms are summed."""
from __future__ import annotations

import argparse
import json
import math

from cssformer.commands.options import PAPER_SCALES, add_force, add_test_options, path_arg, test_options_from

__all__ = ["PAPER_SCALES", "add_arguments", "options_from", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=path_arg, help="a checkpoint of cssformer-train (e.g. "
                        "work_dirs/.../best.pth) or a .safetensors file of cssformer export")
    parser.add_argument("--dataset", help="dataset name (default: the one the checkpoint was trained on)")
    parser.add_argument("--data-root", type=path_arg, help="dataset root (default: the checkpoint's)")
    add_test_options(parser)
    parser.add_argument("--out", type=path_arg,
                        help="write the results as JSON here (a new file; see --force)")
    add_force(parser, "an --out file")
    parser.add_argument("--num-workers", type=int, default=2, help="data loader worker processes (>= 0)")


def options_from(args, cfg: dict) -> dict:
    """Deprecated name of :func:`cssformer.commands.options.test_options_from`."""
    import warnings

    warnings.warn("cssformer.commands.evaluate.options_from is deprecated: use "
                  "cssformer.commands.options.test_options_from", DeprecationWarning, stacklevel=2)
    return test_options_from(args, cfg)


def run(args: argparse.Namespace) -> int:
    from cssformer.errors import UsageError
    from cssformer.io_safety import check_output, write_text
    from cssformer.engine import builders
    from cssformer.engine import distributed as D
    from cssformer.engine import runtime
    from cssformer.engine.config import resolve
    from cssformer.engine.evaluation import evaluate
    from cssformer.engine.model_io import load_trained, saved_config
    from cssformer.metrics import format_table
    from rich.console import Console

    if args.num_workers < 0:
        raise UsageError(f"--num-workers: got {args.num_workers}, expected >= 0")
    if args.out:
        check_output(args.out, "--out", args.force, inputs=[args.checkpoint])
    info = D.setup(args.device)
    try:
        model, state = load_trained(args.checkpoint, info.device)
        saved = saved_config(state)
        flags = {k: v for k, v in (("dataset", args.dataset), ("data_root", args.data_root)) if v}
        if args.dataset and args.dataset != saved.get("dataset"):
            saved.pop("dataset_args", None)  # the checkpoint's dataset options belong to its dataset
        cfg = resolve(saved, flags)
        options = test_options_from(args, cfg)
        _, val = builders.datasets(cfg)
        if hasattr(val, "check"):
            val.check()  # a bad image or mask: one error naming the file, before any inference
        if val.num_classes != model.num_classes:
            raise UsageError(f"checkpoint {args.checkpoint} predicts {model.num_classes} classes but dataset "
                             f"{cfg['dataset']} has {val.num_classes}")
        result = evaluate(runtime.compiled(model, args.compile), val, options, info, num_workers=args.num_workers,
                          amp_dtype=runtime.amp_dtype(args.amp))
        if info.is_main:
            console = Console()
            console.print(format_table(result, val.class_names))
            console.print(f"mIoU {result['mIoU']:.2f}  mAcc {result['mAcc']:.2f}  aAcc {result['aAcc']:.2f}  "
                          f"({len(val)} images, {cfg['dataset']} val, {options.as_dict()}, amp {args.amp})")
            if args.out:
                record = {"checkpoint": str(args.checkpoint), "dataset": cfg["dataset"], "split": "val",
                          "images": len(val), "options": options.as_dict(), "amp": args.amp, "aAcc": result["aAcc"],
                          "mIoU": result["mIoU"], "mAcc": result["mAcc"], "IoU": dict(zip(val.class_names, result["IoU"])),
                          "Acc": dict(zip(val.class_names, result["Acc"]))}
                write_text(args.out, json.dumps(_nan_to_none(record), indent=2), "--out")
        return 0
    finally:
        D.cleanup()


def _nan_to_none(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value

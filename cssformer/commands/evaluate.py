"""``cssformer eval CHECKPOINT``: aAcc, mIoU, mAcc and per-class IoU on a dataset's val split, whole
image or sliding window, optionally multi-scale + flip; a rich table and a JSON file. Under
``torchrun`` every process evaluates a shard and the histograms are summed."""
from __future__ import annotations

import argparse
import json
import math

PAPER_SCALES = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint of cssformer-train (e.g. work_dirs/.../best.pth) or a .safetensors "
                        "file of cssformer export")
    parser.add_argument("--dataset", help="dataset name (default: the one the checkpoint was trained on)")
    parser.add_argument("--data-root", help="dataset root (default: the checkpoint's)")
    parser.add_argument("--mode", choices=["whole", "slide"], help="whole-image or sliding-window inference")
    parser.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="sliding window size")
    parser.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), help="sliding window stride")
    parser.add_argument("--scales", type=float, nargs="+", help="test scale ratios, e.g. 0.5 0.75 1.0 1.25 1.5 1.75")
    parser.add_argument("--flip", action="store_true", help="add horizontally flipped inputs")
    parser.add_argument("--aug-test", action="store_true",
                        help=f"the paper's multi-scale protocol: scales {PAPER_SCALES} + flip")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--num-workers", type=int, default=2)


def options_from(args, cfg: dict) -> dict:
    """The test options: the checkpoint's config, overridden by the flags."""
    from cssformer.engine.evaluation import test_options

    cfg = dict(cfg)
    if args.mode:
        cfg["test_mode"] = args.mode
    if args.crop:
        cfg["test_crop"] = list(args.crop)
    if args.stride:
        cfg["test_stride"] = list(args.stride)
    if args.scales:
        cfg["test_scales"] = list(args.scales)
    if args.flip:
        cfg["test_flip"] = True
    if args.aug_test:
        cfg["test_scales"], cfg["test_flip"] = PAPER_SCALES, True
    return test_options(cfg)


def run(args: argparse.Namespace) -> int:
    from cssformer.errors import UsageError
    from cssformer.engine import builders
    from cssformer.engine import distributed as D
    from cssformer.engine.checkpoint import atomic_write_bytes
    from cssformer.engine.config import DEFAULTS, resolve
    from cssformer.engine.evaluation import evaluate
    from cssformer.engine.model_io import load_trained
    from cssformer.metrics import format_table
    from rich.console import Console

    info = D.setup(args.device)
    try:
        model, state = load_trained(args.checkpoint, info.device)
        saved = {k: v for k, v in (state.get("config") or {}).items() if k in DEFAULTS}
        flags = {k: v for k, v in (("dataset", args.dataset), ("data_root", args.data_root)) if v}
        if args.dataset and args.dataset != saved.get("dataset"):
            saved.pop("dataset_args", None)  # the checkpoint's dataset options belong to its dataset
        cfg = resolve(saved, flags)
        _, val = builders.datasets(cfg)
        if val.num_classes != model.num_classes:
            raise UsageError(f"checkpoint {args.checkpoint} predicts {model.num_classes} classes but dataset "
                             f"{cfg['dataset']} has {val.num_classes}")
        options = options_from(args, cfg)
        result = evaluate(model, val, options, info, num_workers=args.num_workers)
        if info.is_main:
            console = Console()
            console.print(format_table(result, val.class_names))
            console.print(f"mIoU {result['mIoU']:.2f}  mAcc {result['mAcc']:.2f}  aAcc {result['aAcc']:.2f}  "
                          f"({len(val)} images, {cfg['dataset']} val, {options})")
            if args.out:
                record = {"checkpoint": str(args.checkpoint), "dataset": cfg["dataset"], "split": "val",
                          "images": len(val), "options": options, "aAcc": result["aAcc"], "mIoU": result["mIoU"],
                          "mAcc": result["mAcc"], "IoU": dict(zip(val.class_names, result["IoU"])),
                          "Acc": dict(zip(val.class_names, result["Acc"]))}
                text = json.dumps(_nan_to_none(record), indent=2)
                atomic_write_bytes(args.out, text.encode())
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

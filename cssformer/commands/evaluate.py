"""``cssformer eval CHECKPOINT``: aAcc, mIoU, mAcc and per-class IoU on a dataset's val split, whole
image or sliding window, optionally multi-scale + flip; a rich table and a JSON file, beside it a
confusion-matrix PNG and a per-class IoU chart (matplotlib), and with ``--show-dir`` a panel per image
(image | ground truth | prediction | errors). Under ``torchrun`` every process evaluates a shard and the
histograms are summed."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from cssformer.commands.options import PAPER_SCALES, add_force, add_test_options, path_arg, test_options_from
from cssformer.visualisation import LEGEND_CHOICES

__all__ = ["PAPER_SCALES", "add_arguments", "options_from", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=path_arg, help="a checkpoint of cssformer-train (e.g. "
                        "work_dirs/.../best.pth) or a .safetensors file of cssformer export")
    parser.add_argument("--dataset", help="dataset name (default: the one the checkpoint was trained on)")
    parser.add_argument("--data-root", type=path_arg, help="dataset root (default: the checkpoint's)")
    add_test_options(parser)
    parser.add_argument("--out", type=path_arg,
                        help="write the results as JSON here (a new file; see --force)")
    parser.add_argument("--show-dir", type=path_arg,
                        help="write a panel image | ground truth | prediction | errors per evaluated image here "
                        "(a new or empty folder; see --force)")
    parser.add_argument("--show-count", type=int,
                        help="panels for this many images spread over the dataset (default: every image)")
    parser.add_argument("--legend", choices=LEGEND_CHOICES, default="present",
                        help="the panels' legend: classes present in the image, all classes, or none")
    add_force(parser, "an --out file, its charts and panels in --show-dir")
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
    from cssformer.engine.logger import json_safe
    from cssformer.visualisation import Panels, sample_indices
    from cssformer.metrics import format_table
    from rich.console import Console

    if args.num_workers < 0:
        raise UsageError(f"--num-workers: got {args.num_workers}, expected >= 0")
    if args.out:
        check_output(args.out, "--out", args.force, inputs=[args.checkpoint])
    charts = chart_paths(args)
    for path in charts.values():
        check_output(path, "--out" if args.out else "--show-dir", args.force, inputs=[args.checkpoint])
    if args.show_count is not None and args.show_count < 1:
        raise UsageError(f"--show-count: got {args.show_count}, expected >= 1")
    if args.show_count is not None and not args.show_dir:
        raise UsageError("--show-count needs --show-dir (the folder to write the panels to)")
    if args.show_dir:
        check_show_dir(Path(args.show_dir), args.force)
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
        if args.show_dir and cfg.get("data_root") and _inside(Path(args.show_dir), Path(cfg["data_root"])):
            raise UsageError(f"--show-dir {args.show_dir} is inside the dataset root {cfg['data_root']}: a later run "
                             "would read the panels as images; expected a folder outside the data")
        panels = None
        if args.show_dir:
            panels = Panels(val.class_names, val.palette, sample_indices(len(val), args.show_count),
                            panel_writer(Path(args.show_dir)), args.legend)
        result = evaluate(runtime.compiled(model, args.compile), val, options, info, num_workers=args.num_workers,
                          amp_dtype=runtime.amp_dtype(args.amp), show=panels)
        if info.is_main:
            console = Console()
            console.print(format_table(result, val.class_names))
            console.print(f"mIoU {result['mIoU']:.2f}  mAcc {result['mAcc']:.2f}  aAcc {result['aAcc']:.2f}  "
                          f"({len(val)} images, {cfg['dataset']} val, {options.as_dict()}, amp {args.amp})")
            if args.out:
                record = {"checkpoint": str(args.checkpoint), "dataset": cfg["dataset"], "split": "val",
                          "images": len(val), "options": options.as_dict(), "amp": args.amp, "aAcc": result["aAcc"],
                          "mIoU": result["mIoU"], "mAcc": result["mAcc"], "IoU": dict(zip(val.class_names, result["IoU"])),
                          "Acc": dict(zip(val.class_names, result["Acc"])), "confusion": result["confusion"]}
                write_text(args.out, json.dumps(json_safe(record), indent=2), "--out")
            if panels is not None:
                console.print(f"panels: {panels.count} in {args.show_dir}", markup=False, highlight=False,
                              soft_wrap=True)
            write_charts(charts, result, val.class_names, console)
        return 0
    finally:
        D.cleanup()


def chart_paths(args) -> dict:
    """Where the confusion matrix and the IoU chart go: beside ``--out`` (``<stem>_confusion.png``,
    ``<stem>_iou.png``), else into ``--show-dir``; nowhere without either."""
    if args.out:
        out = Path(args.out)
        return {"confusion": out.with_name(out.stem + "_confusion.png"), "iou": out.with_name(out.stem + "_iou.png")}
    if args.show_dir:
        return {"confusion": Path(args.show_dir) / "confusion.png", "iou": Path(args.show_dir) / "iou.png"}
    return {}


def check_show_dir(folder: Path, force: bool) -> None:
    """``--show-dir``: a new or empty folder (panels of two runs are not mixed), or anything with ``--force``."""
    from cssformer.errors import UsageError

    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--show-dir {folder} is a file: expected a folder")
    if folder.is_dir() and not force and any(folder.iterdir()):
        raise UsageError(f"--show-dir {folder} is not empty: refusing to mix panels of two runs (pass --force to "
                         "write into it, or choose a new folder)")


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def panel_writer(folder: Path):
    """A :class:`~cssformer.visualisation.Panels` sink writing ``<name>.png`` into ``folder`` (``<name>_2.png``
    ... for a repeated name)."""
    from cssformer.io_safety import write_bytes
    from cssformer.visualisation import png_bytes

    used: dict[str, int] = {}

    def write(name: str, picture) -> None:
        used[name] = used.get(name, 0) + 1
        stem = name if used[name] == 1 else f"{name}_{used[name]}"
        write_bytes(folder / f"{stem}.png", png_bytes(picture), "--show-dir")
    return write


def write_charts(charts: dict, result: dict, names, console) -> None:
    """The confusion-matrix and IoU PNGs, or one line saying why they are skipped (no matplotlib)."""
    from cssformer.errors import UsageError
    from cssformer.io_safety import write_bytes
    from cssformer.visualisation import confusion_matrix_png, iou_chart_png

    if not charts:
        return
    try:
        write_bytes(charts["confusion"], confusion_matrix_png(result["confusion"], names), "--out")
        write_bytes(charts["iou"], iou_chart_png(result["IoU"], names, result["mIoU"]), "--out")
    except UsageError as err:  # matplotlib missing: the metrics stand without the pictures
        console.print(f"skipped the confusion-matrix and IoU charts: {err}", markup=False, highlight=False,
                      soft_wrap=True)
        return
    console.print(f"charts: {charts['confusion']}, {charts['iou']}", markup=False, highlight=False, soft_wrap=True)


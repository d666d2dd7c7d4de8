"""``cssformer plot WORK_DIR``: loss, learning rate and validation mIoU of a run's ``log.jsonl`` against
iteration, as a PNG (``WORK_DIR/curves.png`` unless ``--out``). Needs matplotlib (extra ``plot``);
``cssformer-train`` writes the same PNG at the end of a run. The default ``WORK_DIR/curves.png`` is
redrawn in place (a view of the log); an ``--out`` file that exists needs ``--force``, must be a ``.png``
and is never the log itself."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("work_dir", help="a work dir of cssformer-train (holds log.jsonl)")
    parser.add_argument("--out", help="PNG to write (default: WORK_DIR/curves.png, redrawn in place)")
    parser.add_argument("--force", action="store_true", help="replace an --out file that already exists")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cssformer.engine.curves import LOG, plot_curves
    from cssformer.errors import UsageError
    from cssformer.io_safety import check_output

    if args.out is not None:
        if Path(args.out).suffix.lower() != ".png":
            raise UsageError(f"--out {args.out}: expected a .png file name (the curves are a PNG)")
        check_output(args.out, "--out", args.force, inputs=[Path(args.work_dir) / LOG])
    print(f"wrote {plot_curves(args.work_dir, args.out)}")
    return 0

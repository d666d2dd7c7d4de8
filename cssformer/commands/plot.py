"""``cssformer plot WORK_DIR``: loss, learning rate and validation mIoU of a run's ``log.jsonl`` against
iteration, as a PNG (``WORK_DIR/curves.png`` unless ``--out``). Needs matplotlib (extra ``plot``);
``cssformer-train`` writes the same PNG at the end of a run."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("work_dir", help="a work dir of cssformer-train (holds log.jsonl)")
    parser.add_argument("--out", help="PNG to write (default: WORK_DIR/curves.png)")


def run(args: argparse.Namespace) -> int:
    from cssformer.engine.curves import plot_curves

    print(f"wrote {plot_curves(args.work_dir, args.out)}")
    return 0

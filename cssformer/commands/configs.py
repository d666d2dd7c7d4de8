"""``cssformer configs``: the shipped configs (one per row of the paper's tables), with the paper's
reported numbers; ``--show NAME`` prints one, ``--table N`` keeps the rows of one table."""
from __future__ import annotations

import argparse

from cssformer.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", help="only configs reproducing a row of this paper table (5, 6, 7)")
    parser.add_argument("--show", metavar="NAME", help="print one config file")
    parser.add_argument("--names", action="store_true", help="names only, one per line (for scripts)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from cssformer.configs import config_path, list_configs, load_config

    if args.show:
        path = config_path(args.show)
        if path.is_dir():
            raise UsageError(f"--show {args.show}: {path} is a folder, expected a config file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"--show {args.show}: {path} is not text (not UTF-8): expected a YAML config") from None
        print(text, end="")
        return 0
    names = list_configs()
    rows = []
    for name in names:
        cfg = load_config(name)
        paper = (cfg.get("reference") or {}).get("paper_rows") or []
        if args.table and not any(str(r.get("table")) == str(args.table) for r in paper):
            continue
        rows.append((name, cfg, paper))
    if args.table and not rows:
        raise UsageError(f"--table {args.table}: no shipped config reproduces a row of that table")
    if args.names:
        print("\n".join(name for name, _, _ in rows))
        return 0
    table = Table(title=f"{len(rows)} shipped configs (cssformer-train --config NAME)")
    for col in ("name", "model", "dataset", "crop", "batch", "iters", "paper rows (mIoU)"):
        table.add_column(col)
    for name, cfg, paper in rows:
        crop = cfg.get("crop_size")
        reported = "; ".join(paper_row(r) for r in paper)
        table.add_row(name, cfg.get("model", ""), cfg.get("dataset", ""), str(crop), str(cfg.get("batch_size")),
                      str(cfg.get("iters")), reported or "-")
    Console(width=200).print(table)
    return 0


def paper_row(row: dict) -> str:
    """``T7 CSSFormer Swin-T 50.61`` for a numbered table, ``ADE20K CSSFormer Swin-B (512)`` for a named one."""
    table = str(row["table"])
    name = f"T{table}" if table.isdigit() else table
    return f"{name} {row['row']}" + (f" {row['miou_ss']}" if row.get("miou_ss") else "")

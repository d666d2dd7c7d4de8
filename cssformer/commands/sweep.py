"""``cssformer sweep CONFIG...``: train and evaluate each config (a shipped name or a YAML file) in its
own work dir under ``--work-root``, then write the results table: the paper's numbers per row beside
the mIoU reproduced here (the last evaluation in each work dir).

Each config runs as ``cssformer train`` in a child process (under ``torchrun`` with ``--nproc N``), so
one config's failure stops the sweep with its exit code and the work dirs of finished ones are kept;
a config whose work dir already holds a finished run is not trained again. ``--collect`` only writes
the table from what the work dirs hold (e.g. runs made elsewhere and copied here).

The table covers every shipped config (reproduced cells empty where no run exists) plus the files
given; with ``--out FILE`` it replaces the part of FILE between the ``<!-- results:begin -->`` and
``<!-- results:end -->`` lines (or writes a new FILE; an existing FILE without those lines is replaced
only with ``--force``). The file is written atomically and checked before anything is trained.

Work dirs are named by the config's file name without ``.yaml``: two configs of the same name (``a/x.yaml``
and ``b/x.yaml``, or a file named like a shipped config) are refused before anything runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from cssformer.engine.workdir import LAST, LOG
from cssformer.errors import UsageError

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", nargs="*", metavar="CONFIG", help="shipped config names or YAML files")
    parser.add_argument("--table", help="add every shipped config of this paper table (5, 6, 7)")
    parser.add_argument("--work-root", type=Path, default=Path("work_dirs/sweep"),
                        help="one work dir per config under it (default work_dirs/sweep)")
    parser.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun; one per GPU)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to every run, e.g. --set data_root=/data/VOC2010")
    parser.add_argument("--collect", action="store_true", help="train nothing: write the table from the work dirs")
    parser.add_argument("--out", type=Path, help="markdown file to write the table into (default: print it)")
    parser.add_argument("--force", action="store_true",
                        help="replace an --out file that exists and has no results markers")


def _name(config: str) -> str:
    return Path(config).name[: -len(".yaml")] if config.endswith(".yaml") else Path(config).name


def _last_eval(work_dir: Path) -> dict | None:
    """The last evaluation of a work dir and how far its run got: ``{"mIoU", "iter", "iters"}``."""
    log = work_dir / LOG
    if not log.is_file():
        return None
    found, iters = None, None
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line a kill cut short
        if record.get("type") == "start":
            iters = record.get("config", {}).get("iters")
        elif record.get("type") == "eval":
            found = record
    if found is None:
        return None
    return {"mIoU": found["mIoU"], "iter": found["iter"], "iters": iters}


def _command(config: str, work_dir: Path, nproc: int, overrides: list[str]) -> list[str]:
    launch = [sys.executable, "-m", "cssformer.cli"]
    if nproc > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                  "-m", "cssformer.cli"]
    cmd = launch + ["train", "--config", config, "--work-dir", str(work_dir)]
    for item in overrides:
        cmd += ["--set", item]
    if (work_dir / LAST).is_file():
        cmd.append("--resume")
    return cmd


def _rows(configs: list[str], work_root: Path) -> list[dict]:
    from cssformer.configs import list_configs, load_config

    names = list_configs() + [c for c in configs if _name(c) not in list_configs()]
    rows = []
    for config in names:
        cfg = load_config(config)
        paper = (cfg.get("reference") or {}).get("paper_rows") or [{}]
        result = _last_eval(work_root / _name(config))
        for ref in paper:
            rows.append({"config": _name(config), "model": cfg.get("model", ""), "dataset": cfg.get("dataset", ""),
                         "crop": cfg.get("crop_size", ""), "table": ref.get("table", ""), "row": ref.get("row", ""),
                         "paper": ref.get("miou_ss"), "result": result})
    return rows


def table(configs: list[str], work_root: Path) -> str:
    """The results table (markdown): one line per (config, paper row)."""
    lines = ["| config | model | dataset | crop | paper table / row | paper mIoU (SS) | reproduced mIoU (SS) |",
             "|---|---|---|---|---|---|---|"]
    for r in _rows(configs, work_root):
        where = f"{r['table']}: {r['row']}" if r["table"] else "-"
        paper = "-" if r["paper"] is None else f"{r['paper']:.2f}"
        result = r["result"]
        if result is None:
            got = ""
        else:
            got = f"{result['mIoU']:.2f}"
            if result["iters"] and result["iter"] < result["iters"]:
                got += f" (at {result['iter']}/{result['iters']} iters)"
        lines.append(f"| `{r['config']}` | {r['model']} | {r['dataset']} | {r['crop']} | {where} | {paper} | {got} |")
    return "\n".join(lines) + "\n"


def _markers(out: Path) -> str | None:
    """The text of an existing ``out`` that holds both results markers, else None."""
    if not out.is_file():
        return None
    try:
        old = out.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None
    return old if BEGIN in old and END in old else None


def check_out(out: Path, force: bool) -> None:
    """Before any training: ``out`` is writable and either new, a file with the results markers (its part
    between them is replaced), or replaced whole with ``force``."""
    from cssformer.io_safety import check_output

    check_output(out, "--out", force or _markers(out) is not None)


def write_table(text: str, out: Path) -> None:
    """Atomic write of the table into ``out`` (between the markers when it has them)."""
    from cssformer.io_safety import write_text

    old = _markers(out)
    if old is not None:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = f"{head}{BEGIN}\n{text}{END}{tail}"
    write_text(out, text, "--out")


def check_names(configs: list[str]) -> None:
    """Each config's work dir and table row are named by its file name: two different configs of one
    name would share them (the second found "already done" with the first one's mIoU)."""
    from cssformer.configs import config_path, list_configs

    seen: dict[str, Path] = {}
    for config in [*list_configs(), *configs]:
        path = config_path(config).resolve()
        other = seen.setdefault(_name(config), path)
        if other != path:
            raise UsageError(f"configs {other} and {path} are both named {_name(config)!r}: they would share the "
                             "work dir and results row; expected configs with distinct file names (rename one)")


def run(args: argparse.Namespace) -> int:
    from cssformer.configs import config_path, load_config

    configs = list(args.configs)
    if args.table:
        from cssformer.configs import list_configs

        for name in list_configs():
            rows = (load_config(name).get("reference") or {}).get("paper_rows") or []
            if any(str(r.get("table")) == str(args.table) for r in rows) and name not in configs:
                configs.append(name)
    if not configs and not args.collect:
        raise UsageError("name at least one config (or --table N, or --collect)")
    if args.nproc < 1:
        raise UsageError(f"--nproc must be >= 1, got {args.nproc}")
    for config in configs:
        config_path(config)  # every name checked before anything runs
    check_names(configs)
    if args.out:
        check_out(args.out, args.force)
    if not args.collect:
        for config in configs:
            work_dir = args.work_root / _name(config)
            done = _last_eval(work_dir)
            if done and done["iters"] and done["iter"] >= done["iters"]:
                print(f"sweep: {_name(config)} already done in {work_dir} (mIoU {done['mIoU']:.2f})")
                continue
            cmd = _command(config, work_dir, args.nproc, args.overrides)
            print("sweep: " + " ".join(cmd), flush=True)
            env = dict(os.environ)
            code = subprocess.call(cmd, env=env)
            if code:
                print(f"sweep: {_name(config)} failed with exit code {code}; finished runs are kept in "
                      f"{args.work_root}", file=sys.stderr)
                return code
    text = table(configs, args.work_root)
    if args.out:
        write_table(text, args.out)
        print(f"sweep: wrote {args.out}")
    else:
        print(text, end="")
    return 0

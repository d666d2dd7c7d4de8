#!/usr/bin/env python
"""Locality report of the sampling kernels' program layouts: a cache model on the CPU, no GPU needed.

For a program layout and an input distribution it lists which rows of ``value`` each program gathers
and estimates what reaches an SM from L2:

    python bench/locality_report.py                      # detr_enc seg512 cssformer; uniform local recorded
    python bench/locality_report.py --shape cssformer --inputs local --dtype bf16
    python bench/locality_report.py --json out.json

Layouts (a program's queries and heads):

- ``rows``: today's kernels. A program owns ``BLOCK_R`` consecutive rows ``r = (n * Q + q) * M + m``:
  ``BLOCK_R / M`` consecutive queries with all their heads interleaved (``--block-r``, default 32, the
  untuned config).
- ``strip``: one head per program over a 1-D strip of ``--strip`` consecutive queries (default 64).
- ``tile``: one head per program over a 2-D tile of ``--tile`` queries (default 8x8) on the query's own
  level grid; only when the queries are the pyramid tokens (``Q == S``, queries in pyramid order, as
  in every encoder and in CSSFormer).
- ``tile2h``: the same tiles, two adjacent heads per program: with 16-bit values a D=32 row is 64 bytes,
  so one head uses half of each 128-byte line and the pair uses all of it.

Inputs (``bench/msda_inputs.py``, the same distributions the benchmark uses): ``uniform`` (anywhere
on the maps), ``local`` (each query at its own pyramid position, offsets ``N(0, 2 px)`` per level),
``recorded`` (captured at the op: cssformer-swin-t at random initialisation, and one Deformable-DETR
encoder layer at its initialisation at ``detr_enc``; rows ``layer``).

Per program: ``gathers`` = corner rows loaded (the 4 bilinear corners of every point that fall inside
the map; corners outside are masked, no load), ``rows`` = distinct value rows, ``lines`` = distinct
128-byte lines they lie in (a row is ``D * itemsize`` bytes; value is ``(N, S, M, D)``, so the heads of
one pixel are adjacent and a 64-byte bf16 row shares its line with the next head).
``lines_per_gather`` = lines / gathers: L2->SM traffic per gather with a perfect per-program L1.

L1 model (``l2_bytes_per_gather``): one SM of ``--sms`` (132, an H100/H200) runs programs ``s, s + sms,
s + 2 sms, ...`` (launch order), ``--resident`` of them at a time; the resident programs' accesses
interleave step by step (one level and point per step) through an LRU cache of ``--l1-kib`` KiB of
128-byte lines; every miss moves 128 bytes from L2. A few SMs, a few waves each (``--sm-samples``,
``--waves``) are simulated; the figure is the sum of misses x 128 B over the sum of gathers. A model of
capacity and reuse, not of timing: no sectors (32 B), no prefetch, no L1 bypass, no associativity.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import OrderedDict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import msda_inputs  # noqa: E402

LAYOUTS = ("rows", "strip", "tile", "tile2h")
INPUTS = msda_inputs.INPUTS
ITEMSIZE = {"fp32": 4, "bf16": 2, "fp16": 2}
LINE = 128
# The issue-14 target: the layout chosen for local inputs touches >= 4x fewer L2 lines per gather.
TARGET_RATIO = 4.0


# ----------------------------------------------------------------------------------------------------
# Layouts: the (n, q, m) rows of each program, in launch order
# ----------------------------------------------------------------------------------------------------

class Layout:
    """Programs of one layout: ``count`` and ``rows(pid) -> (n, q, m)`` index tensors."""

    def __init__(self, name: str, shape, *, block_r: int = 32, strip: int = 64, tile=(8, 8)):
        self.name, self.shape = name, shape
        N, Q, M = shape.N, shape.num_queries, shape.M
        if name == "rows":
            self.block_r = block_r
            self.count = math.ceil(N * Q * M / block_r)
        elif name == "strip":
            self.strip = strip
            self.per_head = math.ceil(Q / strip)
            self.count = N * M * self.per_head
        elif name in ("tile", "tile2h"):
            if shape.Q is not None and shape.Q != shape.S:
                raise ValueError("tile layout: needs the queries to be the pyramid tokens (Q == S)")
            th, tw = tile
            self.tiles = []  # (query start of the level, level width, y0, x0, tile height, tile width)
            start = 0
            for h, w in shape.levels:
                for y0 in range(0, h, th):
                    for x0 in range(0, w, tw):
                        self.tiles.append((start, w, y0, x0, min(th, h - y0), min(tw, w - x0)))
                start += h * w
            self.heads = 2 if name == "tile2h" else 1
            self.count = N * math.ceil(M / self.heads) * len(self.tiles)
        else:
            raise ValueError(f"layout: got {name!r}, expected one of {LAYOUTS}")

    def rows(self, pid: int):
        s = self.shape
        N, Q, M = s.N, s.num_queries, s.M
        if self.name == "rows":
            r = torch.arange(pid * self.block_r, min((pid + 1) * self.block_r, N * Q * M))
            return r // (Q * M), (r // M) % Q, r % M
        if self.name == "strip":
            nm, b = divmod(pid, self.per_head)
            n, m = divmod(nm, M)
            q = torch.arange(b * self.strip, min((b + 1) * self.strip, Q))
        else:
            nm, t = divmod(pid, len(self.tiles))
            n, mg = divmod(nm, math.ceil(M / self.heads))
            start, w, y0, x0, th, tw = self.tiles[t]
            y, x = torch.meshgrid(torch.arange(y0, y0 + th), torch.arange(x0, x0 + tw), indexing="ij")
            q = start + y.reshape(-1) * w + x.reshape(-1)
            heads = torch.arange(mg * self.heads, min((mg + 1) * self.heads, M))
            q, m = q.repeat_interleave(len(heads)), heads.repeat(len(q))  # the heads of a query adjacent
            return torch.full_like(q, n), q, m
        return torch.full_like(q, n), q, torch.full_like(q, m)


# ----------------------------------------------------------------------------------------------------
# Inputs: normalised locations (rows, L, P, 2) of given (n, q, m) rows
# ----------------------------------------------------------------------------------------------------

class Inputs:
    """Normalised locations ``(N, Q, M, L, P, 2)`` of the whole problem (``msda_inputs``), drawn once, so
    that every layout sees the same points."""

    def __init__(self, name: str, layer, all_locations: torch.Tensor):
        self.name, self.layer, self.all = name, layer, all_locations

    def locations(self, n, q, m) -> torch.Tensor:
        """``(rows, L, P, 2)`` of the given (n, q, m) rows."""
        return self.all[n, q, m]


def corner_rows(shape, n, q, m, loc):
    """Value rows ``(n * S + start_l + y * W + x) * M + m`` of the in-map corners, per (level, point)
    step: a list of ``L * P`` 1-D tensors (the program's gathers, step by step)."""
    steps = []
    start = 0
    M, S = shape.M, shape.S
    for li, (h, w) in enumerate(shape.levels):
        x = loc[:, li, :, 0] * w - 0.5
        y = loc[:, li, :, 1] * h - 0.5
        x0 = torch.floor(x).long()
        y0 = torch.floor(y).long()
        base = (n * S + start)[:, None]
        for p in range(shape.P):
            found = []
            for dy in (0, 1):
                for dx in (0, 1):
                    cx, cy = x0[:, p] + dx, y0[:, p] + dy
                    ok = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
                    rows = ((base[:, 0] + cy * w + cx) * M + m)[ok]
                    found.append(rows)
            steps.append(torch.cat(found))
        start += h * w
    return steps


def lines_of(rows: torch.Tensor, row_bytes: int) -> torch.Tensor:
    """The 128-byte lines the rows touch (a row may span several)."""
    first = rows * row_bytes // LINE
    last = (rows * row_bytes + row_bytes - 1) // LINE
    lines = first[:, None] + torch.arange(row_bytes // LINE + 2)[None, :]
    return lines[lines <= last[:, None]]


def program_stats(layout: Layout, inputs: Inputs, pid: int, row_bytes: int):
    n, q, m = layout.rows(pid)
    steps = corner_rows(layout.shape, n, q, m, inputs.locations(n, q, m))
    rows = torch.cat(steps)
    step_lines = [torch.unique(lines_of(s, row_bytes)) for s in steps]
    return dict(gathers=rows.numel(), rows=torch.unique(rows).numel(),
                lines=torch.unique(torch.cat(step_lines)).numel() if step_lines else 0), step_lines


def simulate_sm(step_lists: list[list[torch.Tensor]], resident: int, capacity_lines: int) -> int:
    """LRU misses of one SM running the programs (in order), ``resident`` at a time, steps interleaved."""
    cache: OrderedDict = OrderedDict()
    misses = 0
    for w in range(0, len(step_lists), resident):
        wave = step_lists[w:w + resident]
        for step in range(max(len(s) for s in wave)):
            for program in wave:
                if step >= len(program):
                    continue
                for line in program[step].tolist():
                    if line in cache:
                        cache.move_to_end(line)
                    else:
                        misses += 1
                        cache[line] = None
                        if len(cache) > capacity_lines:
                            cache.popitem(last=False)
    return misses


def measure(layout: Layout, inputs: Inputs, dtype: str, args) -> dict:
    row_bytes = layout.shape.D * ITEMSIZE[dtype]
    sms = min(args.sms, layout.count)
    sm_ids = sorted({int(i) for i in torch.linspace(0, sms - 1, args.sm_samples).round().tolist()})
    totals = dict(gathers=0, rows=0, lines=0, programs=0)
    misses = 0
    for s in sm_ids:
        pids = [s + k * sms for k in range(args.waves * args.resident) if s + k * sms < layout.count]
        step_lists = []
        for pid in pids:
            stats, step_lines = program_stats(layout, inputs, pid, row_bytes)
            for k in ("gathers", "rows", "lines"):
                totals[k] += stats[k]
            totals["programs"] += 1
            step_lists.append(step_lines)
        misses += simulate_sm(step_lists, args.resident, args.l1_kib * 1024 // LINE)
    g = max(totals["gathers"], 1)
    p = max(totals["programs"], 1)
    return dict(programs=layout.count, programs_sampled=totals["programs"], gathers_per_program=totals["gathers"] / p,
                rows_per_program=totals["rows"] / p, lines_per_program=totals["lines"] / p,
                gathers_per_row=totals["gathers"] / max(totals["rows"], 1), lines_per_gather=totals["lines"] / g,
                l2_bytes_per_gather=misses * LINE / g, row_bytes=row_bytes)


# ----------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------

def parse_tile(text: str):
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"--tile: got {text!r}, expected HxW, e.g. 8x8")
    return int(parts[0]), int(parts[1])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", nargs="+", choices=sorted(benchlib.presets()), default=["detr_enc", "seg512", "cssformer"])
    p.add_argument("--layout", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    p.add_argument("--inputs", nargs="+", choices=INPUTS, default=list(INPUTS))
    p.add_argument("--dtype", nargs="+", choices=list(ITEMSIZE), default=["fp32", "bf16"])
    p.add_argument("--block-r", type=int, default=32, help="rows layout: rows per program (default: the untuned config)")
    p.add_argument("--strip", type=int, default=64, help="strip layout: queries per program")
    p.add_argument("--tile", type=parse_tile, default=(8, 8), help="tile layout: HxW queries per program")
    p.add_argument("--sms", type=int, default=132, help="SMs of the modelled GPU (launch order: program i on SM i mod sms)")
    p.add_argument("--resident", type=int, default=4, help="programs resident on one SM at a time")
    p.add_argument("--l1-kib", type=int, default=192, help="L1 capacity left for data, KiB")
    p.add_argument("--sm-samples", type=int, default=3, help="SMs simulated")
    p.add_argument("--waves", type=int, default=2, help="waves of resident programs simulated per SM")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="default: bench_results/locality-<cpu>-<time>.json")
    p.add_argument("--markdown", type=Path, help="also write the table (with the old/new ratios) as Markdown")
    p.add_argument("--docs", action="store_true",
                   help="write the JSON to docs/results/locality-cpu-model-<date>.json and the table into "
                        "docs/performance.md (between the locality-report markers)")
    args = p.parse_args(argv)
    for name in ("block_r", "strip", "sms", "resident", "l1_kib", "sm_samples", "waves"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: got {getattr(args, name)}, expected >= 1")
    return args


def ratios(rows: list[dict]) -> list[dict]:
    """Per (shape, inputs, layer, dtype): rows layout over each other layout, in lines and L2 bytes per gather."""
    out = []
    base = {(r["shape"], r["inputs"], r.get("layer"), r["dtype"]): r for r in rows if r["layout"] == "rows"}
    for r in rows:
        b = base.get((r["shape"], r["inputs"], r.get("layer"), r["dtype"]))
        if b is None or r["layout"] == "rows":
            continue
        out.append(dict(shape=r["shape"], inputs=r["inputs"], layer=r.get("layer"), dtype=r["dtype"], layout=r["layout"],
                        lines_ratio=b["lines_per_gather"] / r["lines_per_gather"],
                        l2_ratio=b["l2_bytes_per_gather"] / r["l2_bytes_per_gather"]))
    return out


def print_tables(rows, ratio_rows, title):
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(150, Console().width))
    table = Table(title=title, caption="per program (sampled); L2 B/gather: one-SM LRU model")
    for col in ("shape", "inputs", "layer", "dtype", "layout", "gathers/prog", "rows/prog", "lines/prog",
                "gathers/row", "lines/gather", "L2 B/gather"):
        table.add_column(col, justify="left" if col in ("shape", "inputs", "layer", "dtype", "layout") else "right")
    for r in rows:
        table.add_row(r["shape"], r["inputs"], r.get("layer") or "", r["dtype"], r["layout"], f"{r['gathers_per_program']:.0f}",
                      f"{r['rows_per_program']:.0f}", f"{r['lines_per_program']:.0f}", f"{r['gathers_per_row']:.2f}",
                      f"{r['lines_per_gather']:.3f}", f"{r['l2_bytes_per_gather']:.1f}")
    console.print(table)
    t2 = Table(title="old (rows) / new, per gather: >1 means the new layout touches fewer lines",
               caption=f"target for local inputs: >= {TARGET_RATIO}x fewer lines per gather")
    for col in ("shape", "inputs", "layer", "dtype", "layout", "lines ratio", "L2 bytes ratio"):
        t2.add_column(col)
    for r in ratio_rows:
        t2.add_row(r["shape"], r["inputs"], r["layer"] or "", r["dtype"], r["layout"], f"{r['lines_ratio']:.2f}x",
                   f"{r['l2_ratio']:.2f}x")
    console.print(t2)


def markdown(rows, ratio_rows) -> str:
    lines = ["| shape | inputs | dtype | layout | gathers/program | rows/program | lines/program | lines/gather | L2 B/gather (model) | old/new lines | old/new L2 B |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    rat = {(r["shape"], r["inputs"], r["layer"], r["dtype"], r["layout"]): r for r in ratio_rows}
    for r in rows:
        x = rat.get((r["shape"], r["inputs"], r.get("layer"), r["dtype"], r["layout"]))
        old_new = ("", "") if x is None else (f"{x['lines_ratio']:.2f}x", f"{x['l2_ratio']:.2f}x")
        inputs = r["inputs"] + (f" ({r['layer']})" if r.get("layer") else "")
        lines.append(f"| {r['shape']} | {inputs} | {r['dtype']} | {r['layout']} | {r['gathers_per_program']:.0f} | "
                     f"{r['rows_per_program']:.0f} | {r['lines_per_program']:.0f} | {r['lines_per_gather']:.3f} | "
                     f"{r['l2_bytes_per_gather']:.1f} | {old_new[0]} | {old_new[1]} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    presets = benchlib.presets()
    rows = []
    for shape_name in args.shape:
        shape = presets[shape_name]
        for inputs_name in args.inputs:
            try:
                sources = msda_inputs.locations(inputs_name, shape_name, shape, args.seed)
            except ValueError as err:
                print(f"  {shape_name}: {err}, skipped", file=sys.stderr)
                continue
            if not sources:
                print(f"  {shape_name}: no recorded locations for this shape, skipped", file=sys.stderr)
            for layer, loc in sources:
                inputs = Inputs(inputs_name, layer, loc)
                for layout_name in args.layout:
                    try:
                        layout = Layout(layout_name, shape, block_r=args.block_r, strip=args.strip, tile=args.tile)
                    except ValueError as err:
                        print(f"  {shape_name}: {err}, skipped", file=sys.stderr)
                        continue
                    for dtype in args.dtype:
                        r = measure(layout, inputs, dtype, args)
                        rows.append(dict(layout=layout_name, inputs=inputs_name, layer=layer, shape=shape_name,
                                         shape_desc=shape.describe(), dtype=dtype, **r))
    ratio_rows = ratios(rows)
    env = benchlib.environment(torch.device("cpu"), model=dict(
        sms=args.sms, resident=args.resident, l1_kib=args.l1_kib, sm_samples=args.sm_samples, waves=args.waves,
        line_bytes=LINE, block_r=args.block_r, strip=args.strip, tile=list(args.tile), seed=args.seed,
        recorded="cssformer-swin-t at random init, one random 512x512 image; detr_enc: one MSDeformAttn at its init",
        local_sigma_px=msda_inputs.LOCAL_SIGMA_PX))
    print_tables(rows, ratio_rows, "Locality of the sampling kernels' layouts (CPU cache model)")
    root = Path(__file__).resolve().parents[1]
    default = (root / "docs" / "results" / f"locality-cpu-model-{env['date'][:10]}.json" if args.docs
               else benchlib.default_json_path("locality", benchlib.device_name(torch.device("cpu"))))
    path = benchlib.write_json(args.json or default, environment=env, rows=rows, ratios=ratio_rows)
    if args.markdown:
        args.markdown.write_text(markdown(rows, ratio_rows) + "\n")
    if args.docs:
        note = (f"Generated {env['date'][:10]} by `python bench/locality_report.py --docs` (model: {args.sms} SMs, "
                f"{args.resident} programs resident, {args.l1_kib} KiB LRU L1 of 128-byte lines, {args.sm_samples} SMs x "
                f"{args.waves} waves simulated; raw rows: `docs/results/{path.name}`).")
        benchlib.replace_marked(root / "docs" / "performance.md", "locality-report", note + "\n\n" + markdown(rows, ratio_rows))
    print(f"wrote {path} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

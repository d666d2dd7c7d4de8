#!/usr/bin/env python
"""Static cost report of the Triton sampling kernels: no GPU needed.

Each kernel (forward, backward; canonical and fused form; fp32/bf16/fp16) is compiled for sm_90 (and
sm_80) at every config autotune may choose and at the call signatures the model and the bench presets
use, exactly as Triton's launcher would compile it for that call, and the compiler's output is read:

    python bench/kernel_report.py                        # everything; JSON under docs/results/
    python bench/kernel_report.py --shape cssformer --dtype bf16 --config default
    python bench/kernel_report.py --arch 90 --kernel forward --json out.json

How a variant is obtained. The kernels' own launchers (``msda_forward``, ``msda_fused_backward``, ...)
are called on ``meta`` tensors of the preset's shape and dtypes, with ``autotune.choose`` forced to the
config and the ``@triton.jit`` functions of the kernel's module replaced by a recorder; the recorded
call goes through Triton's own binder (the function ``JITFunction.run`` uses), which gives the
signature, the constexprs and the launch specialisation: ``tt.divisibility = 16`` on every pointer
(fresh allocations are 16-byte aligned) and on every integer argument divisible by 16, integers equal
to 1 as constants. So the report follows whatever the launchers do (block sizes, layouts, clamps) with
no copy of their logic here. ``KERNELS`` is the one table to extend for a new kernel.

What is read, per compiled variant:

- registers, spill stores/loads and stack frame from ``ptxas -v`` on the PTX (the same ptxas and flags
  Triton uses; the ptxas inside the triton wheel), shared memory from the kernel's metadata (what the
  launch asks for);
- SASS (``nvdisasm`` of the cubin): global loads per width (``LDG``), atomics per width (``RED`` /
  ``ATOM``), global stores, in the whole kernel and in the inner loop;
- **warp instructions per corner gather**: the inner loop is the innermost loop (a backward branch
  to a label, the body from the label to the branch) that issues the most global loads and atomics.
  Its SASS instructions (NOPs excluded) are counted; each warp of the program executes them once per
  iteration, so ``loop_instructions * num_warps / gathers_per_iteration`` is the cost per corner-row
  gather (``gathers_per_iteration`` from the kernel's layout, e.g. ``4 * BLOCK_R * P_BLOCK`` rows of D
  channels for the rows layout). A static count: predicated-off instructions are counted, loop
  overhead is included, everything outside the loop (per-row set-up, the fused softmax, the output
  store) is not.
"""
from __future__ import annotations

import os

if __name__ == "__main__":
    # Before triton is imported: the report compiles real kernels, the interpreter's functions cannot be.
    os.environ.pop("TRITON_INTERPRET", None)

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import Counter  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FORMS = ("canonical", "fused")
ARCHS = (90, 80)
# Issue 14's targets (at the chosen configs): forward <= 4.0 instructions per gather, <= 128 registers,
# no spills; backward <= 9 instructions per gather, no spills.
TARGETS = {"forward": {"instructions_per_gather": 4.0, "registers": 128}, "backward": {"instructions_per_gather": 9.0}}


# ----------------------------------------------------------------------------------------------------
# The kernel table
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One call signature: a preset's shape, the form and the dtypes of the floating tensors."""

    shape_name: str
    form: str
    dtype: str

    @property
    def fused(self) -> bool:
        return self.form == "fused"

    def tensors(self) -> dict:
        """``meta`` tensors of the call (no memory): value, level tensors, locations/offsets,
        weights/logits, reference points, grad_output."""
        from cssformer_kernels.shapes import level_tensors

        s = benchlib.presets()[self.shape_name]
        dt = DTYPES[self.dtype]
        N, Q, M, D, L, P = s.N, s.num_queries, s.M, s.D, s.L, s.P
        spatial_shapes, level_start_index = level_tensors(s.levels)

        def meta(*size, dtype=dt):
            return torch.empty(*size, dtype=dtype, device="meta")

        return dict(value=meta(N, s.S, M, D), spatial_shapes=spatial_shapes.to("meta"),
                    level_start_index=level_start_index.to("meta"), sampling=meta(N, Q, M, L, P, 2),
                    weights=meta(N, Q, M, L, P), ref=meta(N, Q, 2, dtype=benchlib.ref_dtype(self.shape_name, dt)),
                    grad_output=meta(N, Q, M * D))

    def dtypes(self) -> dict:
        t = self.tensors()
        names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
        out = {"value": names[t["value"].dtype], "coords": names[t["sampling"].dtype]}
        if self.fused:
            out["ref"] = names[t["ref"].dtype]
        return out


def _forward_call(mod, case: Case) -> None:
    t = case.tensors()
    if case.fused:
        mod.msda_fused_forward(t["value"], t["spatial_shapes"], t["level_start_index"], t["ref"], t["sampling"],
                               t["weights"])
    else:
        mod.msda_forward(t["value"], t["spatial_shapes"], t["level_start_index"], t["sampling"], t["weights"])


def _backward_call(mod, case: Case) -> None:
    t = case.tensors()
    if case.fused:
        mod.msda_fused_backward(t["grad_output"], t["value"], t["spatial_shapes"], t["level_start_index"], t["ref"],
                                t["sampling"], t["weights"])
    else:
        mod.msda_backward(t["grad_output"], t["value"], t["spatial_shapes"], t["level_start_index"], t["sampling"],
                          t["weights"])


def rows_layout_gathers(constexprs: dict, num_warps: int) -> int:
    """Corner-row gathers per inner-loop iteration of the rows layout: 4 corners of ``P_BLOCK`` points of
    ``BLOCK_R`` rows (each a contiguous D-channel row of ``value``)."""
    return 4 * constexprs["BLOCK_R"] * constexprs["P_BLOCK"]


def autotune_configs() -> list[dict]:
    from cssformer_kernels import autotune

    configs = list(autotune.CONFIG_SPACE)
    return configs + ([autotune.DEFAULT_CONFIG] if autotune.DEFAULT_CONFIG not in configs else [])


def autotune_default(case: Case) -> dict:
    from cssformer_kernels import autotune

    return autotune.DEFAULT_CONFIG


@dataclass(frozen=True)
class Kernel:
    """One entry of :data:`KERNELS`.

    ``module``: where the launcher and its ``@triton.jit`` functions live. ``call(module, case)``: calls
    the public launcher on the case's meta tensors (whatever jit function it launches is recorded).
    ``gathers(constexprs, num_warps)``: corner-row gathers per inner-loop iteration, from the recorded
    launch's constexprs (per layout). ``configs()``: the configs autotune may choose; ``default(case)``:
    the config an untuned launch uses at that case."""

    module: str
    call: Callable
    gathers: Callable = rows_layout_gathers
    configs: Callable = autotune_configs
    default: Callable = autotune_default


KERNELS = {
    "forward": Kernel("cssformer_kernels.msda_forward", _forward_call),
    "backward": Kernel("cssformer_kernels.msda_backward", _backward_call),
}


def config_name(config: dict) -> str:
    """``BLOCK_R x P_BLOCK x warps x stages`` (as ``CSSFORMER_AUTOTUNE_CONFIGS`` spells it), then any other key."""
    base = ["BLOCK_R", "P_BLOCK", "num_warps", "num_stages"]
    name = "x".join(str(config[k]) for k in base if k in config)
    extra = [f"{k}={v}" for k, v in sorted(config.items()) if k not in base]
    return ",".join([name, *extra])


# ----------------------------------------------------------------------------------------------------
# Recording a launch and specialising it as Triton's launcher does
# ----------------------------------------------------------------------------------------------------

@dataclass
class Launch:
    """A recorded launch: the jit function (module attribute name), grid, arguments."""

    attr: str
    grid: tuple
    args: tuple
    kwargs: dict


class _Recorder:
    def __init__(self, attr: str, sink: list):
        self.attr, self.sink = attr, sink

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.sink.append(Launch(self.attr, tuple(grid) if not callable(grid) else grid, args, kwargs))
        return launch


def record(kernel_name: str, case: Case, config: dict) -> list[Launch]:
    """The launches the kernel's launcher makes for ``case`` when autotune picks ``config``."""
    import triton

    from cssformer_kernels import autotune

    entry = KERNELS[kernel_name]
    mod = importlib.import_module(entry.module)
    jit_attrs = [k for k, v in vars(mod).items() if isinstance(v, triton.runtime.jit.JITFunction)]
    saved = {k: getattr(mod, k) for k in jit_attrs}
    saved_choose = autotune.choose
    sink: list[Launch] = []
    try:
        for k in jit_attrs:
            setattr(mod, k, _Recorder(k, sink))
        autotune.choose = lambda *args, **kwargs: dict(config)
        entry.call(mod, case)
    finally:
        for k, v in saved.items():
            setattr(mod, k, v)
        autotune.choose = saved_choose
    if not sink:
        raise RuntimeError(f"{kernel_name}: the launcher launched no @triton.jit function of {entry.module}")
    return sink


def specialise(kernel_name: str, launch: Launch, arch: int):
    """``(jit function, signature, constexprs, attrs, options)`` as ``JITFunction.run`` computes them."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = getattr(importlib.import_module(KERNELS[kernel_name].module), launch.attr)
    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, launch.kwargs, bound, specialization, options)
    return fn, signature, constexprs, attrs, options


def named_constexprs(fn, constexprs: dict) -> dict:
    """``{(index,): value}`` -> ``{name: value}`` (dtypes as their names)."""
    names = fn.arg_names
    return {names[k[0]]: (str(v) if not isinstance(v, (bool, int, float)) else v) for k, v in constexprs.items()}


# ----------------------------------------------------------------------------------------------------
# Compiling and reading the compiler's output
# ----------------------------------------------------------------------------------------------------

def tool(name: str) -> str:
    """A CUDA tool shipped inside the triton wheel (``ptxas``, ``nvdisasm``, ``cuobjdump``)."""
    import triton.backends.nvidia as nvidia

    path = Path(nvidia.__file__).parent / "bin" / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: not in this triton wheel")
    return str(path)


def ptxas_info(ptx: str, arch: int) -> dict:
    """Registers, spills and stack frame from ``ptxas -v`` with Triton's flags."""
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory(prefix="kernel-report-") as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        proc = subprocess.run([tool("ptxas"), "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={gpu}", str(src),
                               "-o", str(Path(tmp) / "k.o")], capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed: {log[-2000:]}")

    def number(pattern):
        m = re.search(pattern, log)
        return int(m.group(1)) if m else None

    return dict(registers=number(r"Used (\d+) registers"), stack_bytes=number(r"(\d+) bytes stack frame"),
                spill_store_bytes=number(r"(\d+) bytes spill stores"), spill_load_bytes=number(r"(\d+) bytes spill loads"))


_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Za-z0-9_.]*)([^;]*);")  # F32x4: lower-case x
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")


def disassemble(cubin: bytes) -> list[tuple[int, str, str, list[str]]]:
    """``[(address, opcode, operands, labels just before it)]`` of the cubin's SASS."""
    with tempfile.TemporaryDirectory(prefix="kernel-report-") as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        proc = subprocess.run([tool("nvdisasm"), "-c", str(path)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"nvdisasm failed: {proc.stderr[-2000:]}")
    out, pending = [], []
    for line in proc.stdout.splitlines():
        m = _LABEL.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = _INSTR.search(line)
        if m:
            out.append((int(m.group(1), 16), m.group(3), m.group(4), pending))
            pending = []
    return out


def memory_op(opcode: str):
    """``("load" | "store" | "atomic", bits)`` of a global memory instruction, else ``None``."""
    parts = opcode.split(".")
    if parts[0] == "LDG":
        kind = "load"
    elif parts[0] == "STG":
        kind = "store"
    elif parts[0] in ("RED", "REDG", "ATOM", "ATOMG"):
        kind = "atomic"
    else:
        return None
    bits = 32
    for p in parts[1:]:
        if p in ("64", "128"):
            bits = int(p)
        elif p in ("U16", "S16"):
            bits = 16
        elif p in ("U8", "S8"):
            bits = 8
        elif re.fullmatch(r"(F|BF)16x2", p):
            bits = 32
        elif re.fullmatch(r"F32x(\d)", p):
            bits = 32 * int(p[4:])
        elif p == "F64":
            bits = 64
    return kind, bits


def memory_counts(instrs) -> dict:
    counts = {"load": Counter(), "store": Counter(), "atomic": Counter()}
    for _, opcode, _, _ in instrs:
        op = memory_op(opcode)
        if op:
            counts[op[0]][op[1]] += 1
    return {k: {str(b): n for b, n in sorted(v.items())} for k, v in counts.items()}


def inner_loop(instrs):
    """The instructions of the innermost loop that issues the most global loads and atomics (``[]``: no loop)."""
    where = {}
    for i, (_, _, _, labels) in enumerate(instrs):
        for label in labels:
            where[label] = i
    loops = {}  # label index -> last back-branch index
    for i, (_, opcode, operands, _) in enumerate(instrs):
        if opcode.startswith("BRA"):
            m = _TARGET.search(operands)
            if m and m.group(1) in where and where[m.group(1)] <= i:
                start = where[m.group(1)]
                loops[start] = max(loops.get(start, i), i)
    spans = sorted(loops.items())
    innermost = [(a, b) for a, b in spans if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in spans)]

    def traffic(span):
        a, b = span
        return sum(1 for _, opcode, _, _ in instrs[a:b + 1] if (memory_op(opcode) or ("",))[0] in ("load", "atomic"))

    if not innermost:
        return []
    a, b = max(innermost, key=traffic)
    return instrs[a:b + 1]


def compile_variant(kernel_name: str, case: Case, config: dict, arch: int) -> dict:
    """Compile one variant and read its costs (a worker: picklable arguments, a dict back)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    launches = record(kernel_name, case, config)
    fn, signature, constexprs, attrs, options = specialise(kernel_name, launches[0], arch)
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", arch, 32),
                              options=options.__dict__)
    info = ptxas_info(compiled.asm["ptx"], arch)
    instrs = disassemble(compiled.asm["cubin"])
    loop = inner_loop(instrs)
    named = named_constexprs(fn, constexprs)
    num_warps = options.num_warps
    gathers = KERNELS[kernel_name].gathers(named, num_warps)
    loop_instructions = sum(1 for _, opcode, _, _ in loop if not opcode.startswith("NOP"))
    return dict(
        jit=launches[0].attr, launches=len(launches), grid=list(launches[0].grid) if not callable(launches[0].grid) else None,
        constexprs=named, signature={k: v for k, v in signature.items() if v != "constexpr"},
        divisible_by_16=sorted(fn.arg_names[k[0]] for k, v in attrs.items() if ["tt.divisibility", 16] in v),
        num_warps=num_warps, num_stages=options.num_stages,
        registers=info["registers"], spill_bytes=(info["spill_store_bytes"] or 0) + (info["spill_load_bytes"] or 0),
        spill_store_bytes=info["spill_store_bytes"], spill_load_bytes=info["spill_load_bytes"],
        stack_bytes=info["stack_bytes"], shared_bytes=compiled.metadata.shared,
        sass_instructions=sum(1 for _, opcode, _, _ in instrs if not opcode.startswith("NOP")),
        loop_instructions=loop_instructions, gathers_per_iteration=gathers,
        instructions_per_gather=round(loop_instructions * num_warps / gathers, 3) if loop and gathers else None,
        global_memory=memory_counts(instrs), loop_global_memory=memory_counts(loop),
    )


# ----------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------

@dataclass
class Job:
    kernel: str
    case: Case
    config: dict
    arch: int
    default: bool
    key: tuple = field(default=())


def compile_key(job: Job) -> tuple:
    """Two jobs with the same key compile to the same binary (the preset enters only through it)."""
    fn, signature, constexprs, attrs, options = specialise(job.kernel, record(job.kernel, job.case, job.config)[0],
                                                           job.arch)
    return (job.kernel, fn.__name__, tuple(sorted(signature.items())), tuple(sorted((k, str(v)) for k, v in constexprs.items())),
            tuple(sorted((k, str(v)) for k, v in attrs.items())), str(options), job.arch)


def select_configs(mode: str, entry: Kernel, case: Case, arch: int, model_configs: str = "all") -> list[dict]:
    """The configs of one (kernel, case, arch) for ``--config``: ``auto`` = every config autotune may choose
    on sm_90 at the model's shapes, the default config elsewhere (sm_80 at the model's shapes only);
    ``all`` = every config everywhere; ``default``; or ``;``-separated names. ``model_configs`` (names or
    ``all``) narrows what ``auto`` compiles at the model's shapes (the default config always included)."""
    default = entry.default(case)
    model = case.shape_name in benchlib.MODEL_PRESETS
    if mode == "auto":
        if arch != 90 and not model:
            return []
        if not (arch == 90 and model):
            return [default]
        if model_configs == "all":
            return entry.configs()
        names = model_configs.split(";")
        return [c for c in entry.configs() if config_name(c) in names or c == default]
    if mode == "all":
        return entry.configs()
    if mode == "default":
        return [default]
    names = mode.split(";")
    return [c for c in entry.configs() if config_name(c) in names]


def make_jobs(args) -> list[Job]:
    jobs = []
    for arch in args.arch:
        for kernel in args.kernel:
            entry = KERNELS[kernel]
            for shape in args.shape:
                for form in args.form:
                    for dtype in args.dtype:
                        case = Case(shape, form, dtype)
                        default = entry.default(case)
                        for config in select_configs(args.config, entry, case, arch, args.model_configs):
                            jobs.append(Job(kernel, case, dict(config), arch, config == default))
    return jobs


def _run_job(job: Job) -> dict:
    return compile_variant(job.kernel, job.case, job.config, job.arch)


def run(jobs: list[Job], workers: int, progress: Callable[[str], None] = print) -> list[dict]:
    """One row per job; each distinct binary compiled once."""
    by_key: dict = {}
    for job in jobs:
        job.key = compile_key(job)
        by_key.setdefault(job.key, job)
    progress(f"{len(jobs)} rows, {len(by_key)} distinct compiles")
    results = {}
    unique = list(by_key.values())
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for i, (job, result) in enumerate(zip(unique, pool.map(_run_job, unique))):
                results[job.key] = result
                progress(f"[{i + 1}/{len(unique)}] sm_{job.arch} {job.kernel} {job.case.form} {job.case.dtype} "
                         f"{config_name(job.config)}")
    else:
        for i, job in enumerate(unique):
            results[job.key] = _run_job(job)
            progress(f"[{i + 1}/{len(unique)}] sm_{job.arch} {job.kernel} {job.case.form} {job.case.dtype} "
                     f"{config_name(job.config)}")
    rows = []
    for job in jobs:
        r = results[job.key]
        rows.append(dict(kernel=job.kernel, form=job.case.form, dtype=job.case.dtype, dtypes=job.case.dtypes(),
                         shape=job.case.shape_name, shape_desc=benchlib.presets()[job.case.shape_name].describe(),
                         arch=f"sm_{job.arch}", config=config_name(job.config), config_dict=job.config,
                         default=job.default, **r))
    return rows


def target_notes(row: dict) -> list[str]:
    """Which of issue 14's targets the row misses."""
    t = TARGETS[row["kernel"]]
    misses = []
    ipg = row["instructions_per_gather"]
    if ipg is None or ipg > t["instructions_per_gather"]:
        misses.append(f"instr/gather > {t['instructions_per_gather']}")
    if "registers" in t and row["registers"] > t["registers"]:
        misses.append(f"registers > {t['registers']}")
    if row["spill_bytes"]:
        misses.append("spills")
    return misses


def widths(counts: dict) -> str:
    return " ".join(f"{n}x{b}" for b, n in counts.items()) or "-"


def print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption="*: the config an untuned launch uses at that shape; loads / atomics: "
                                       "count x bits, in the inner loop")
    for col in ("arch", "shape", "kernel", "form", "dtype", "config", "regs", "spill B", "shared B", "loop instr",
                "gathers/iter", "instr/gather", "loads", "atomics"):
        table.add_column(col, justify="right" if col in ("regs", "spill B", "shared B", "loop instr", "gathers/iter",
                                                          "instr/gather") else "left")
    for r in rows:
        ipg = r["instructions_per_gather"]
        table.add_row(r["arch"], r["shape"], r["kernel"], r["form"], r["dtype"],
                      r["config"] + (" *" if r["default"] else ""), str(r["registers"]), str(r["spill_bytes"]),
                      str(r["shared_bytes"]), str(r["loop_instructions"]), str(r["gathers_per_iteration"]),
                      "-" if ipg is None else f"{ipg:.2f}", widths(r["loop_global_memory"]["load"]),
                      widths(r["loop_global_memory"]["atomic"]))
    Console(width=max(170, Console().width)).print(table)


def markdown_table(rows: list[dict]) -> str:
    """The doc table: sm_90, the model's and the presets' shapes, default config and best config."""
    lines = ["| arch | shape | kernel | form | dtype | config | registers | spills B | shared B | instr/gather | loads in loop | atomics in loop |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ipg = r["instructions_per_gather"]
        lines.append(f"| {r['arch']} | {r['shape']} | {r['kernel']} | {r['form']} | {r['dtype']} | {r['config']}{' (default)' if r['default'] else ''} "
                     f"| {r['registers']} | {r['spill_bytes']} | {r['shared_bytes']} | {'-' if ipg is None else f'{ipg:.2f}'} "
                     f"| {widths(r['loop_global_memory']['load'])} | {widths(r['loop_global_memory']['atomic'])} |")
    return "\n".join(lines)


def summary_rows(rows: list[dict]) -> list[dict]:
    """Per (arch, shape, kernel, form, dtype): the default config's row and the fewest-instructions row."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["arch"], r["shape"], r["kernel"], r["form"], r["dtype"]), []).append(r)
    out = []
    for group in groups.values():
        default = [r for r in group if r["default"]]
        best = min(group, key=lambda r: (r["spill_bytes"] > 0, r["instructions_per_gather"] or 1e9))
        out += default + ([best] if best not in default else [])
    return out


def default_json_path() -> Path:
    import triton

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return ROOT / "docs" / "results" / f"kernel-report-cpu-static-triton{triton.__version__}-{date}.json"


def parse_args(argv=None):
    presets = sorted(benchlib.presets())
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernel", nargs="+", choices=list(KERNELS), default=list(KERNELS))
    p.add_argument("--form", nargs="+", choices=FORMS, default=list(FORMS))
    p.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    p.add_argument("--shape", nargs="+", choices=presets, default=["cssformer", "detr_enc", "seg512"],
                   help="presets (bench_msda's): the model's call signature and the bench's")
    p.add_argument("--arch", nargs="+", type=int, choices=ARCHS, default=list(ARCHS), help="compute capability")
    p.add_argument("--config", default="auto",
                   help="auto (default: every config autotune may choose on sm_90 at the model's shapes, the "
                        "default config elsewhere, sm_80 only at the model's shapes), all (every config, every "
                        "arch and shape), default, or names such as '32x4x4x1;16x4x4x1'")
    p.add_argument("--model-configs", default="all",
                   help="with --config auto: the configs compiled at the model's shape on sm_90 (';'-separated "
                        "names, e.g. '32x4x4x1,D_SPLIT=1,LAYOUT=rows'; the default config always), or all")
    p.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
    p.add_argument("--json", type=Path, help="default: docs/results/kernel-report-cpu-static-triton<version>-<date>.json")
    p.add_argument("--markdown", type=Path, help="also write the summary table (default and best config) as Markdown")
    p.add_argument("--docs", action="store_true",
                   help="write the JSON to docs/results/ (the default path) and the summary table into "
                        "docs/performance.md (between the kernel-report markers)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs: got {args.jobs}, expected >= 1")
    return args


def main(argv=None) -> int:
    import triton

    args = parse_args(argv)
    jobs = make_jobs(args)
    if not jobs:
        print("no variant matches (check --config names, e.g. 32x4x4x1)", file=sys.stderr)
        return 2
    rows = run(jobs, args.jobs, progress=(lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr)))
    env = benchlib.environment(torch.device("cpu"), tools=dict(ptxas=tool("ptxas"), nvdisasm=tool("nvdisasm")),
                               method="static: triton.compile for an explicit GPUTarget, ptxas -v, nvdisasm; no GPU")
    path = benchlib.write_json(args.json or default_json_path(), triton=triton.__version__, environment=env,
                               targets=TARGETS, rows=rows)
    print_table(rows, f"Static cost of the sampling kernels, Triton {triton.__version__} (compiled for the target, no GPU)")
    summary = summary_rows(rows)
    if args.markdown:
        args.markdown.write_text(markdown_table(summary) + "\n")
    if args.docs:
        note = (f"Triton {triton.__version__}, compiled for the targets on {env['device']} (no GPU used), "
                f"{env['date'][:10]}, by `{shlex.join(['python', 'bench/kernel_report.py', *sys.argv[1:]])}` "
                f"(raw rows: `docs/results/{path.name}`).")
        benchlib.replace_marked(ROOT / "docs" / "performance.md", "kernel-report", note + "\n\n" + markdown_table(summary))
    misses = [(r, target_notes(r)) for r in summary if r["default"]]
    for r, m in misses:
        if m:
            print(f"  {r['arch']} {r['shape']} {r['kernel']} {r['form']} {r['dtype']} {r['config']} (default): {', '.join(m)}")
    print(f"wrote {path} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

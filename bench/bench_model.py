#!/usr/bin/env python
"""Benchmark of whole segmentation models: train step, inference, decoder alone, peak memory and
images/s, per model x precision x sampling backend x eager/compiled, plus the data loader's images/s.

    python bench/bench_model.py                                   # swin-t models + nano, fp32 bf16, eager
    python bench/bench_model.py --model cssformer-swin-t --precision bf16 --backend triton reference
    python bench/bench_model.py --model cssformer-swin-t --mode eager compiled --cuda-graphs
    python bench/bench_model.py --model cssformer-swin-t --precision bf16 --profile   # per-op table
    python bench/bench_model.py --smoke --json /tmp/model.json    # CI: nano models on the CPU, seconds
    python bench/bench_model.py --model cssformer-swin-t --variant legacy fast   # former vs fast model paths
    python bench/bench_model.py --account --model cssformer-swin-t upernet-swin-t --precision bf16 \
        --json docs/results/model-account.json                     # op account, no GPU needed (op_account.py)

What is timed (``time.perf_counter`` around each call, the device synchronised before and after):
- train step: forward + loss (CE + 0.4 aux CE) + backward + AdamW step at ``--batch`` images, the
  mean of ``--steps`` steps after ``--warmup`` steps; ``train img/s`` = batch / step time.
- inference: batch 1, ``torch.no_grad()``, eval mode, mean of ``--reps`` calls after ``--warmup``.
- decoder: the decoder alone (neck + decoder + head; backbone features computed once and given),
  forward + backward into its parameters, mean of ``--steps`` after ``--warmup``.
- peak train memory: ``torch.cuda.max_memory_allocated`` over the train steps (CUDA only).
- compiled: ``torch.compile`` (default mode) of the model (train step and inference) and of the
  decoder; the first call's time is reported as ``compile s``. ``--cuda-graphs`` adds an inference
  row compiled with ``mode="reduce-overhead"`` (CUDA graphs, batch 1).
- loader: images/s the training DataLoader delivers (synthetic set, or ``--data-root`` folder dataset)
  at the crop size and the default worker count, next to the images/s a train step consumes.

Variant: ``fast`` (default: the model's fast paths and ``AdamW(fused=True)`` on CUDA) or ``legacy`` (the
former forms, ``cssformer.models.set_fast_paths(model, False)``, and foreach AdamW), to time both in one run.
``--tf32``: fp32 matmuls / convolutions on TF32 tensor cores (``cssformer.engine.runtime.set_tf32``).
``--account``: instead of timing, the device-independent op account of ``bench/op_account.py``.

Precision: ``fp32`` or ``bf16`` (``torch.autocast``, weights in fp32, as ``cssformer-train --amp bf16``).
Sampling backend: ``auto``/``triton``/``reference`` is set on every sampling layer (``override_backend``)
of models that have one (cssformer, msdeform-fpn: the Mask2Former pixel decoder); the others get one row, backend ``-``.
Inputs are random normal images and random masks. Results go to a rich table and a JSON file
(``--json PATH``, default ``./bench_results/model-<device>-<UTC time>.json``) with the environment.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
import op_account  # noqa: E402
from benchlib import default_json_path, environment, write_json  # noqa: E402

from cssformer.engine import runtime  # noqa: E402
from cssformer.models import SegmentationLoss, build_model, set_fast_paths  # noqa: E402
from cssformer_kernels import override_backend  # noqa: E402

SWIN_T_MODELS = ["cssformer-swin-t", "upernet-swin-t", "fpn-swin-t", "segformer-swin-t", "msdeform-fpn-swin-t",
                 "cssformer-nano"]
SMOKE_MODELS = ["cssformer-nano", "upernet-nano"]
BACKENDS = ("auto", "triton", "reference")
MODES = ("eager", "compiled")
VARIANTS = ("fast", "legacy")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> tuple[float, float]:
    """(seconds of the first call, mean seconds of ``reps`` calls after ``warmup`` more)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t0
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return first, statistics.fmean(times)


class TrainStep:
    """One train step of ``model`` (called through ``run``: the model or its compiled wrapper) on random
    images and masks: forward + loss under autocast, backward, AdamW."""

    def __init__(self, model, run, precision: str, args, device, variant: str = "fast"):
        h, w = args.size
        self.run, self.precision, self.device = run, precision, device
        self.loss_fn = SegmentationLoss()
        set_fast_paths(self.loss_fn, variant == "fast")
        fused = variant == "fast" and device.type == "cuda"
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True if fused else None)
        self.images = torch.randn(args.batch, 3, h, w, device=device)
        self.masks = torch.randint(0, args.num_classes, (args.batch, h, w), device=device)

    def __call__(self) -> None:
        with runtime.autocast(self.device, self.precision):
            loss, _ = self.loss_fn(self.run(self.images), self.masks)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def bench_row(name: str, precision: str, backend: str, mode: str, args, device, variant: str = "fast") -> dict:
    """One model x precision x backend x mode x variant: train step, inference, decoder; the row as a dict."""
    torch.manual_seed(0)
    h, w = args.size
    model = build_model(name, args.num_classes, img_size=[h, w]).to(device)
    set_fast_paths(model, variant == "fast")
    has_sampling = override_backend(model, backend) > 0
    row = dict(model=name, precision=precision, backend=backend if has_sampling else "-", mode=mode, variant=variant,
               batch=args.batch, size=[h, w], num_classes=args.num_classes, error=None,
               params_M=sum(p.numel() for p in model.parameters()) / 1e6)
    compiled = mode == "compiled"
    run = torch.compile(model, dynamic=False) if compiled else model
    train_step = TrainStep(model, run, precision, args, device, variant)
    images = train_step.images
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first, step = timed(train_step, device, args.warmup, args.steps)
    row.update(train_step_ms=step * 1e3, train_img_s=args.batch / step, compile_train_s=first if compiled else None,
               peak_train_mem_GB=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None)
    del train_step

    model.eval()
    one = images[:1]

    def infer(fn=run):
        with torch.no_grad(), runtime.autocast(device, precision):
            fn(one)

    first, t = timed(infer, device, args.warmup, args.reps)
    row.update(infer_ms=t * 1e3, infer_img_s=1 / t, compile_infer_s=first if compiled else None)
    if compiled and args.cuda_graphs and device.type == "cuda":
        graphed = torch.compile(model, mode="reduce-overhead", dynamic=False)
        first, t = timed(lambda: infer(graphed), device, max(args.warmup, 3), args.reps)
        row.update(infer_cudagraph_ms=t * 1e3)

    model.train()
    with torch.no_grad(), runtime.autocast(device, precision):
        features = [f.detach() for f in model.backbone(images)]
    decoder = torch.compile(model.decoder, dynamic=False) if compiled else model.decoder
    grad_out = None

    def decoder_step():
        nonlocal grad_out
        with runtime.autocast(device, precision):
            out = decoder(features)
        if grad_out is None:
            grad_out = torch.randn_like(out)
        out.backward(grad_out)

    _, t = timed(decoder_step, device, args.warmup, args.steps)
    row.update(decoder_ms=t * 1e3)
    return row


def loader_rate(args, device) -> dict:
    """Images/s of the training DataLoader as ``cssformer-train`` builds it (default workers)."""
    from torch.utils.data import DataLoader

    from cssformer.data.loader import ResumableSampler, TrainSet
    from cssformer.engine import builders
    from cssformer.engine.config import resolve

    flags = dict(crop_size=list(args.size), batch_size=args.batch)
    if args.data_root:
        flags.update(dataset="folder", data_root=args.data_root)
    else:
        flags.update(dataset="synthetic", dataset_args={"size": max(args.size), "length": 64})
    cfg = resolve({}, flags)
    train_set, _ = builders.datasets(cfg)
    trainset = TrainSet(train_set, builders.transforms(cfg), cfg["seed"])
    loader = DataLoader(trainset, batch_size=args.batch, sampler=ResumableSampler(trainset), drop_last=True,
                        num_workers=cfg["num_workers"], pin_memory=device.type == "cuda")
    batches = min(args.loader_batches, len(loader))
    it = iter(loader)
    next(it)  # workers started, first batch out of the way
    t0 = time.perf_counter()
    for _ in range(batches - 1):
        next(it)
    seconds = time.perf_counter() - t0
    return dict(dataset=cfg["dataset"], num_workers=cfg["num_workers"], batch=args.batch,
                batches=batches - 1, img_s=(batches - 1) * args.batch / seconds if batches > 1 else None)


def profile_step(name: str, precision: str, backend: str, args, device, rows: int = 30,
                 variant: str = "fast") -> str:
    """Per-op table (self time, top ``rows``) of one train step after warm-up."""
    from torch.profiler import ProfilerActivity, profile

    model = build_model(name, args.num_classes, img_size=list(args.size)).to(device).train()
    set_fast_paths(model, variant == "fast")
    override_backend(model, backend)
    step = TrainStep(model, model, precision, args, device, variant)
    for _ in range(max(args.warmup, 1)):
        step()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def _fmt(value, digits=1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(rows: list[dict], loader: dict | None, title: str) -> None:
    table = Table(title=title)
    for col in ("model", "precision", "backend", "mode", "variant", "train step ms", "train img/s", "inference ms",
                "decoder f+b ms", "peak train GB", "compile s", "error"):
        table.add_column(col, justify="left" if col in ("model", "precision", "backend", "mode", "variant", "error")
                         else "right")
    for r in rows:
        compile_s = None if r.get("compile_train_s") is None else r["compile_train_s"] + (r["compile_infer_s"] or 0)
        infer = _fmt(r.get("infer_ms"))
        if r.get("infer_cudagraph_ms") is not None:
            infer += f" ({r['infer_cudagraph_ms']:.1f} graphed)"
        table.add_row(r["model"], r["precision"], r["backend"], r["mode"], r.get("variant", "-"),
                      _fmt(r.get("train_step_ms")),
                      _fmt(r.get("train_img_s")), infer, _fmt(r.get("decoder_ms")),
                      _fmt(r.get("peak_train_mem_GB"), 2), _fmt(compile_s), r["error"] or "")
    console = Console(width=200)
    console.print(table)
    if loader is not None:
        console.print(f"loader: {loader['dataset']}, {loader['num_workers']} worker(s), batch {loader['batch']}: "
                      f"{_fmt(loader['img_s'])} img/s")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--model", nargs="+", help=f"presets (default: {' '.join(SWIN_T_MODELS)})")
    p.add_argument("--precision", nargs="+", choices=runtime.PRECISIONS, help="default: fp32 bf16")
    p.add_argument("--backend", nargs="+", choices=BACKENDS, help="sampling backend (default: triton reference "
                   "on CUDA, auto elsewhere)")
    p.add_argument("--mode", nargs="+", choices=MODES, default=["eager"])
    p.add_argument("--variant", nargs="+", choices=VARIANTS, default=["fast"],
                   help="fast: the model's fast paths + fused AdamW on CUDA; legacy: the former forms")
    p.add_argument("--account", action="store_true", help="the op account (bench/op_account.py) instead of timing")
    op_account.add_arguments(p.add_argument_group("op account (--account)"))
    p.add_argument("--size", nargs=2, type=int, default=[512, 512], metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=2, help="train step batch (inference uses batch 1)")
    p.add_argument("--num-classes", type=int, default=150)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=6, help="timed train / decoder steps")
    p.add_argument("--reps", type=int, default=20, help="timed inference calls")
    p.add_argument("--cuda-graphs", action="store_true", help="compiled mode: also time reduce-overhead inference")
    p.add_argument("--profile", action="store_true", help="per-op table of one train step of each model")
    p.add_argument("--no-loader", action="store_true", help="skip the data loader measurement")
    p.add_argument("--data-root", help="time the loader on a folder dataset here instead of the synthetic set")
    p.add_argument("--loader-batches", type=int, default=20)
    p.add_argument("--json", type=Path, help="default: ./bench_results/model-<device>-<UTC time>.json")
    p.add_argument("--smoke", action="store_true", help="nano models, 64x64, fp32, a few steps (CI, CPU)")
    args = p.parse_args(argv)
    if args.smoke:
        args.model = args.model or SMOKE_MODELS
        args.precision = args.precision or ["fp32"]
        args.size, args.batch, args.num_classes = [64, 64], 2, 5
        args.warmup, args.steps, args.reps, args.loader_batches = 0, 1, 1, 3
    for flag in ("size", "batch", "num_classes", "steps", "reps", "loader_batches"):
        values = getattr(args, flag)
        if min(values if isinstance(values, list) else [values]) < 1:
            p.error(f"--{flag.replace('_', '-')}: got {values}, expected positive integers")
    if args.warmup < 0:
        p.error(f"--warmup: got {args.warmup}, expected >= 0")
    if args.account:
        args.model = args.model or op_account.DEFAULT_MODELS
        args.precision = args.precision or ["bf16"]
        return op_account.check_args(p, args)
    args.model = args.model or SWIN_T_MODELS
    args.precision = args.precision or ["fp32", "bf16"]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.account:
        op_account.run(args)
        return 0
    if args.tf32:
        runtime.set_tf32(True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backends = args.backend or (["triton", "reference"] if device.type == "cuda" else ["auto"])
    rows, profiles, seen = [], {}, set()
    for name, precision, backend, mode, variant in itertools.product(args.model, args.precision, backends, args.mode,
                                                                      args.variant):
        try:
            row = bench_row(name, precision, backend, mode, args, device, variant)
        except Exception as err:  # one failing configuration (e.g. out of memory) must not hide the others
            row = dict(model=name, precision=precision, backend=backend, mode=mode, variant=variant,
                       error=f"{type(err).__name__}: {err}".splitlines()[0][:200])
        key = (name, precision, row["backend"], mode, variant)
        if key in seen:  # a model without a sampling layer: one row whatever the backend
            continue
        seen.add(key)
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.profile:
        for name, precision, variant in itertools.product(args.model, args.precision, args.variant):
            profiles[f"{name}/{precision}/{backends[0]}/{variant}"] = text = profile_step(
                name, precision, backends[0], args, device, variant=variant)
            print(f"\nprofile: {name}, {precision}, backend {backends[0]}, {variant}, one train step\n{text}")
    loader = None if args.no_loader else loader_rate(args, device)
    env = environment(device, timing="time.perf_counter, device synchronised, mean", tf32=args.tf32)
    print_table(rows, loader, f"Model benchmark on {env['device']} ({device.type}), torch {env['torch']}, "
                f"{args.size[0]}x{args.size[1]}, {args.num_classes} classes, train batch {args.batch}")
    path = write_json(args.json or default_json_path("model", env["device"]), environment=env, rows=rows,
                      loader=loader, profiles=profiles)
    failed = [r for r in rows if r["error"]]
    print(f"wrote {path}; {len(rows) - len(failed)}/{len(rows)} rows ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Hugging Face models on our op vs transformers' default path: forward and forward+backward, same
weights, inputs and device, in one run.

    python bench/bench_hf.py                                   # every model, fp32 and bf16 autocast, on CUDA
    python bench/bench_hf.py --model deformable-detr --dtype bf16 --batch 4
    python bench/bench_hf.py --smoke --device cpu --json /tmp/hf.json   # tiny configs: checks the script runs

Models are built from their default config objects with random weights (no download; a pretrained
checkpoint spreads its sampling points differently, which can change the times a little). ``default``
is transformers' own path as installed (its PyTorch ``grid_sample`` code; the hub kernel needs the
``kernels`` package, which this script does not install); ``cssformer`` is the same model after
``cssformer_kernels.integrations.transformers.patch()``. Also reported: the largest relative difference of
the outputs between the two. Results: a table and a JSON file with the environment (device, versions,
commit, command line).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

import cssformer_kernels.integrations.transformers as hf_msda  # noqa: E402

MODELS = ("deformable-detr", "mask2former", "rt-detr", "d-fine")
SIZES = {"deformable-detr": (800, 1088), "mask2former": (512, 512), "rt-detr": (640, 640), "d-fine": (640, 640)}


def build(name: str, smoke: bool) -> torch.nn.Module:
    import transformers as T

    if name == "deformable-detr":
        kw = dict(two_stage=True, with_box_refine=True)
        if smoke:
            kw.update(backbone_config=T.ResNetConfig(embedding_size=8, hidden_sizes=[8] * 4, depths=[1] * 4,
                                                     layer_type="basic", out_features=["stage2", "stage3", "stage4"]),
                      d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=16, decoder_ffn_dim=16,
                      num_queries=5, two_stage_num_proposals=5, num_feature_levels=3)
        else:
            kw.update(backbone_config=T.ResNetConfig(out_features=["stage2", "stage3", "stage4"]))
        return T.DeformableDetrForObjectDetection(T.DeformableDetrConfig(**kw))
    if name == "mask2former":
        kw = {}
        if smoke:
            kw = dict(backbone_config=T.SwinConfig(image_size=32, embed_dim=8, depths=[1] * 4, num_heads=[1] * 4,
                                                   window_size=2, out_features=["stage1", "stage2", "stage3", "stage4"]),
                      feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=16,
                      encoder_layers=1, decoder_layers=1, num_attention_heads=2, dim_feedforward=16, num_queries=4)
        return T.Mask2FormerModel(T.Mask2FormerConfig(**kw))
    cls, cfg = {"rt-detr": (T.RTDetrForObjectDetection, T.RTDetrConfig),
                "d-fine": (T.DFineForObjectDetection, T.DFineConfig)}[name]
    kw = {}
    if smoke:
        kw = dict(backbone_config=T.RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8] * 4, depths=[1] * 4,
                                                       layer_type="basic", out_features=["stage2", "stage3", "stage4"]),
                  encoder_in_channels=[8, 8, 8], encoder_hidden_dim=16, encoder_ffn_dim=16, d_model=16,
                  decoder_in_channels=[16, 16, 16], decoder_ffn_dim=16, decoder_layers=2, num_queries=5,
                  num_denoising=0)
        if name == "d-fine":
            kw.update(lqe_hidden_dim=8, max_num_bins=4, hidden_expansion=0.5)
    return cls(cfg(**kw))


def outputs(out) -> list:
    if torch.is_tensor(out):
        return [out] if out.is_floating_point() else []
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in outputs(item)]
    return outputs(out.to_tuple()) if hasattr(out, "to_tuple") else []


def timed(fn, device: torch.device, warmup: int, reps: int) -> float:
    """Median milliseconds of ``fn()``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench(name: str, dtype: str, args, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    model = build(name, args.smoke).to(device).eval()  # eval: no dropout; backward still runs
    h, w = (32, 32) if args.smoke else (args.size or SIZES[name])
    x = torch.randn(args.batch, 3, h, w, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def forward():
        with torch.no_grad(), autocast:
            return outputs(model(pixel_values=x))

    def forward_backward():
        model.zero_grad(set_to_none=True)
        with autocast:
            loss = sum(t.float().square().mean() for t in outputs(model(pixel_values=x)))
        loss.backward()

    rows, reference = [], None
    for impl in ("default", "cssformer"):
        with hf_msda.patched() if impl == "cssformer" else contextlib.nullcontext():
            out = forward()
            if reference is None:
                reference = out
            diff = max(((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()
                       for a, b in zip(out, reference))
            fwd = timed(forward, device, args.warmup, args.reps)
            fwd_bwd = timed(forward_backward, device, args.warmup, args.reps)
        rows.append(dict(model=name, dtype=dtype, impl=impl, batch=args.batch, size=[h, w], forward_ms=fwd,
                         forward_backward_ms=fwd_bwd, max_rel_diff_vs_default=diff))
    for row in rows:
        row["speedup_forward"] = rows[0]["forward_ms"] / row["forward_ms"]
        row["speedup_forward_backward"] = rows[0]["forward_backward_ms"] / row["forward_backward_ms"]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--dtype", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"],
                        help="bf16: the model in fp32 under bf16 autocast")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="input size (default: per model)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="tiny configs, 32x32 inputs (checks the script)")
    parser.add_argument("--json", type=Path, help="output file (default: bench_results/hf-<device>-<time>.json)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    import transformers

    rows = [row for name in args.model for dtype in args.dtype for row in bench(name, dtype, args, device)]
    print(f"{'model':16} {'dtype':5} {'impl':10} {'fwd ms':>9} {'fwd+bwd ms':>11} {'x fwd':>6} {'x f+b':>6} {'rel diff':>9}")
    for r in rows:
        print(f"{r['model']:16} {r['dtype']:5} {r['impl']:10} {r['forward_ms']:9.2f} {r['forward_backward_ms']:11.2f} "
              f"{r['speedup_forward']:6.2f} {r['speedup_forward_backward']:6.2f} {r['max_rel_diff_vs_default']:9.1e}")
    path = args.json or benchlib.default_json_path("hf", benchlib.device_name(device))
    benchlib.write_json(path, environment=benchlib.environment(device, transformers=transformers.__version__),
                        rows=rows)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

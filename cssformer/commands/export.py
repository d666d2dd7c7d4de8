"""``cssformer export CHECKPOINT --format {onnx,pt2,safetensors} --output PATH``: the model as ONNX, as a
``torch.export`` program, or the weights as safetensors (no pickle). ``--check`` runs the result against
PyTorch on the CPU and prints the max abs difference. See docs/deploy.md."""
from __future__ import annotations

import argparse

FORMATS = ("onnx", "pt2", "safetensors")
MAX_OPSET = 20  # the newest opset of torch.onnx's TorchScript exporter (deploy.export_onnx uses it)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint of cssformer-train (.pth) or a .safetensors export")
    parser.add_argument("--format", required=True, metavar="FORMAT", help=" | ".join(FORMATS))
    parser.add_argument("--output", "-o", required=True,
                        help="file to write (atomically: all or nothing); never the checkpoint itself")
    parser.add_argument("--force", action="store_true", help="replace an --output file that already exists")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                        help="input size of the exported graph (default: the checkpoint's crop size)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default 17; at least 16)")
    parser.add_argument("--dynamic", action="store_true",
                        help="free batch dimension (onnx, pt2); the spatial size stays fixed")
    parser.add_argument("--check", action="store_true",
                        help="run the export against PyTorch on the CPU and print the max abs difference")
    parser.add_argument("--check-size", type=int, nargs=2, action="append", metavar=("H", "W"),
                        help="with --check: the input size to check at (default: the export size); an ONNX or "
                        "pt2 graph takes only its export size, so another one is refused before exporting")


def _size(args, model) -> tuple[int, int]:
    """The input size, checked by a forward pass of the model at that size."""
    import torch

    from cssformer.deploy import example_input
    from cssformer.errors import UsageError

    size = tuple(args.size) if args.size else tuple(model.crop_size)
    if min(size) < 1:
        raise UsageError(f"--size {size[0]} {size[1]}: expected positive sizes")
    try:
        with torch.no_grad():
            model(example_input(size))
    except (RuntimeError, ValueError) as err:
        raise UsageError(f"--size {size[0]} {size[1]}: {model.model_name} cannot take this input size: "
                         f"{str(err).splitlines()[0]}") from None
    return size


def run(args: argparse.Namespace) -> int:
    import time

    import torch

    from cssformer import deploy
    from cssformer.api import from_checkpoint
    from cssformer.engine.checkpoint import load_checkpoint, save_safetensors
    from cssformer.errors import UsageError, require
    from cssformer.io_safety import check_output

    if args.format not in FORMATS:
        raise UsageError(f"--format {args.format!r}: expected one of {', '.join(FORMATS)}")
    if args.opset is not None and args.format != "onnx":
        raise UsageError("--opset applies to --format onnx only")
    if args.format == "safetensors" and (args.size or args.dynamic):
        raise UsageError("--size and --dynamic apply to --format onnx and pt2 (safetensors holds weights only)")
    if args.opset is not None and args.opset > MAX_OPSET:  # checked before the model loads
        raise UsageError(f"--opset {args.opset}: expected at most {MAX_OPSET} (the newest opset torch.onnx "
                         "exports here); the sampling op needs at least 16")
    output = check_output(args.output, "--output", args.force, inputs=[args.checkpoint])
    if output.suffix.lower() != "." + args.format:
        raise UsageError(f"--output {output}: expected a .{args.format} file for --format {args.format} "
                         f"(got {output.suffix or 'no suffix'})")
    if args.check_size and not args.check:
        raise UsageError("--check-size applies with --check")
    if args.check_size and args.format == "safetensors":
        raise UsageError("--check-size applies to --format onnx and pt2 (safetensors holds weights only)")
    if args.format == "onnx":  # fail on a missing package before the slow part
        require("onnx", "export")
        if args.check:
            require("onnxruntime", "export")
    t0 = time.perf_counter()
    try:
        if args.format == "safetensors":
            state = load_checkpoint(args.checkpoint)
            save_safetensors(state, output)
            if args.check:
                again = load_checkpoint(output)["model"]
                same = again.keys() == state["model"].keys() and all(
                    torch.equal(v, again[k]) for k, v in state["model"].items())
                print(f"check: {len(again)} tensors read back {'bit-exactly' if same else 'WITH DIFFERENCES'}")
                if not same:
                    return 1
            print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")
            return 0
        model = from_checkpoint(args.checkpoint, "cpu")
        size = _size(args, model)
        for other in args.check_size or []:
            if tuple(other) != size:  # refused before the slow export: the graph could not take it
                raise UsageError(f"--check-size {other[0]} {other[1]}: the exported graph takes only its export "
                                 f"size {size[0]}x{size[1]} (the spatial size is fixed in ONNX and pt2 graphs); "
                                 f"export with --size {other[0]} {other[1]} to serve that size")
        if args.format == "onnx":
            deploy.export_onnx(model, output, size, args.opset or deploy.DEFAULT_OPSET, args.dynamic)
        else:
            deploy.export_pt2(model, output, size, args.dynamic)
    except OSError as err:
        raise UsageError(f"--output {output}: cannot write: {err.strerror or err}") from None
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB, input (N, 3, {size[0]}, {size[1]}), "
          f"{'dynamic' if args.dynamic else 'fixed'} batch) in {time.perf_counter() - t0:.1f} s")
    print(f"note: the graph takes only {size[0]}x{size[1]} inputs: shrink other frames to fit (keeping the aspect "
          "ratio) and pad, as docs/deploy.md shows; do not stretch them")
    if args.check:
        images = deploy.example_input(size, batch=2 if args.dynamic else 1, seed=1)
        with torch.no_grad():
            expected = model(images)
            if args.format == "onnx":
                got, runtime = deploy.run_onnx(output, images), "onnxruntime (CPU)"
            else:
                got, runtime = torch.export.load(str(output)).module()(images), "torch.export.load"
        print(f"check: {runtime} vs PyTorch, logits {tuple(got.shape)}: max abs difference "
              f"{deploy.max_abs_diff(got, expected):.3g}")
    return 0

"""``cssformer export CHECKPOINT --format {onnx,pt2,safetensors} --output PATH``: the model as ONNX, as a
``torch.export`` program, or the weights as safetensors (no pickle). ``--check`` runs the result against
PyTorch on the CPU and prints the max abs difference. See docs/deploy.md."""
from __future__ import annotations

import argparse

FORMATS = ("onnx", "pt2", "safetensors")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint of cssformer-train (.pth) or a .safetensors export")
    parser.add_argument("--format", required=True, metavar="FORMAT", help=" | ".join(FORMATS))
    parser.add_argument("--output", "-o", required=True,
                        help="file to write (atomically: all or nothing); never the checkpoint itself")
    parser.add_argument("--force", action="store_true", help="replace an --output file that already exists")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                        help="fix the graph's input size (default: onnx takes any height and width that are "
                        "multiples of 32; pt2 the checkpoint's crop size)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default 18; 18 to 23)")
    parser.add_argument("--dynamic", action="store_true", help="free batch dimension (onnx, pt2)")
    parser.add_argument("--check", action="store_true",
                        help="run the export against PyTorch on the CPU and print the max abs difference, at "
                        "two sizes for a graph of any size")
    parser.add_argument("--check-size", type=int, nargs=2, action="append", metavar=("H", "W"),
                        help="with --check: an input size to check at (repeatable; default: the export size, or "
                        "two sizes for a graph of any size); refused before exporting when the graph cannot "
                        "take it")


def _size(args, model) -> tuple[int, int] | None:
    """The graph's fixed input size, checked by a forward pass of the model at that size; ``None`` for
    an ONNX graph of any size (no ``--size``)."""
    import torch

    from cssformer.deploy import example_input
    from cssformer.errors import UsageError

    if args.format == "onnx" and not args.size:
        return None
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


def _check_sizes(args, model, size) -> list[tuple[int, int]]:
    """The sizes ``--check`` runs at: ``--check-size``, or the export size, or for a graph of any size
    the crop size and a smaller, non-square one (half the crop, one stride taller; both rounded up to the
    model's stride). A size the graph cannot take is refused here, before the slow export."""
    from cssformer.deploy import size_multiple
    from cssformer.errors import UsageError
    from cssformer.sizes import round_up

    stride = size_multiple(model)
    if args.check_size:
        sizes = [tuple(s) for s in args.check_size]
    elif size:
        sizes = [size]
    else:
        h, w = (int(s) for s in model.crop_size)
        sizes = [(round_up(h, stride), round_up(w, stride)),  # and a smaller, non-square one
                 (round_up(h // 2, stride) + stride, round_up(w // 2, stride))]
    for other in sizes:
        if size and other != size:
            raise UsageError(f"--check-size {other[0]} {other[1]}: the graph takes only its export size "
                             f"{size[0]}x{size[1]} (--size fixes it); export without --size (onnx) or with "
                             f"--size {other[0]} {other[1]} to serve that size")
        if not size and (min(other) < 1 or other[0] % stride or other[1] % stride):
            raise UsageError(f"--check-size {other[0]} {other[1]}: the graph takes heights and widths that "
                             f"are multiples of {stride}; pad the frame to "
                             f"{round_up(max(other[0], 1), stride)}x{round_up(max(other[1], 1), stride)}")
    return sizes


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
    if args.opset is not None:  # checked before the model loads
        deploy.check_opset(args.opset)
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
        require("onnxscript", "export")
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
        check_sizes = _check_sizes(args, model, size) if args.check else []
        if args.format == "onnx":
            deploy.export_onnx(model, output, size, args.opset or deploy.DEFAULT_OPSET, args.dynamic)
        else:
            deploy.export_pt2(model, output, size, args.dynamic)
    except OSError as err:
        raise UsageError(f"--output {output}: cannot write: {err.strerror or err}") from None
    stride = deploy.size_multiple(model)
    shape = f"{size[0]}, {size[1]}" if size else "H, W"
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB, input (N, 3, {shape}), "
          f"{'dynamic' if args.dynamic else 'fixed'} batch) in {time.perf_counter() - t0:.1f} s")
    if size:
        print(f"note: the graph takes only {size[0]}x{size[1]} inputs: shrink other frames to fit (keeping the aspect "
              "ratio) and pad, as docs/deploy.md shows; do not stretch them")
    else:
        print(f"note: H and W are any multiples of {stride} up to {deploy.MAX_SIZE}: pad other frames at the bottom "
              "and right (after normalising) and crop the logits, as docs/deploy.md shows")
    if check_sizes:  # the file is loaded once, as a user would, and run at every check size
        if args.format == "onnx":
            infer, runtime = deploy.onnx_runner(output), "onnxruntime (CPU)"
        else:
            infer, runtime = torch.export.load(str(output)).module(), "torch.export.load"
    for i, check in enumerate(check_sizes):  # with --dynamic, a batch of 2 at the last size (the smaller default)
        batch = 2 if args.dynamic and i == len(check_sizes) - 1 else 1
        images = deploy.example_input(check, batch=batch, seed=1 + i)
        with torch.no_grad():
            expected = model(images)
            got = infer(images)
        diff = deploy.max_abs_diff(got, expected)
        print(f"check: {runtime} vs PyTorch at {check[0]}x{check[1]}, logits {tuple(got.shape)}: max abs "
              f"difference {diff:.3g}")
    return 0

"""``cssformer predict -c CHECKPOINT IMAGES_OR_FOLDERS...``: for each image a colour mask
(``<name>_mask.png``, the dataset's palette) and an overlay on the image (``<name>_overlay.png``),
optionally the raw class indices (``<name>_labels.png``)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cssformer.api import colorize, overlay  # noqa: F401 - re-exported


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cssformer.commands.options import add_force, add_test_options, path_arg

    parser.add_argument("inputs", nargs="+", type=path_arg, help="image files and/or folders of images")
    parser.add_argument("-c", "--checkpoint", required=True, type=path_arg,
                        help="a checkpoint of cssformer-train (.pth) or cssformer export (.safetensors)")
    parser.add_argument("-o", "--out", default="predictions", type=path_arg,
                        help="output folder (default: predictions); not an input folder or inside one")
    parser.add_argument("--alpha", type=float, default=0.5, help="opacity of the mask in the overlay")
    parser.add_argument("--save-labels", action="store_true", help="also write the class indices as a grey PNG")
    add_test_options(parser)
    add_force(parser, "output files")


def collect_images(inputs: list[str]) -> list[Path]:
    from cssformer.errors import UsageError
    from cssformer.data.io import IMAGE_SUFFIXES, list_images

    images = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise UsageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            images += found
        elif path.is_file():
            images.append(path)
        else:
            raise UsageError(f"input not found: {path}")
    unique = {}
    for path in images:  # a file given on its own and inside a given folder is predicted once
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


SUFFIXES = ("_mask.png", "_overlay.png", "_labels.png")


def plan_outputs(inputs: list[str], images: list[Path], out: Path, save_labels: bool, force: bool,
                 checkpoint: str | Path = "") -> dict:
    """``{image: (mask, overlay, labels or None)}`` in ``out``; refuses an ``out`` that is an input
    folder or inside one (a later run would read the outputs as inputs), two images that would write the
    same names, an output that is an input, and existing outputs unless ``force``."""
    from cssformer.errors import UsageError
    from cssformer.io_safety import check_output

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: expected a folder")
    resolved = out.resolve()
    for item in inputs:
        folder = Path(item)
        if folder.is_dir() and (resolved == folder.resolve() or folder.resolve() in resolved.parents):
            raise UsageError(f"--out {out} is inside the input folder {folder}: a later run would read the "
                             "predictions as images; expected an output folder outside the inputs")
    plan, owner = {}, {}
    for image in images:
        names = [image.stem + suffix for suffix in SUFFIXES[: 3 if save_labels else 2]]
        if names[0] in owner:
            raise UsageError(f"{owner[names[0]]} and {image} would both write {out / names[0]}: expected "
                             "inputs with distinct names (predict them into separate --out folders)")
        owner[names[0]] = image
        plan[image] = [out / name for name in names]
    existing = [p for paths in plan.values() for p in paths if p.exists()]
    for path in existing:
        check_output(path, "--out", force, inputs=[*images, *([checkpoint] if checkpoint else [])])
    return plan


def save_png(array: np.ndarray, target: Path) -> None:
    """Atomic PNG write (a killed run leaves no half image under the final name)."""
    import io

    from PIL import Image

    from cssformer.io_safety import write_bytes

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    write_bytes(target, buffer.getvalue(), "--out")


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.progress import track

    from cssformer.api import from_checkpoint
    from cssformer.errors import UsageError
    from cssformer.io_safety import FolderLock
    from cssformer.commands.options import test_options_from
    from cssformer.data.io import read_image
    from cssformer.data.transforms import to_tensor
    from cssformer.engine import runtime
    from cssformer.engine.distributed import setup
    from cssformer.engine.inference import predict_probs

    if not 0.0 <= args.alpha <= 1.0:
        raise UsageError(f"--alpha must be within 0..1, got {args.alpha}")
    images = collect_images(args.inputs)
    out = Path(args.out)
    plan = plan_outputs(args.inputs, images, out, args.save_labels, args.force, args.checkpoint)
    lock = FolderLock(out, "--out").acquire()  # before the model loads: a second predict into out is refused
    device = setup(args.device).device
    model = from_checkpoint(args.checkpoint, device)
    options = test_options_from(args, model.config)
    palette = model.palette
    run_model = runtime.compiled(model, args.compile)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out: cannot create folder {out}: {err.strerror or err}") from None
    for path in track(images, description="predict"):
        image = read_image(path)
        with torch.no_grad(), runtime.autocast(device, args.amp):
            probs = predict_probs(run_model, to_tensor(image)[None].to(device), image.shape[:2], **options)
        labels = probs.argmax(1)[0].to("cpu", torch.uint8).numpy()
        colours = colorize(labels, palette)
        arrays = [colours, overlay(image, colours, args.alpha), labels]
        for target, array in zip(plan[path], arrays):
            save_png(array, target)
    lock.release()
    print(f"wrote {len(images)} colour masks and overlays to {out}")
    return 0

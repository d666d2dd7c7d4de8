"""``cssformer predict -c CHECKPOINT IMAGES_OR_FOLDERS...``: for each image a colour mask
(``<name>_mask.png``: an indexed PNG, pixel values = class ids, colours = the dataset's palette; RGB above
256 classes), an overlay on the image with a legend of the classes (``<name>_overlay.png``) and optionally
the class indices as a grey PNG (``<name>_labels.png``, 16-bit above 256 classes). Consecutive images of
the same size are predicted together (``--batch-size``)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cssformer.visualisation import LEGEND_CHOICES, colorize, overlay  # noqa: F401 - re-exported


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cssformer.commands.options import add_force, add_test_options, path_arg

    parser.add_argument("inputs", nargs="+", type=path_arg, help="image files and/or folders of images")
    parser.add_argument("-c", "--checkpoint", required=True, type=path_arg,
                        help="a checkpoint of cssformer-train (.pth) or cssformer export (.safetensors)")
    parser.add_argument("-o", "--out", default="predictions", type=path_arg,
                        help="output folder (default: predictions); not an input folder or inside one")
    parser.add_argument("--alpha", "--opacity", type=float, default=0.5,
                        help="opacity of the mask in the overlay, 0..1 (default 0.5)")
    parser.add_argument("--legend", choices=LEGEND_CHOICES, default="present",
                        help="legend below the overlay: the classes present in the image, all classes, or none "
                        "(default: present)")
    parser.add_argument("--palette", type=path_arg, help="a palette file (one 'R G B' or '#rrggbb' per class, "
                        "in class order) instead of the checkpoint's colours")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="images of the same size predicted together (default 4)")
    parser.add_argument("--save-labels", action="store_true",
                        help="also write the class indices as a grey PNG (16-bit above 256 classes)")
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
    from cssformer.io_safety import write_bytes
    from cssformer.visualisation import png_bytes

    write_bytes(target, png_bytes(array), "--out")


def write_outputs(targets: list[Path], image: np.ndarray, labels: np.ndarray, model, args) -> None:
    """The colour mask (indexed PNG), the overlay with its legend and, when planned, the label PNG."""
    from cssformer.io_safety import write_bytes
    from cssformer.visualisation import label_image, png_bytes, with_legend

    palette = model.palette
    colours = colorize(labels, palette)
    mask = label_image(labels, palette) if model.num_classes <= 256 else colours
    write_bytes(targets[0], png_bytes(mask), "--out")
    picture = with_legend(overlay(image, colours, args.alpha), labels, model.class_names, palette, args.legend)
    save_png(picture, targets[1])
    if len(targets) > 2:
        write_bytes(targets[2], png_bytes(label_image(labels)), "--out")


def run(args: argparse.Namespace) -> int:
    import time

    import torch
    from rich.progress import track

    from cssformer.api import from_checkpoint, labels_from_batch
    from cssformer.io_safety import FolderLock
    from cssformer.commands.options import test_options_from
    from cssformer.data.classes import read_palette_file
    from cssformer.data.io import read_image
    from cssformer.data.transforms import to_tensor
    from cssformer.engine import runtime
    from cssformer.engine.distributed import setup
    from cssformer.errors import UsageError

    if not 0.0 <= args.alpha <= 1.0:
        raise UsageError(f"--alpha must be within 0..1, got {args.alpha}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size: got {args.batch_size}, expected >= 1")
    images = collect_images(args.inputs)
    out = Path(args.out)
    plan = plan_outputs(args.inputs, images, out, args.save_labels, args.force, args.checkpoint)
    lock = FolderLock(out, "--out").acquire()  # before the model loads: a second predict into out is refused
    device = setup(args.device).device
    model = from_checkpoint(args.checkpoint, device)
    if args.palette:
        model.palette = read_palette_file(args.palette, model.num_classes)
    options = test_options_from(args, model.config)
    run_model = runtime.compiled(model, args.compile)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out: cannot create folder {out}: {err.strerror or err}") from None
    batch: list[tuple[Path, np.ndarray]] = []

    def flush() -> None:
        if batch:
            x = torch.stack([to_tensor(image) for _, image in batch])
            for (path, image), labels in zip(batch, labels_from_batch(model, x, options, run_model, args.amp)):
                write_outputs(plan[path], image, labels, model, args)
            batch.clear()

    start = time.perf_counter()
    for path in track(images, description="predict"):
        try:
            image = read_image(path)
        except Exception:
            flush()  # the images before a bad file are written
            raise
        if batch and (image.shape != batch[0][1].shape or len(batch) == args.batch_size):
            flush()
        batch.append((path, image))
    flush()
    lock.release()
    seconds = time.perf_counter() - start
    print(f"wrote {len(images)} colour masks and overlays to {out} ({len(images) / seconds:.2f} images/s: "
          f"{len(images)} in {seconds:.1f} s, batch size {args.batch_size}, {device})")
    return 0

"""``cssformer predict -c CHECKPOINT IMAGES_OR_FOLDERS...``: for each image a colour mask
(``<name>_mask.png``, the dataset's palette) and an overlay on the image (``<name>_overlay.png``),
optionally the raw class indices (``<name>_labels.png``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from cssformer.api import colorize, overlay  # noqa: F401 - re-exported


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument("-c", "--checkpoint", required=True,
                        help="a checkpoint of cssformer-train (.pth) or cssformer export (.safetensors)")
    parser.add_argument("-o", "--out", default="predictions", help="output folder (default: predictions)")
    parser.add_argument("--alpha", type=float, default=0.5, help="opacity of the mask in the overlay")
    parser.add_argument("--save-labels", action="store_true", help="also write the class indices as a grey PNG")
    parser.add_argument("--mode", choices=["whole", "slide"], help="whole-image or sliding-window inference")
    parser.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="sliding window size")
    parser.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), help="sliding window stride")
    parser.add_argument("--scales", type=float, nargs="+", help="test scale ratios")
    parser.add_argument("--flip", action="store_true", help="add horizontally flipped inputs")
    parser.add_argument("--aug-test", action="store_true", help="the paper's multi-scale + flip protocol")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


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
    return images


def run(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image
    from rich.progress import track

    from cssformer.api import from_checkpoint
    from cssformer.errors import UsageError
    from cssformer.commands.evaluate import options_from
    from cssformer.data.io import read_image
    from cssformer.data.transforms import to_tensor
    from cssformer.engine.distributed import setup
    from cssformer.engine.inference import predict_probs

    if not 0.0 <= args.alpha <= 1.0:
        raise UsageError(f"--alpha must be within 0..1, got {args.alpha}")
    images = collect_images(args.inputs)
    device = setup(args.device).device
    model = from_checkpoint(args.checkpoint, device)
    options = options_from(args, model.config)
    palette = model.palette
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in track(images, description="predict"):
        image = read_image(path)
        with torch.no_grad():
            probs = predict_probs(model, to_tensor(image)[None].to(device), image.shape[:2], **options)
        labels = probs.argmax(1)[0].to("cpu", torch.uint8).numpy()
        colours = colorize(labels, palette)
        Image.fromarray(colours).save(out / f"{path.stem}_mask.png")
        Image.fromarray(overlay(image, colours, args.alpha)).save(out / f"{path.stem}_overlay.png")
        if args.save_labels:
            Image.fromarray(labels).save(out / f"{path.stem}_labels.png")
    print(f"wrote {len(images)} colour masks and overlays to {out}")
    return 0

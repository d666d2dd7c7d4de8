"""Pictures of segmentations: colour masks, overlays, legends with class names, evaluation panels
(image | ground truth | prediction | errors), indexed / 16-bit label PNGs and, with matplotlib (extra
``plot``), the confusion matrix and per-class IoU charts of an evaluation.

```python
from cssformer.visualisation import colorize, overlay, with_legend, save_label_png

colours = colorize(mask, model.palette)                       # (H, W, 3) uint8
picture = with_legend(overlay(image, colours, 0.5), mask, model.class_names, model.palette)
save_label_png(mask, "mask.png", model.palette)               # indexed PNG (16-bit grey above 256 classes)
```
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np

IGNORE_INDEX = 255
LEGEND_CHOICES = ("present", "all", "none")
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
ERROR_COLOUR = (255, 0, 0)
IGNORED = -1  # the legend entry of ignored ground-truth pixels (drawn hatched)

__all__ = ["colorize", "overlay", "with_legend", "draw_legend", "legend_classes", "eval_panel", "Panels",
           "save_label_png", "read_label_png", "png_bytes", "confusion_matrix_png", "iou_chart_png"]


# --- colours -------------------------------------------------------------------------------------------

def colour_table(palette, size: int = 256) -> np.ndarray:
    """``(max(size, len(palette)), 3)`` uint8: class ``i`` -> ``palette[i]``, black beyond the palette."""
    colours = np.asarray(palette, np.uint8).reshape(-1, 3)
    table = np.zeros((max(size, len(colours)), 3), np.uint8)
    table[: len(colours)] = colours
    return table


def colorize(labels: np.ndarray, palette) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours; labels without a colour (255 = ignore, where the
    palette has fewer than 256 colours) are black."""
    labels = np.asarray(labels)
    top = int(labels.max()) + 1 if labels.size else 0
    return colour_table(palette, max(256, top))[labels]


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    """``colours`` blended over ``image`` with opacity ``alpha`` (0: the image, 1: the colours)."""
    return (image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).round().astype(np.uint8)


def hatch(height: int, width: int, x0: int = 0, y0: int = 0) -> np.ndarray:
    """(height, width, 3) uint8 diagonal stripes, dark on light grey: the colour of ignored pixels."""
    yy, xx = np.mgrid[y0:y0 + height, x0:x0 + width]
    stripes = ((xx + yy) // 3) % 2 == 0
    return np.where(stripes[..., None], np.uint8(90), np.uint8(210)).repeat(3, -1).astype(np.uint8)


def show_ignored(colours: np.ndarray, labels: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """``colours`` with the pixels whose label is ``ignore_index`` hatched (see :func:`hatch`)."""
    ignored = np.asarray(labels) == ignore_index
    if ignored.any():
        colours = colours.copy()
        colours[ignored] = hatch(*ignored.shape)[ignored]
    return colours


# --- text and legends ----------------------------------------------------------------------------------

def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow's own TrueType font (needs FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def font_size_for(width: int) -> int:
    """A legible text size for a picture ``width`` pixels wide (11 px up to 660 px, at most 28 px)."""
    return int(min(28, max(11, round(width / 60))))


def legend_classes(labels, num_classes: int, which: str = "present") -> list[int]:
    """The classes a legend lists: those in ``labels`` (one or several arrays; ``which="present"``) or
    all ``num_classes`` (``"all"``), or none (``"none"``)."""
    if which not in LEGEND_CHOICES:
        raise ValueError(f"legend: got {which!r}, expected one of {', '.join(LEGEND_CHOICES)}")
    if which == "none":
        return []
    if which == "all":
        return list(range(num_classes))
    arrays = labels if isinstance(labels, (list, tuple)) else [labels]
    present = set()
    for array in arrays:
        present.update(int(v) for v in np.unique(np.asarray(array)))
    return sorted(c for c in present if 0 <= c < num_classes)


def draw_legend(class_ids: Sequence[int], names: Sequence[str], palette, width: int,
                font_size: int | None = None) -> tuple[np.ndarray, list[tuple[int, tuple, tuple]]]:
    """A legend ``width`` pixels wide: for each class a colour swatch (with a thin dark border, so that
    light colours stay visible) and its name, in as many columns as fit. Returns (the ``(h, width, 3)``
    uint8 picture, ``[(class id, swatch box, text box)]`` with boxes as ``(x0, y0, x1, y1)``, exclusive)."""
    from PIL import Image, ImageDraw

    size = font_size or font_size_for(width)
    font = _font(size)
    pad, swatch, gap = max(4, size // 2), size, max(4, size // 3)
    table = colour_table(palette)
    labels = ["ignored" if c == IGNORED else names[c] if c < len(names) else str(c) for c in class_ids]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max([int(math.ceil(measure.textlength(t, font=font))) for t in labels] or [0])
    entry_w = swatch + gap + text_w + 2 * pad
    columns = max(1, min(len(labels), (width - pad) // max(entry_w, 1))) if labels else 1
    row_h = size + pad
    rows = math.ceil(len(labels) / columns) if labels else 0
    height = rows * row_h + pad if labels else 0
    picture = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    column_w = (width - pad) // columns
    boxes = []
    for i, (class_id, text) in enumerate(zip(class_ids, labels)):
        x = pad + (i % columns) * column_w
        y = pad + (i // columns) * row_h
        box = (x, y, x + swatch, y + swatch)
        if class_id == IGNORED:
            picture.paste(Image.fromarray(hatch(swatch, swatch)), box[:2])
            draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), outline=(60, 60, 60))
        else:
            draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=tuple(int(v) for v in table[class_id]),
                           outline=(60, 60, 60))
        tx = x + swatch + gap
        room = column_w - swatch - gap - pad
        while text and measure.textlength(text, font=font) > room:  # a name wider than its column: cut it
            text = text[:-2] + "…" if len(text) > 2 else ""
        draw.text((tx, y + swatch / 2), text, fill=TEXT, font=font, anchor="lm")
        boxes.append((int(class_id), box, (tx, y, min(tx + text_w, x + column_w), y + swatch)))
    return np.asarray(picture), boxes


def with_legend(picture: np.ndarray, labels, names: Sequence[str], palette, which: str = "present",
                min_width: int = 200) -> np.ndarray:
    """``picture`` with a legend of its classes below it (``which``: the classes ``present`` in
    ``labels``, ``all`` of ``names``, or ``none``). The picture keeps its pixels at the top-left; the
    result is at least ``min_width`` wide (white padding on the right)."""
    ids = legend_classes(labels, len(names), which)
    if not ids:
        return picture
    width = max(picture.shape[1], min_width)
    strip, _ = draw_legend(ids, names, palette, width)
    return stack([picture, strip], axis=0)


def pad_to(picture: np.ndarray, height: int, width: int) -> np.ndarray:
    """``picture`` at the top-left of a white ``(height, width, 3)`` canvas (at least its own size)."""
    h, w = picture.shape[:2]
    if (h, w) == (height, width):
        return picture
    canvas = np.full((max(h, height), max(w, width), 3), BACKGROUND, np.uint8)
    canvas[:h, :w] = picture
    return canvas


def stack(pictures: Sequence[np.ndarray], axis: int) -> np.ndarray:
    """Pictures one below the other (``axis=0``) or side by side (``axis=1``), padded with white."""
    extent = max(p.shape[1 - axis] for p in pictures)
    padded = [pad_to(p, extent, p.shape[1]) if axis == 1 else pad_to(p, p.shape[0], extent) for p in pictures]
    return np.concatenate(padded, axis=axis)


def _titled(tile: np.ndarray, title: str, size: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    font, pad = _font(size), max(3, size // 3)
    bar = Image.new("RGB", (tile.shape[1], size + 2 * pad), BACKGROUND)
    draw = ImageDraw.Draw(bar)
    draw.text((tile.shape[1] / 2, pad + size / 2), title, fill=TEXT, font=font, anchor="mm")
    return np.concatenate([np.asarray(bar), tile], axis=0)


# --- evaluation panels ---------------------------------------------------------------------------------

def panel_scale(height: int, width: int, min_side: int = 128, max_side: int = 640) -> float:
    """The display scale of a panel tile: small images are enlarged by a whole factor (nearest, crisp
    pixels) to ``min_side``, large ones shrunk so their long side is ``max_side``."""
    if max(height, width) > max_side:
        return max_side / max(height, width)
    if min(height, width) < min_side:
        return float(math.ceil(min_side / max(min(height, width), 1)))
    return 1.0


def _resize(array: np.ndarray, scale: float, smooth: bool) -> np.ndarray:
    from PIL import Image

    if scale == 1.0:
        return array
    h, w = array.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.BILINEAR if smooth and scale < 1 else Image.Resampling.NEAREST
    return np.asarray(Image.fromarray(array).resize(size, resample))


def error_map(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """The errors tile: wrong pixels red, right ones the image in faded grey, ignored pixels hatched."""
    grey = image.astype(np.float32).mean(-1, keepdims=True)
    tile = np.repeat((grey * 0.35 + 255 * 0.45).round().astype(np.uint8), 3, axis=-1)
    tile[(pred != gt) & (gt != ignore_index)] = ERROR_COLOUR
    return show_ignored(tile, gt, ignore_index)


def eval_panel(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, names: Sequence[str], palette,
               legend: str = "present", ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """``image | ground truth | prediction | errors`` side by side with titles, and below them a legend
    of the classes in the ground truth or the prediction (``legend="all"``: every class; ``"none"``).
    Ground-truth pixels marked ``ignore_index`` are hatched in the ground truth and errors tiles."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    if not image.shape[:2] == gt.shape == pred.shape:
        raise ValueError(f"eval_panel: image {image.shape[:2]}, ground truth {gt.shape} and prediction "
                         f"{pred.shape} must have the same height and width")
    scale = panel_scale(*gt.shape)
    valid = gt != ignore_index
    wrong = float(((pred != gt) & valid).sum()) / max(int(valid.sum()), 1)
    tiles = [(image, "image", True), (show_ignored(colorize(gt, palette), gt, ignore_index), "ground truth", False),
             (colorize(pred, palette), "prediction", False),
             (error_map(image, gt, pred, ignore_index), f"errors {wrong:.1%}", False)]
    size = font_size_for(4 * gt.shape[1] * scale)
    size = min(size, max(9, int(gt.shape[1] * scale) // 8))  # a title fits its tile
    gap = np.full((1, 1, 3), BACKGROUND, np.uint8)
    row = []
    for i, (tile, title, smooth) in enumerate(tiles):
        tile = _titled(_resize(tile, scale, smooth), title, size)
        row.append(tile)
        if i < len(tiles) - 1:
            row.append(np.broadcast_to(gap, (tile.shape[0], 4, 3)))
    picture = stack(row, axis=1)
    ids = legend_classes([gt[valid], pred], len(names), legend)
    if ids and not valid.all():
        ids.append(IGNORED)
    if ids:
        picture = stack([picture, draw_legend(ids, names, palette, picture.shape[1])[0]], axis=0)
    return picture


def sample_indices(total: int, count: int | None) -> list[int]:
    """``count`` dataset indices spread evenly over ``0..total-1`` (all of them when ``count`` is None or
    not smaller than ``total``)."""
    if count is None or count >= total:
        return list(range(total))
    return sorted({int(round(v)) for v in np.linspace(0, total - 1, count)})


def denormalise(image) -> np.ndarray:
    """A normalised ``(3, H, W)`` tensor (the model's input) back to the ``(H, W, 3)`` uint8 picture."""
    from cssformer.data.transforms import MEAN, STD

    array = image.detach().cpu().float().numpy().transpose(1, 2, 0) * STD + MEAN
    return np.clip(array.round(), 0, 255).astype(np.uint8)


class Panels:
    """The ``show`` callback of :func:`cssformer.engine.evaluation.evaluate`: for the dataset indices in
    ``chosen`` it draws :func:`eval_panel` and hands ``(name, picture)`` to ``sink`` (a file writer, a
    TensorBoard list). ``count`` says how many were drawn."""

    def __init__(self, names: Sequence[str], palette, chosen, sink, legend: str = "present"):
        self.names, self.palette, self.chosen, self.sink, self.legend = list(names), palette, set(chosen), sink, legend
        self.count = 0

    def __call__(self, where, images, masks, preds) -> None:
        for (index, name), image, mask, pred in zip(where, images, masks, preds):
            if index in self.chosen:
                picture = eval_panel(denormalise(image), mask.numpy(), pred.numpy(), self.names, self.palette,
                                     self.legend)
                self.sink(str(name), picture)
                self.count += 1


# --- PNG files -----------------------------------------------------------------------------------------

def png_bytes(image) -> bytes:
    """A PIL image or an array as PNG bytes."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def label_image(labels: np.ndarray, palette=None):
    """The PIL image of a label map: with a ``palette`` of at most 256 colours an indexed (mode ``P``)
    image whose pixel values are the class ids; without one, 8-bit grey (``L``) up to label 255 and
    16-bit grey (``I;16``) up to 65535. More classes than 256 always give 16-bit grey (PNG palettes
    hold 256 colours). A label above 65535 is an error, never a wrapped value."""
    from PIL import Image

    labels = np.asarray(labels)
    top = int(labels.max()) if labels.size else 0
    if labels.size and int(labels.min()) < 0:
        raise ValueError(f"labels: got {int(labels.min())}, expected class ids >= 0")
    if top > 65535:
        raise ValueError(f"labels: got {top}, expected at most 65535 (16-bit PNG)")
    many = palette is not None and len(palette) > 256
    if top > 255 or many:
        return Image.fromarray(labels.astype(np.uint16))  # mode I;16
    image = Image.fromarray(labels.astype(np.uint8))  # mode L
    if palette is not None:
        image.putpalette(colour_table(palette)[:256].reshape(-1).tolist())  # L -> P, pixel values kept
    return image


def save_label_png(labels: np.ndarray, path: str | Path, palette=None) -> None:
    """Writes :func:`label_image` to ``path`` (atomic: a killed run leaves no half file)."""
    from cssformer.io_safety import write_bytes

    write_bytes(path, png_bytes(label_image(labels, palette)), "--out")


def read_label_png(path: str | Path) -> np.ndarray:
    """The class ids of a label PNG written by :func:`save_label_png` (P, L or 16-bit grey)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image).astype(np.int64 if image.mode.startswith("I") else np.uint8)


# --- charts (matplotlib) -------------------------------------------------------------------------------

def _figure(width: float, height: float):
    from cssformer.errors import require

    require("matplotlib", "plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _fig_png(fig, **metadata) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={k: str(v) for k, v in metadata.items()})
    return buffer.getvalue()


def _tick_step(n: int, room: int = 60) -> int:
    return max(1, math.ceil(n / room))


def confusion_matrix_png(confusion, names: Sequence[str], title: str = "") -> bytes:
    """The confusion matrix (rows: ground truth, columns: prediction) as a PNG, each row in percent of
    its ground-truth pixels; cell values written up to 20 classes, class names on the axes (every n-th
    above 60 classes). The PNG's text field ``classes`` holds the class count."""
    matrix = np.asarray(confusion, np.float64)
    k = matrix.shape[0]
    if matrix.shape != (k, k) or len(names) != k:
        raise ValueError(f"confusion matrix {matrix.shape} and {len(names)} class names do not match")
    rows = matrix.sum(1, keepdims=True)
    percent = np.divide(matrix * 100.0, rows, out=np.zeros_like(matrix), where=rows > 0)
    side = min(22.0, max(5.5, 0.32 * k + 3.0))
    fig = _figure(side + 1.2, side)
    ax = fig.subplots()
    im = ax.imshow(percent, cmap="Blues", vmin=0, vmax=100, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="% of the ground-truth class's pixels")
    step = _tick_step(k)
    ticks = list(range(0, k, step))
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90, fontsize=8)
    ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if rows[i, 0] > 0:
                    ax.text(j, i, f"{percent[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if percent[i, j] > 55 else "black")
    for i in np.flatnonzero(rows[:, 0] == 0):  # a class absent from the ground truth: its row is hatched
        ax.add_patch(_hatch(fig, i, k))
    ax.set_title(title or "confusion matrix (row-normalised)", fontsize=10)
    return _fig_png(fig, Title="confusion matrix", classes=k)


def _hatch(fig, row: int, k: int):
    from matplotlib.patches import Rectangle

    return Rectangle((-0.5, row - 0.5), k, 1, fill=False, hatch="//", edgecolor="0.6", linewidth=0)


def iou_chart_png(iou: Sequence[float], names: Sequence[str], miou: float | None = None, title: str = "") -> bytes:
    """Per-class IoU (%) as horizontal bars in class order, the mean as a dashed line; classes with an
    undefined IoU (neither in the ground truth nor predicted) are marked ``n/a``. The PNG's text field
    ``classes`` holds the class count."""
    values = [float(v) if v is not None else math.nan for v in iou]
    k = len(values)
    if len(names) != k:
        raise ValueError(f"{k} IoU values and {len(names)} class names do not match")
    fig = _figure(8.0, min(40.0, max(2.5, 0.24 * k + 1.2)))
    ax = fig.subplots()
    ys = np.arange(k)
    shown = [0.0 if math.isnan(v) else v for v in values]
    ax.barh(ys, shown, color="tab:blue", height=0.7)
    ax.set_yticks(ys, list(names), fontsize=8 if k <= 60 else 5)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)")
    for y, v in zip(ys, values):
        ax.text(1 if math.isnan(v) else v + 1, y, "n/a" if math.isnan(v) else f"{v:.1f}", va="center",
                fontsize=7, color="0.4" if math.isnan(v) else "black")
    heading = title or "per-class IoU"
    if miou is not None and not math.isnan(miou):
        ax.axvline(miou, color="tab:red", linestyle="--", linewidth=1)
        heading += f" (dashed: mIoU {miou:.2f})"
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(heading, fontsize=10)
    return _fig_png(fig, Title="per-class IoU", classes=k)

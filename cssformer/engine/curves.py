"""Training curves from a work dir's ``log.jsonl``: a PNG (loss, learning rate, validation mIoU against
iteration; matplotlib, extra ``plot``) and TensorBoard scalars (extra ``tensorboard``).

``log.jsonl`` stays the record; both are views of it. A resumed run appends to the same log and may
repeat iterations after its checkpoint: the last record of an iteration wins.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

from cssformer.engine.checkpoint import atomic_write_bytes
from cssformer.engine.workdir import CURVES as CURVES_PNG, LOG, TENSORBOARD as TENSORBOARD_DIR
from cssformer.errors import UsageError, require

TENSORBOARD_PANELS = 4  # sample panels (image | ground truth | prediction | errors) per evaluation
__all__ = ["CURVES_PNG", "LOG", "TENSORBOARD_DIR", "TENSORBOARD_PANELS", "read_log", "plot_curves",
           "after_training", "TensorBoardScalars"]
EVAL_SCALARS = ("mIoU", "mAcc", "aAcc")
_NOT_SCALARS = {"type", "iter", "time"}


def read_log(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(train records, eval records) of a ``log.jsonl``, each sorted by iteration, one per iteration."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no training log: {path} not found")
    records: dict[str, dict[int, dict]] = {"train": {}, "eval": {}}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not a training log (not UTF-8 text): expected the log.jsonl of a work dir") from None
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                continue  # the last line of a run killed while writing it
            raise UsageError(f"{path} line {n} is not JSON") from None
        if not isinstance(record, dict) or record.get("type") not in records or "iter" not in record:
            continue  # a start record, another kind, or not a record of ours
        problem = _bad_record(record)
        if problem:
            raise UsageError(f"{path} line {n}: {problem} (expected a log.jsonl written by cssformer-train)")
        records[record["type"]][record["iter"]] = record
    return tuple([r[i] for i in sorted(r)] for r in (records["train"], records["eval"]))


def _number(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _value(record: dict, key: str) -> float:
    value = record.get(key)
    return float("nan") if value is None else float(value)  # a NaN of the log is written as null


def _bad_record(record: dict) -> str | None:
    """What keeps a train / eval record from being drawn, or None."""
    if not isinstance(record["iter"], int) or isinstance(record["iter"], bool) or record["iter"] < 0:
        return f"'iter' is {record['iter']!r}, expected an int >= 0"
    keys = EVAL_SCALARS if record["type"] == "eval" else [k for k in record if "loss" in k or k == "lr"]
    for key in keys:
        if not _number(record.get(key)):
            return f"{key!r} is {record[key]!r}, expected a number"
    return None


def plot_curves(work_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draws ``work_dir/log.jsonl`` into ``out`` (default ``work_dir/curves.png``): loss (and its parts),
    learning rate (log scale) and validation mIoU / mAcc against iteration. Returns the PNG's path."""
    require("matplotlib", "plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    work_dir = Path(work_dir)
    train, evals = read_log(work_dir / LOG)
    if not train and not evals:
        raise UsageError(f"{work_dir / LOG} holds no training or evaluation records yet")
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, lr_ax, miou_ax = fig.subplots(1, 3)
    iters = [r["iter"] for r in train]
    parts = [k for k in (train[0] if train else {}) if "loss" in k]
    for key in parts:
        loss_ax.plot(iters, [_value(r, key) for r in train], label=key, lw=2 if key == "loss" else 1)
    _style(loss_ax, "training loss", "loss")
    if parts:
        loss_ax.legend(fontsize=8)
    lr_ax.plot(iters, [_value(r, "lr") for r in train], color="tab:green")
    if any(r.get("lr") for r in train):
        lr_ax.set_yscale("log")
    _style(lr_ax, "learning rate", "lr")
    for key in ("mIoU", "mAcc"):
        miou_ax.plot([r["iter"] for r in evals], [_value(r, key) for r in evals], marker="o", label=key)
    if evals:
        best = max(evals, key=lambda r: r.get("mIoU") or 0.0)
        if best.get("mIoU") is not None:
            miou_ax.annotate(f"best {best['mIoU']:.2f}", (best["iter"], best["mIoU"]), textcoords="offset points",
                             xytext=(0, 6), ha="center", fontsize=8)
        miou_ax.legend(fontsize=8)
    _style(miou_ax, "validation", "%")
    fig.suptitle(str(work_dir))
    out = Path(out) if out else work_dir / CURVES_PNG
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(out, buffer.getvalue())
    return out


def _style(ax, title: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def after_training(work_dir: str | Path, console) -> None:
    """End of a training run: the curves PNG, or one line saying how to get it."""
    try:
        path = plot_curves(work_dir)
    except UsageError as err:
        console.print(f"no curves PNG ({err}); then: cssformer plot {work_dir}", markup=False, highlight=False,
                      soft_wrap=True)
        return
    console.print(f"curves: {path}", markup=False, highlight=False, soft_wrap=True)


class TensorBoardScalars:
    """Mirrors the scalars of ``log.jsonl`` records into TensorBoard event files under ``folder``:
    ``train/<key>`` (loss and its parts, lr, ...), ``val/mIoU``, ``val/mAcc``, ``val/aAcc`` and the
    per-class ``val_IoU/<class>``; :meth:`images` adds pictures (the evaluation's sample panels)."""

    def __init__(self, folder: str | Path):
        require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder))

    def write(self, record: dict) -> None:
        kind, step = record.get("type"), record.get("iter")
        if kind == "train":
            items = {f"train/{k}": v for k, v in record.items() if k not in _NOT_SCALARS}
        elif kind == "eval":
            items = {f"val/{k}": record[k] for k in EVAL_SCALARS if k in record}
            items.update({f"val_IoU/{name}": v for name, v in (record.get("IoU") or {}).items()})
        else:
            return
        for tag, value in items.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def images(self, tag: str, pictures, step: int) -> None:
        """``(H, W, 3)`` uint8 pictures as ``<tag>/<name>`` images; ``pictures``: ``[(name, picture)]``."""
        for name, picture in pictures:
            self.writer.add_image(f"{tag}/{name}", picture, step, dataformats="HWC")
        self.writer.flush()

"""Run output on rank 0: a JSONL file (one object per logged step or evaluation) and a rich progress
bar with loss, lr, speed, ETA and GPU memory."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class JsonlLog:
    """Appends one JSON object per line (never truncates: a resumed run continues the same file). Strict
    JSON: a NaN or infinite number (the IoU of a class absent from the validation set) is written as
    ``null``.
    ``tensorboard``: also write the records' scalars as TensorBoard events into ``<folder>/tensorboard``."""

    def __init__(self, path: str | Path | None, tensorboard: bool = False):
        self.path = Path(path) if path else None
        self.scalars = None
        if tensorboard and self.path is not None:
            from cssformer.engine.curves import TENSORBOARD_DIR, TensorBoardScalars
            self.scalars = TensorBoardScalars(self.path.parent / TENSORBOARD_DIR)

    def write(self, **record) -> None:
        if self.path is None:
            return
        record = _finite({"time": round(time.time(), 3), **record})
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=_plain, allow_nan=False) + "\n")
        if self.scalars is not None:
            self.scalars.write(json.loads(json.dumps(record, default=_plain)))


def _finite(value):
    """``value`` with every non-finite float (NaN, inf, also inside tensors' ``.item()``) as None."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


class TrainProgress:
    """``with TrainProgress(total, start, enabled) as bar: bar.update(it, loss=..., lr=..., mem_gb=...)``."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, console: Console | None = None):
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console,
            disable=not enabled, transient=False)
        self.task = self.progress.add_task("train", total=total, completed=start, stats="")
        self._t0, self._it0 = time.perf_counter(), start

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def speed(self, it: int) -> float:
        elapsed = time.perf_counter() - self._t0
        return (it - self._it0) / elapsed if elapsed > 0 else 0.0

    def update(self, it: int, **stats) -> None:
        text = "  ".join(f"{k} {_short(v)}" for k, v in stats.items())
        self.progress.update(self.task, completed=it, stats=text)

    def log_line(self, text: str) -> None:
        """A plain line per logged step where no live bar can be drawn (a file, CI)."""
        if self.enabled and not self.console.is_terminal:
            self.console.print(text, highlight=False, soft_wrap=True)

    def print(self, *args, **kwargs) -> None:
        if self.enabled:
            self.progress.console.print(*args, **kwargs)


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.2e}" if (value != 0 and abs(value) < 1e-2) else f"{value:.3f}"
    return str(value)

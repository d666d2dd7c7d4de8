"""Run output on rank 0: a JSONL file (one object per logged step or evaluation) and a rich progress
bar with loss, lr, speed, ETA and GPU memory."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
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
        record = json_safe({"time": round(time.time(), 3), **record})
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=_plain, allow_nan=False) + "\n")
        if self.scalars is not None:
            self.scalars.write(json.loads(json.dumps(record, default=_plain)))

    def close(self) -> None:
        """Ends the TensorBoard writer (its thread and open event file); the JSONL file is never held open."""
        if self.scalars is not None:
            self.scalars.close()
            self.scalars = None


def json_safe(value):
    """``value`` as strict JSON takes it: ``value`` with every non-finite float (NaN, inf, also inside tensors' ``.item()``) as None."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def console(stderr: bool = False) -> Console:
    """A rich console that never wraps a line of text (paths stay whole); into a file or pipe it is wide
    (200 columns), so tables are not squeezed to 80."""
    out = Console(stderr=stderr, soft_wrap=True)
    return out if out.is_terminal else Console(stderr=stderr, soft_wrap=True, width=200)


def clock(seconds: float) -> str:
    """``0:01:05``."""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class TrainProgress:
    """``with TrainProgress(total, start, enabled) as bar: bar.update(it, loss=..., lr=..., mem_gb=...)``.

    On a terminal a live bar (elapsed, ETA); into a file or pipe (CI, ``> log.txt``) no bar at all, and
    every line printed through it starts with ``[elapsed 0:01:05 ETA 0:02:10]``. ``eval_progress`` prints a
    line at the start and end of an evaluation and, on long ones, about every 10 % or 30 s."""

    EVAL_EVERY_S = 30.0

    def __init__(self, total: int, start: int = 0, enabled: bool = True, console: Console | None = None):
        self.console = console or Console(stderr=True, soft_wrap=True)
        if not self.console.is_terminal and console is None:
            self.console = Console(stderr=True, soft_wrap=True, width=200)
        self.enabled = enabled
        self.plain = not self.console.is_terminal  # no live bar: plain lines with elapsed and ETA
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console,
            disable=not enabled or self.plain, transient=False)
        self.task = self.progress.add_task("train", total=total, completed=start, stats="")
        self.total, self.it = total, start
        self._t0, self._it0 = time.perf_counter(), start
        self._eval = None  # (start time, last printed time, last printed tenth)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def speed(self, it: int) -> float:
        elapsed = time.perf_counter() - self._t0
        return (it - self._it0) / elapsed if elapsed > 0 else 0.0

    def timing(self, it: int | None = None) -> str:
        """``[elapsed 0:01:05 ETA 0:02:10]`` at iteration ``it`` (default: the last one updated); the ETA
        is the remaining iterations at this run's mean speed so far (``-`` before the first step)."""
        it = self.it if it is None else it
        elapsed = time.perf_counter() - self._t0
        speed = self.speed(it)
        eta = clock((self.total - it) / speed) if speed > 0 else "-"
        return f"[elapsed {clock(elapsed)} ETA {eta}]"

    def update(self, it: int, **stats) -> None:
        self.it = it
        text = "  ".join(f"{k} {_short(v)}" for k, v in stats.items())
        self.progress.update(self.task, completed=it, stats=text)

    def log_line(self, text: str, it: int | None = None) -> None:
        """A plain line per logged step where no live bar can be drawn (a file, CI)."""
        if self.enabled and self.plain:
            self.console.print(f"{self.timing(it)} {text}", highlight=False, soft_wrap=True, markup=False)

    def print(self, *args, **kwargs) -> None:
        if not self.enabled:
            return
        if self.plain and args and isinstance(args[0], str):
            args = (f"{escape(self.timing())} {args[0]}", *args[1:])
        self.progress.console.print(*args, **kwargs)

    def eval_progress(self, done: int, total: int) -> None:
        """``evaluate(progress=...)``: a line at the start (``done == 0``) and the end of an evaluation and
        in between about every 10 % or 30 s (plain output; on a terminal only start and end)."""
        now = time.perf_counter()
        if done == 0 or self._eval is None:
            self._eval = (now, now, 0)
            self.print(f"evaluating {total} images at iteration {self.it}")
            if done == 0:
                return
        started, last, tenth = self._eval
        if done >= total:
            self.print(f"evaluation done: {total} images in {now - started:.1f} s")
            self._eval = None
        elif self.plain and (done * 10 // total > tenth or now - last >= self.EVAL_EVERY_S):
            rate = done / max(now - started, 1e-9)
            self.print(f"evaluating: {done}/{total} images ({done / total:.0%}), ETA of the evaluation "
                       f"{clock((total - done) / rate)}")
            self._eval = (started, now, done * 10 // total)


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.2e}" if (value != 0 and abs(value) < 1e-2) else f"{value:.3f}"
    return str(value)

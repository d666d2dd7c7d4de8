"""Work-dir ownership and locking.

Rules (docs/training.md, "The work dir"):

- a work dir belongs to a run when it holds ``.cssformer-run`` (written when a run takes the folder) or
  ``last_checkpoint`` (work dirs of older versions);
- a new run (no ``--resume``) takes only a folder that does not exist yet or holds nothing but files of
  a run that never saved a checkpoint; anything else is refused before anything is written (the default
  work dir moves to a numbered sibling instead);
- ``--resume`` continues a run in its own work dir, or starts one in a new / empty folder;
- one run at a time: ``.lock`` is held with ``flock`` while the run lives (the kernel releases it when
  the process dies, ``kill -9`` included); a second run into the same folder is refused;
- a run deletes only checkpoints it wrote itself (see ``Trainer._checkpoint``) and only temporary files
  of its own names left by a killed write.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from cssformer.errors import UsageError

# --- the layout of a work dir: every name a run writes, spelled here only ---
MARKER = ".cssformer-run"     # written when a run takes the folder
LOCK = ".lock"                # flock of the live run
LAST = "last_checkpoint"      # text: the file name of the newest checkpoint
CONFIG = "config.yaml"        # the resolved config of the run
LOG = "log.jsonl"             # one JSON object per logged step / evaluation (engine/logger.py)
CURVES = "curves.png"         # loss, lr and mIoU curves (engine/curves.py)
BEST = "best.pth"             # the checkpoint of the best evaluation
TENSORBOARD = "tensorboard"   # TensorBoard event files (folder)
_ITER = re.compile(r"^iter_(\d+)\.pth$")


def checkpoint_name(iteration: int) -> str:
    """``iter_000042.pth``: the periodic checkpoint of ``iteration``."""
    return f"iter_{iteration:06d}.pth"


def checkpoint_iteration(name: str) -> int | None:
    """The iteration of a periodic checkpoint's file name, None for any other name."""
    found = _ITER.match(name)
    return int(found.group(1)) if found else None


def checkpoints(path: Path) -> dict[int, Path]:
    """``{iteration: path}`` of the periodic checkpoints in work dir ``path``."""
    out = {}
    for entry in path.glob("iter_*.pth"):
        iteration = checkpoint_iteration(entry.name)
        if iteration is not None:
            out[iteration] = entry
    return dict(sorted(out.items()))


def _names(*names: str) -> str:
    return "|".join(re.escape(n) for n in names)


# what a run leaves before its first checkpoint: a new run may take such a folder over
FRESH = re.compile(rf"^({_names(MARKER, LOCK, CONFIG, LOG, TENSORBOARD)})$")
# temporary files of checkpoint.py's atomic writes: ".<name>.<random>.tmp"
OWN_TMP = re.compile(rf"^\.({_names(CONFIG, LAST, BEST, CURVES)}|iter_\d+\.pth)\.[^/]+\.tmp$")


def is_run_dir(path: Path) -> bool:
    return (path / MARKER).is_file() or (path / LAST).is_file()


def foreign_entries(path: Path) -> list[str]:
    """Names in ``path`` a new run may not take over: everything in a folder that is no run's, and in a
    run's folder everything but the files of a run that never saved a checkpoint."""
    if not path.is_dir():
        return []
    if not is_run_dir(path):
        return sorted(p.name for p in path.iterdir())
    return sorted(p.name for p in path.iterdir() if not (FRESH.match(p.name) or OWN_TMP.match(p.name)))


def in_use(path: Path) -> int | None:
    """The pid of the live run holding ``path``'s lock, or None (0 when the pid is unknown)."""
    import fcntl

    lock = path / LOCK
    if not lock.is_file():
        return None
    try:
        with lock.open("r") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                text = f.read().strip()
                return int(text) if text.isdigit() else 0
            fcntl.flock(f, fcntl.LOCK_UN)
    except OSError:
        return None
    return None


def problem(path: Path, resume: bool) -> str | None:
    """Why a run (``resume``: a resumed one) may not use ``path``; None when it may."""
    if path.exists() and not path.is_dir():
        return f"work dir {path} is a file: expected a folder"
    pid = in_use(path)
    if pid is not None:
        return (f"work dir {path} is in use by another run (pid {pid or 'unknown'}); wait for it to end or "
                "choose another --work-dir (nothing was written)")
    if not resume and (path / LAST).exists():
        return (f"work dir {path} already holds a run ({path / LAST}); pass --resume to continue it or choose "
                "another --work-dir (nothing was written)")
    foreign = [] if resume and is_run_dir(path) else foreign_entries(path)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        return (f"work dir {path} holds files a training run did not write ({shown}); expected a new or empty "
                "folder, or a run's own work dir with --resume (nothing was written)")
    return None


def choose(path: Path, resume: bool, default: bool) -> Path:
    """``path``, or for the default work dir of a new run the first free numbered sibling; refuses a
    folder another run or the user owns."""
    reason = problem(path, resume)
    if reason is None:
        return path
    if not default or resume:
        raise UsageError(reason)
    n = 2
    while problem(path.with_name(f"{path.name}-{n}"), False) is not None:
        n += 1
    return path.with_name(f"{path.name}-{n}")


class WorkDirLock:
    """``flock`` on ``work_dir/.lock`` for the life of the run (held by the open file: a killed process
    releases it). ``acquire`` creates the folder and the run marker; ``abandon`` removes what it created
    when the run fails before training starts."""

    def __init__(self, path: Path):
        self.path, self._file, self._created = Path(path), None, []

    def acquire(self) -> "WorkDirLock":
        import fcntl

        missing = []
        parent = self.path
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        self._created = list(missing)
        lock = self.path / LOCK
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if not lock.exists():
                self._created.insert(0, lock)
            f = lock.open("a+")
        except OSError as err:
            self.abandon()
            raise UsageError(f"work dir {self.path} cannot be created or written ({err.strerror or err}): "
                             "expected a writable folder") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            text = f.read().strip()
            f.close()
            raise UsageError(f"work dir {self.path} is in use by another run (pid {text or 'unknown'}); wait for "
                             "it to end or choose another --work-dir") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        marker = self.path / MARKER
        if not marker.exists():
            marker.write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid()}) + "\n")
            self._created.insert(0, marker)
        return self

    def clean_stale_temps(self) -> None:
        """Temporary files of our own writes that a kill interrupted (never renamed, never used)."""
        for entry in self.path.iterdir():
            if OWN_TMP.match(entry.name) and entry.is_file():
                entry.unlink()

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def abandon(self) -> None:
        """Removes the marker, lock and folders this run created (only while they are still empty)."""
        self.release()
        for path in self._created:
            try:
                path.rmdir() if path.is_dir() else path.unlink()
            except OSError:
                pass
        self._created = []

"""Output guards shared by the commands: never overwrite a file unless told to (``--force``), never
overwrite an input (a checkpoint, an image) even then, one writer at a time per output folder
(:class:`FolderLock`), and turn write failures into one-line errors."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from cssformer.errors import UsageError


def same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def check_output(path: str | Path, flag: str, force: bool = False, inputs: Iterable[str | Path] = ()) -> Path:
    """Refuses an output ``path`` (given with ``flag``) that is one of ``inputs`` (always), a folder,
    or an existing file (unless ``force``); call it before any work so a refusal costs nothing."""
    path = Path(path)
    for source in inputs:
        if Path(source).exists() and path.exists() and same_file(path, source):
            raise UsageError(f"{flag} {path} is the input file {source}: refusing to overwrite it; "
                             "expected a new file name")
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder: expected a file name")
    if path.exists() and not force:
        raise UsageError(f"{flag} {path} already exists: refusing to overwrite it (pass --force to replace it, "
                         "or choose another name)")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: {parent} is a file, expected a folder")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{flag} {path}: folder {parent} is not writable")
    return path


def write_text(path: str | Path, text: str, flag: str) -> None:
    """Atomic write of ``text`` to ``path`` (parents created), failures as one-line errors."""
    write_bytes(path, text.encode(), flag)


def write_bytes(path: str | Path, data: bytes, flag: str) -> None:
    from cssformer.engine.checkpoint import atomic_write_bytes

    try:
        atomic_write_bytes(path, data)
    except OSError as err:
        raise UsageError(f"{flag}: cannot write {path}: {err.strerror or err}") from None


def refusal_reason(err: BaseException, expected: str = "a file written by cssformer-train") -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, without PyTorch's advice to turn the
    safety off: a checkpoint (or a pretrained weight file) of ours never needs it."""
    import re

    text = str(err)
    found = re.search(r"GLOBAL ([\w.]+)|Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        reason = f"it asks to import and run {found.group(1) or found.group(2)}, which no checkpoint does"
    else:
        lines = [line.strip() for line in text.splitlines()
                 if line.strip() and "weights_only" not in line and "Re-running" not in line]
        reason = (lines[0].split(". ")[0] if lines else type(err).__name__)[:160]
        reason = f"it cannot be read ({reason}): truncated, damaged or not a checkpoint"
    return f"{reason}; it was not loaded (expected {expected}: tensors and plain containers only)"


class FolderLock:
    """One command at a time writes into an output folder: ``flock`` on ``<folder>/.cssformer-writing.lock``
    (the kernel releases it when the process dies, ``kill -9`` included). ``acquire`` creates the folder;
    ``release`` removes the lock file, and the folder when this lock created it and it is still empty.
    Released at the latest when the object is garbage-collected."""

    NAME = ".cssformer-writing.lock"

    def __init__(self, folder: str | Path, flag: str):
        self.folder, self.flag, self._file, self._created = Path(folder), flag, None, []

    def acquire(self) -> "FolderLock":
        import fcntl

        parent = self.folder
        while not parent.exists() and parent != parent.parent:
            self._created.append(parent)
            parent = parent.parent
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            self._created = []
            raise UsageError(f"{self.flag}: cannot create folder {self.folder}: {err.strerror or err}") from None
        path = self.folder / self.NAME
        while True:
            try:
                f = path.open("a+")
            except OSError as err:
                self.release()
                raise UsageError(f"{self.flag}: cannot write into folder {self.folder}: {err.strerror or err}") from None
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                pid = f.read().strip() or "unknown"
                f.close()
                raise UsageError(f"{self.flag} {self.folder} is being written by another cssformer process (pid {pid}); "
                                 f"wait for it to end or choose another {self.flag} (nothing was written)") from None
            try:  # the holder before us may have removed the file after we opened it: lock the one in place
                same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            f.close()
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            try:
                (self.folder / self.NAME).unlink()
            except OSError:
                pass
            self._file.close()
            self._file = None
        for folder in self._created:  # innermost first; only folders this lock made, only while empty
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = []

    def __del__(self):
        try:
            self.release()
        except Exception:  # noqa: BLE001 - at interpreter shutdown; the kernel drops the flock anyway
            pass

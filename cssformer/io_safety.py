"""Output guards shared by the commands: never overwrite a file unless told to (``--force``), never
overwrite an input (a checkpoint, an image) even then, and turn write failures into one-line errors."""
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

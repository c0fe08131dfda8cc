"""Durable files: the one atomic write, fsync, checksums, hard links. Standard library only, so that the trainer
(checkpoints, exports), the index (versions) and the service (uploads) share it without importing each other.

Readers only ever see whole files: everything is written to a temporary name in the same directory,
fsynced, then renamed over the target, and the directory is fsynced so the rename survives a crash.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20  # bytes read at a time when hashing


def fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Persist a directory's entries (creations, renames, deletions)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: str | Path, skip: Iterable[str] = ()) -> None:
    """fsync every file in `directory` (one level) but those named in `skip` (hard links to files already
    durable), then the directory itself."""
    directory = Path(directory)
    skip = set(skip)
    for f in directory.iterdir():
        if f.is_file() and f.name not in skip:
            fsync_file(f)
    fsync_dir(directory)


def atomic_write(path: str | Path, data: bytes | Callable[[BinaryIO], None],
                 before_replace: Callable[[], None] | None = None) -> None:
    """Replace `path` by `data` (bytes, or a function that writes to the open file, e.g. torch.save) so that a
    reader (or a crash) sees the old content or the new, never a mix.

    `before_replace` runs once the new content is durable under its temporary name, just before the rename.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Hard-link an immutable file into a new version (no copy); copy where links are not supported."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)

"""Which files of the image folder belong to the collection, and how they stand on disk (size, mtime).

A collection file has an image suffix (trainer/data.py's IMAGE_SUFFIXES) and no part of its path starting with
a dot: hidden files and folders are left out, and so are the temporary files writers rename into place (the
upload writer's `.<name>.tmp-*`, editors' `*.tmp`, browsers' `*.part` / `*.crdownload`, `*~`).
"""

from __future__ import annotations

import os
import re
import stat as stat_module
from pathlib import Path
from typing import NamedTuple

from trainer.data import IMAGE_SUFFIXES

TEMP_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".crdownload", ".download", ".swp", "~")
UPLOAD_NAME = re.compile(r"[0-9a-f]{24}\.[a-z]+")  # service/live/collection.py:save_upload's file names


class Stat(NamedTuple):
    size: int
    mtime_ns: int


def is_collection_file(relative: str) -> bool:
    parts = relative.split("/")
    if any(not p or p.startswith(".") for p in parts):
        return False
    name = parts[-1].lower()
    if ".tmp-" in name or name.endswith(TEMP_SUFFIXES):
        return False
    return os.path.splitext(name)[1] in IMAGE_SUFFIXES


def is_hidden(relative: str) -> bool:
    return any(p.startswith(".") for p in relative.split("/"))


def label_of(relative: str, upload_subdir: str) -> str | None:
    """The first-level folder's name, as builds label images; none for top-level files and unlabelled uploads."""
    top, sep, _ = relative.partition("/")
    return None if not sep or top == upload_subdir else top


def is_api_write(relative: str, upload_subdir: str) -> bool:
    """Whether the API may have written this file (POST /images): in the upload folder, or named like an upload."""
    return relative.startswith(f"{upload_subdir}/") or UPLOAD_NAME.fullmatch(relative.rsplit("/", 1)[-1]) is not None


def stat_of(root: Path, relative: str) -> Stat | None:
    """The file's size and mtime; None when it is absent or not a regular file."""
    try:
        st = os.stat(root / relative)
    except (OSError, ValueError):
        return None
    return Stat(st.st_size, st.st_mtime_ns) if stat_module.S_ISREG(st.st_mode) else None


def scan(root: Path, under: str = "") -> dict[str, Stat]:
    """Every collection file under root (or under root/under), by path relative to root. Hidden folders are not
    entered; symbolic links to folders are not followed."""
    top = root / under if under else root
    found: dict[str, Stat] = {}
    for directory, folders, files in os.walk(top, onerror=lambda e: None):
        folders[:] = [f for f in folders if not f.startswith(".")]
        base = os.path.relpath(directory, root)
        for name in files:
            relative = name if base == "." else f"{base}/{name}".replace(os.sep, "/")
            if is_collection_file(relative) and (st := stat_of(root, relative)) is not None:
                found[relative] = st
    return found
